# Shared by the benches' callgrind.sh scripts (source it, from the repository root): the bench
# binary, and the instructions one valgrind run collected. Needs valgrind and jq.

# bench_exe <package>: builds `cargo bench -p <package> --bench throughput` and prints the
# binary's path.
bench_exe() {
  command -v valgrind >/dev/null || { echo "valgrind not found" >&2; return 1; }
  local exe
  exe="$(cargo bench -p "$1" --bench throughput --no-run --message-format=json \
    | jq -r 'select(.reason == "compiler-artifact" and .target.name == "throughput"
                    and .executable != null) | .executable' | tail -n 1)"
  [ -x "$exe" ] || { echo "bench binary of $1 not found" >&2; return 1; }
  echo "$exe"
}

# callgrind_ir <output file> <binary> [valgrind options...]: runs the binary under callgrind
# (with whatever environment the caller set) and prints the instructions it collected; the
# binary's stderr goes to <output file>.log.
callgrind_ir() {
  local file="$1" exe="$2"
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$file" "$@" "$exe" >/dev/null 2>"$file.log"
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

# ours_and_raw_per_cycle <package> <output dir>: for each workload of $WORKLOADS and each side
# (ours, raw) runs the package's throughput bench under callgrind with $SMALL and $BIG cycles
# at concurrency $CONC (CHAT_STATE_CALLGRIND=<workload>, collecting only inside
# `measured_cycles`) and prints (Ir_big - Ir_small) / (BIG - SMALL): the per-cycle cost with
# start-up and warm-up cancelled out. With PROFILE=1 (not 0) it then prints each run's top
# cost centres (callgrind-top.py, $TOP of them, default 25).
ours_and_raw_per_cycle() {
  local package="$1" out="$2" exe wl side small big per
  mkdir -p "$out"
  exe="$(bench_exe "$package")"
  for wl in $WORKLOADS; do
    for side in ours raw; do
      small="$(_cycles_ir "$out" "$exe" "$wl" "$side" "$SMALL")"
      big="$(_cycles_ir "$out" "$exe" "$wl" "$side" "$BIG")"
      per=$(( (big - small) / (BIG - SMALL) ))
      printf '%-13s %-4s c=%-3s %7d instructions per cycle  (Ir %d at %d cycles, %d at %d)\n' \
        "$wl" "$side" "$CONC" "$per" "$small" "$SMALL" "$big" "$BIG"
    done
  done
  if [ "${PROFILE:-0}" != 0 ]; then
    for wl in $WORKLOADS; do
      for side in ours raw; do
        echo
        echo "== $wl, $side, concurrency $CONC =="
        python3 test-support/scripts/callgrind-top.py \
          "$out/$wl-$side-c$CONC-$SMALL.out" "$SMALL" "$out/$wl-$side-c$CONC-$BIG.out" "$BIG" \
          "${TOP:-25}"
      done
    done
  fi
}

# _cycles_ir <output dir> <binary> <workload> <side> <cycles>: one collected run's Ir.
_cycles_ir() {
  CHAT_STATE_CALLGRIND="$3" CHAT_STATE_CALLGRIND_SIDE="$4" CHAT_STATE_CALLGRIND_CONC="$CONC" \
    CHAT_STATE_CALLGRIND_CYCLES="$5" \
    callgrind_ir "$1/$3-$4-c$CONC-$5.out" "$2" --toggle-collect='*measured_cycles*'
}
