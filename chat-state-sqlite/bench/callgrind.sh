#!/usr/bin/env bash
# Instructions per cycle of the SQLite backend and of the libsqlite3 baseline (rusqlite,
# prepared statements, one connection), from valgrind --tool=callgrind: repeatable on a noisy
# machine, unlike wall-clock numbers.
#
#   chat-state-sqlite/bench/callgrind.sh                 # lock, cache, message at c=1 and 64
#   WORKLOADS=lock CONCS=1 chat-state-sqlite/bench/callgrind.sh
#   PROFILE=1 ...                                        # also where the instructions go
#                                                        # (callgrind-split.py; python3)
#
# Each (side, workload, concurrency) runs the bench binary twice (CHAT_STATE_CALLGRIND=...)
# with SMALL and BIG cycles (default 2,000 and 6,000), collecting every thread (the sqlx
# driver runs SQLite on a thread of its own per connection), and prints
# (Ir_big - Ir_small) / (BIG - SMALL), so setup and warm-up cancel out. The file is on
# /dev/shm with synchronous = NORMAL; kernel time (write(2), fsync, futex) is not counted.
# Output files stay in $CARGO_TARGET_DIR/callgrind-sqlite (or target/callgrind-sqlite).
#
# Needs valgrind and jq (and python3 for PROFILE=1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
SMALL="${SMALL:-2000}"
BIG="${BIG:-6000}"
WORKLOADS="${WORKLOADS:-lock cache message}"
CONCS="${CONCS:-1 64}"
PROFILE="${PROFILE:-0}"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="${CALLGRIND_DIR:-$target/callgrind-sqlite}"
mkdir -p "$out"

cd "$repo"
source test-support/scripts/callgrind-lib.sh
exe="$(bench_exe chat-state-sqlite)"

ir() { # spec cycles -> total Ir
  CHAT_STATE_CALLGRIND="$1" CHAT_STATE_CALLGRIND_CYCLES="$2" \
    callgrind_ir "$out/${1//:/-}-$2.out" "$exe"
}

printf '%-9s %-8s %4s %12s\n' side workload conc 'Ir/cycle'
for w in $WORKLOADS; do
  for c in $CONCS; do
    for side in baseline backend; do
      if [ "$side" = baseline ] && [ "$c" != 1 ]; then continue; fi
      small="$(ir "$side:$w:$c" "$SMALL")"
      big="$(ir "$side:$w:$c" "$BIG")"
      printf '%-9s %-8s %4s %12d\n' "$side" "$w" "$c" $(( (big - small) / (BIG - SMALL) ))
      if [ "$PROFILE" != 0 ]; then
        python3 "$here/callgrind-split.py" "$out/${side}-$w-$c-$SMALL.out" "$SMALL" \
          "$out/${side}-$w-$c-$BIG.out" "$BIG"
      fi
    done
  done
done
