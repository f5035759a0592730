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
