#!/usr/bin/env python3
"""Top cost centres per message cycle from two callgrind runs of the same loop, per function
(all source files of a function, inlined code included, counted together).

    callgrind-top.py <small.out> <small cycles> <big.out> <big cycles> [top]

Every figure is (big - small) / (big cycles - small cycles), so whatever a run pays once
(setup, warm-up, entering the loop) cancels out; that matters for call counts, which
callgrind records even while collection is off. Prints two tables: by inclusive cost
(callees included; the frames that enclose the whole measured loop are left out) and by self
cost, each with instructions per cycle, share of a cycle and calls per cycle.
callgrind_annotate splits a function into one line per source file its inlined code comes
from; this sums them.
"""

import re
import sys
from collections import defaultdict

NAMED = re.compile(r"^\((\d+)\)(?: (.*))?$")


def parse(path):
    names = {}  # compressed function ids -> names (fn= and cfn= share one space)
    self_cost = defaultdict(int)
    call_cost = defaultdict(int)  # cost of calls made by fn (to other functions)
    calls_in = defaultdict(int)  # times fn was called
    total = 0
    fn = None
    pending_call = None  # (callee, count): the next cost line is the call's inclusive cost

    def name(value):
        m = NAMED.match(value)
        if not m:
            return value
        ident, text = m.groups()
        if text is not None:
            names[ident] = text
        return names.get(ident, value)

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            if line.startswith("fn="):
                fn = name(line[3:])
                continue
            if line.startswith("cfn="):
                callee = name(line[4:])
                continue
            if line.startswith("calls="):
                pending_call = (callee, int(line[6:].split()[0]))
                continue
            if line.startswith("summary:") or line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
                continue
            head = line[0]
            if head.isdigit() or head in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_call is not None:
                    callee, count = pending_call
                    pending_call = None
                    if callee != fn:  # recursion would count twice
                        call_cost[fn] += cost
                    calls_in[callee] += count
                else:
                    self_cost[fn] += cost
                continue
            # fl=, fi=, fe=, ob=, cob=, cfi=, cfl=, headers: nothing to count; keep the
            # compressed file/object names out of the function table.
    return names, self_cost, call_cost, calls_in, total


def main():
    small_path, small_n, big_path, big_n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 15
    cycles = big_n - small_n
    _, s_self, s_call, s_in, s_total = parse(small_path)
    _, b_self, b_call, b_in, b_total = parse(big_path)
    fns = set(b_self) | set(b_call) | set(b_in)
    self_cost = {f: b_self[f] - s_self[f] for f in fns}
    incl = {f: self_cost[f] + b_call[f] - s_call[f] for f in fns}
    calls_in = {f: b_in[f] - s_in[f] for f in fns}
    total = b_total - s_total

    def table(title, key, rows):
        print(title)
        print(f"{'Ir/cycle':>9} {'share':>6} {'calls/cycle':>11}  function")
        for f in rows:
            print(
                f"{key(f) / cycles:9.0f} {100 * key(f) / total:5.1f}% "
                f"{calls_in[f] / cycles:11.2f}  {f}"
            )
        print()

    print(f"{total / cycles:.0f} Ir per cycle ({big_n} minus {small_n} cycles)\n")
    inner = [f for f in fns if incl[f] < 0.99 * total]
    table(
        "by inclusive cost (callees included)",
        lambda f: incl[f],
        sorted(inner, key=lambda f: -incl[f])[:top],
    )
    table(
        "by self cost",
        lambda f: self_cost[f],
        sorted(fns, key=lambda f: -self_cost[f])[:top],
    )


if __name__ == "__main__":
    main()
