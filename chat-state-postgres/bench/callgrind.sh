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
export SMALL="${SMALL:-1000}" BIG="${BIG:-3000}" CONC="${CONC:-64}"
export WORKLOADS="${WORKLOADS:-message}" PROFILE="${PROFILE:-0}"

cd "$repo"
source test-support/scripts/callgrind-lib.sh
ours_and_raw_per_cycle chat-state-postgres \
  "${CALLGRIND_DIR:-${CARGO_TARGET_DIR:-$repo/target}/callgrind-postgres}"
