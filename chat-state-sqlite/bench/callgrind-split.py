#!/usr/bin/env python3
"""Self cost (Ir) of a callgrind profile, split by where the code comes from.

    callgrind-split.py SMALL.out SMALL_CYCLES BIG.out BIG_CYCLES

Prints instructions per cycle in each part (big minus small, over the cycle difference, so
setup cancels out): SQLite itself, rusqlite, this crate, chat-state-core, tokio, the
allocator, locks and the rest. Code inlined into a function counts where its source is.
"""
import re
import subprocess
import sys

PARTS = [
    ("sqlite3.c (the library)", r"sqlite3\.c"),
    ("rusqlite (bindings)", r"rusqlite"),
    ("chat-state-sqlite", r"chat-state-sqlite/src"),
    ("chat-state-core", r"chat-state-core/src"),
    ("sqlx (driver, worker thread)", r"sqlx"),
    ("flume, futures (sqlx channels)", r"flume|futures-"),
    ("tokio (scheduling, oneshot)", r"tokio-"),
    ("malloc/free", r"malloc|[^_]free|cfree"),
    ("pthread mutex, futex", r"pthread_mutex|futex|lll_lock"),
    ("rand (lock tokens)", r"rand|chacha"),
    ("memcpy/memcmp/...", r"mem(cpy|move|cmp|set)|strlen"),
    ("std/core", r"/rustc/"),
]


def split(path):
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", path], capture_output=True, text=True
    ).stdout
    totals = {name: 0 for name, _ in PARTS}
    totals["other"] = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        n = int(m.group(1).replace(",", ""))
        where = m.group(2)
        for name, pattern in PARTS:
            if re.search(pattern, where):
                totals[name] += n
                break
        else:
            totals["other"] += n
    return totals


def main():
    small, small_n, big, big_n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    a, b = split(small), split(big)
    per = {k: (b[k] - a[k]) / (big_n - small_n) for k in b}
    total = sum(per.values())
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<30} {v:>9.0f}  {100 * v / total:5.1f}%")
    print(f"  {'total':<30} {total:>9.0f}")


main()
