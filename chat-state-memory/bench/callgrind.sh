#!/usr/bin/env bash
# Instructions per message cycle of the memory backend, typed (get_json/set_json of the
# ~225-byte thread state) and raw bytes (get/set), from valgrind --tool=callgrind: repeatable
# on a noisy machine, unlike wall-clock numbers.
#
#   chat-state-memory/bench/callgrind.sh            # prints the two numbers
#   PROFILE=1 chat-state-memory/bench/callgrind.sh  # also the top cost centres of each
#                                                   # (test-support/scripts/callgrind-top.py; python3; TOP=<n>)
#
# For each mode it runs the bench binary twice (CHAT_STATE_CALLGRIND=typed|raw) with SMALL
# and BIG cycles (default 20,000 and 120,000), collecting only inside `measured_cycles` (the
# timed loop; setup and warm-up run outside it), and prints (Ir_big - Ir_small) / (BIG - SMALL),
# so whatever is paid once per run cancels out. Output files stay in target/callgrind/
# (callgrind_annotate works on them too, but splits each function by source file).
#
# Needs valgrind, jq, and python3 for PROFILE=1. Kernel time is not counted; the cycle makes no
# syscall (lock tokens come from a per-thread CSPRNG that reseeds from the OS every 4,096
# tokens, and the clock is read through the vDSO).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
SMALL="${SMALL:-20000}"
BIG="${BIG:-120000}"
PROFILE="${PROFILE:-0}"
out="${CALLGRIND_DIR:-$repo/target/callgrind}"
mkdir -p "$out"

cd "$repo"
source test-support/scripts/callgrind-lib.sh
exe="$(bench_exe chat-state-memory)"

ir() { # mode cycles -> collected Ir
  CHAT_STATE_CALLGRIND="$1" CHAT_STATE_CALLGRIND_CYCLES="$2" \
    callgrind_ir "$out/$1-$2.out" "$exe" --toggle-collect='*measured_cycles*'
}

for mode in typed raw; do
  small="$(ir "$mode" "$SMALL")"
  big="$(ir "$mode" "$BIG")"
  per=$(( (big - small) / (BIG - SMALL) ))
  printf '%-5s message cycle: %6d instructions per cycle  (Ir %d at %d cycles, %d at %d)\n' \
    "$mode" "$per" "$small" "$SMALL" "$big" "$BIG"
done

if [ "$PROFILE" != 0 ]; then
  for mode in typed raw; do
    echo
    echo "== $mode message cycle =="
    python3 "$repo/test-support/scripts/callgrind-top.py" "$out/$mode-$SMALL.out" "$SMALL" "$out/$mode-$BIG.out" "$BIG" "${TOP:-20}"
  done
fi
