#!/usr/bin/env bash
# Mutation testing of the rule code: cargo-mutants changes one thing at a time (a comparison, a
# return value, a deleted statement) and reruns the conformance suite against the memory
# backend; every change the suite does not notice is a gap in the suite, or an equivalent
# mutant listed with its reason in conformance-tests/MUTANTS.md.
#
#   bash conformance-tests/scripts/mutants.sh memory   # chat-state-memory (~110 mutants)
#   bash conformance-tests/scripts/mutants.sh core     # chat-state-core's rule code
#   bash conformance-tests/scripts/mutants.sh ci       # the bounded slice CI runs: validate.rs
#
# Results land in target/mutants/<what>/mutants.out (caught.txt, missed.txt, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."

what="${1:-ci}"
if ! command -v cargo-mutants >/dev/null 2>&1; then
  cargo install cargo-mutants --version 27.1.0 --locked
fi

# The suite on the reference backend, both clocks, is the test command: libtest runs the
# cases in parallel, so the wall-clock run costs ~11 s of mostly sleeping per mutant. The
# layers test covers the pointer impls and Layered; the two crates' unit tests cover what the
# contract cannot see (memory's bounded cleanup and freed rows, core's reused JSON buffers and
# reseeded token generator).
suite=(--test-package chat-state-memory --test-package chat-state-core
  -- --lib --test conformance --test layers)

case "$what" in
  memory)
    files=(-f chat-state-memory/src/lib.rs)
    ;;
  core)
    # The rule code. Left out: layer.rs (pass-through forwarding, checked by the layers test
    # and every facade test), error.rs rendering and guard.rs (covered by core's and the
    # facade's own tests, not by backend conformance).
    files=(-f chat-state-core/src/validate.rs -f chat-state-core/src/backend.rs
      -f chat-state-core/src/types.rs -f chat-state-core/src/token.rs
      -f chat-state-core/src/lifecycle.rs -f chat-state-core/src/ext.rs
      -f chat-state-core/src/clock.rs)
    ;;
  ci)
    files=(-f chat-state-core/src/validate.rs)
    ;;
  *)
    echo "usage: $0 memory|core|ci" >&2
    exit 2
    ;;
esac

# The unmutated tree must pass first, so a red tree is never mistaken for a strong suite.
# (Run here rather than by cargo-mutants: its baseline tests the mutated package, core, and
# not the test package.) Two jobs: one builds while the other's wall-clock cases sleep.
cargo test -p chat-state-memory -p chat-state-core --lib --test conformance --test layers -q
mkdir -p "target/mutants/$what"
# cargo-mutants builds without incremental compilation unless told otherwise: every mutant
# then recompiles core and everything above it from scratch (~45 s a mutant with two jobs,
# 41 minutes for the CI slice); incremental reuses all the mutant did not touch (~6 s).
CARGO_INCREMENTAL=1 cargo mutants --no-shuffle --jobs 2 --baseline skip --timeout 120 \
  --output "target/mutants/$what" "${files[@]}" "${suite[@]}"
