#!/usr/bin/env bash
# Client instructions per cycle of the PostgreSQL backend at concurrency 64 (default), from
# valgrind --tool=callgrind: repeatable on a noisy machine, unlike wall-clock numbers.
#
#   chat-state-postgres/bench/callgrind.sh                 # message cycle, ours and raw sqlx
#   WORKLOADS="lock cache" CONC=64 chat-state-postgres/bench/callgrind.sh
#   PROFILE=1 chat-state-postgres/bench/callgrind.sh       # also the top cost centres
#                                                          # (test-support/scripts/callgrind-top.py)
#
# For each workload and side (ours = the adapter, raw = a plain sqlx pool sending the same
# statements) it runs the bench binary twice (CHAT_STATE_CALLGRIND=<workload>) with SMALL and BIG
# cycles (default 1,000 and 3,000) on a current-thread runtime, so the 64 tasks, the
# pool's connections and the socket I/O all run on the collected thread, collecting only
# inside `measured_cycles`, and prints (Ir_big - Ir_small) / (BIG - SMALL). PostgreSQL runs
# outside valgrind. Kernel time (the socket syscalls) is not counted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
SMALL="${SMALL:-1000}"
BIG="${BIG:-3000}"
CONC="${CONC:-64}"
WORKLOADS="${WORKLOADS:-message}"
PROFILE="${PROFILE:-0}"
out="${CALLGRIND_DIR:-${CARGO_TARGET_DIR:-$repo/target}/callgrind-postgres}"
mkdir -p "$out"

cd "$repo"
source test-support/scripts/callgrind-lib.sh
exe="$(bench_exe chat-state-postgres)"

ir() { # workload side cycles -> collected Ir
  CHAT_STATE_CALLGRIND="$1" CHAT_STATE_CALLGRIND_SIDE="$2" CHAT_STATE_CALLGRIND_CONC="$CONC" \
    CHAT_STATE_CALLGRIND_CYCLES="$3" \
    callgrind_ir "$out/$1-$2-c$CONC-$3.out" "$exe" --toggle-collect='*measured_cycles*'
}

for wl in $WORKLOADS; do
  for side in ours raw; do
    small="$(ir "$wl" "$side" "$SMALL")"
    big="$(ir "$wl" "$side" "$BIG")"
    per=$(( (big - small) / (BIG - SMALL) ))
    printf '%-13s %-4s c=%-3s %7d instructions per cycle  (Ir %d at %d cycles, %d at %d)\n' \
      "$wl" "$side" "$CONC" "$per" "$small" "$SMALL" "$big" "$BIG"
  done
done

if [ "$PROFILE" != 0 ]; then
  for wl in $WORKLOADS; do
    for side in ours raw; do
      echo
      echo "== $wl, $side, concurrency $CONC =="
      python3 "$repo/test-support/scripts/callgrind-top.py" \
        "$out/$wl-$side-c$CONC-$SMALL.out" "$SMALL" "$out/$wl-$side-c$CONC-$BIG.out" "$BIG" "${TOP:-25}"
    done
  done
fi
