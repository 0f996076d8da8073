#!/usr/bin/env python3
"""Atomic read-modify-write instructions executed per request, from a
callgrind output made with --dump-instr=yes (`KEEP=dir
CALLGRIND_ARGS=--dump-instr=yes benches/instructions.sh`).

Each `lock`-prefixed instruction, and each `xchg` with memory (locked
without the prefix), waits for the core's store buffer to drain: about 20
cycles each back to back, a few where other work overlaps. callgrind counts
them as one instruction each; this counts them apart, by the function
they were executed in (the inlined frame is not resolved).

  benches/callgrind_locked.py OUT REQUESTS [TOP]

OUT: the callgrind output; REQUESTS: the requests of that run (its
`requests=` figure). Every object the output names (the binary, libc, ...)
is disassembled with objdump to find its locked instructions.
"""

import collections
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callgrind_calls import records  # noqa: E402

LOCKED = re.compile(r"^\s*([0-9a-f]+):\s+(lock\s+\S+|xchg\s+\S+)")


def locked_addresses(obj):
    """The addresses of `obj`'s locked instructions, as objdump numbers them."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", obj],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = LOCKED.match(line)
        if not m:
            continue
        op = m.group(2)
        # xchg between two registers is not locked (`xchg %ax,%ax` is a nop).
        if op.startswith("xchg") and "(" not in line:
            continue
        found[int(m.group(1), 16)] = op.split()[0]
    return found


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    by_object = {}
    per_fn = collections.Counter()
    total = 0
    for fn, _file, _line, callee, _calls, cost, addr, obj in records(path, "Ir"):
        if callee is not None or not addr or not obj:
            continue
        if obj not in by_object:
            by_object[obj] = locked_addresses(obj) if os.path.exists(obj) else {}
        if addr in by_object[obj]:
            per_fn[f"{fn}  [{os.path.basename(obj)}]"] += cost
            total += cost
    if not any(by_object.values()):
        sys.exit("no locked instruction found: was callgrind run with --dump-instr=yes?")
    print(f"{total / requests:8.1f} locked instructions a request")
    for name, cost in per_fn.most_common(top):
        print(f"{cost / requests:8.2f}  {name[:150]}")


if __name__ == "__main__":
    main()
