#!/usr/bin/env python3
"""Calls in a callgrind output, per request: where a function is called
from (source line and caller), or what a function calls (inclusive cost
of each callee, and its own cost). callgrind_annotate's --tree gives
functions only; the line of a call is what shows which move or which
read is paid for.

  benches/callgrind_calls.py sites   OUT REQUESTS REGEX [TOP]
  benches/callgrind_calls.py callees OUT REQUESTS REGEX [TOP]
  benches/callgrind_calls.py lines   OUT REQUESTS REGEX [TOP]
  benches/callgrind_calls.py loops   OUT REQUESTS BINARY [TOP]

OUT: a callgrind output kept by `KEEP=dir benches/instructions.sh`;
REQUESTS: the requests of that run (its `requests=` figure); REGEX: the
callee (sites) or the caller (callees), or the functions whose own
cost `lines` lists by source line (the file of an inlined frame named),
matched against the full function name, e.g.
'^__memcpy_avx_unaligned_erms$'; '.' for every function.
Columns: instructions a request, calls a request, then the call's site
or the callee; for `lines`, the cost a request and the line.

`loops` needs a run with CALLGRIND_ARGS=--dump-instr=yes and the
binary that ran (BINARY, for addr2line): it lists the runs of code
executed three times a request or more (loops, or code run for each
field), each run's instructions a request, the most any of its
instructions ran a request, and the source lines inlined at its start,
outermost last. It is how a loop no function's name shows is found (a
field array filled before each parse: 344 instructions a request).

EVENT=name: another of the output's events than instructions (Ir), e.g.
EVENT=DLmw for last-level write misses in a run with CACHE=1; names
joined by + are summed (EVENT=DLmr+DLmw: all last-level data misses).
"""
import collections
import os
import re
import subprocess
import sys

POSITION = re.compile(r"^([+-]?(0x[0-9a-fA-F]+|\d+)|\*)$")
NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def records(path, event):
    """Each cost line as (function, file, line, callee or None, calls, cost,
    address, object), the cost being of `event` (one of the output's
    `events:`). The address is 0 unless callgrind ran with
    --dump-instr=yes (positions `instr line`); the object is the binary
    or library the function's code is in."""
    # Objects are named apart from files: `ob=(1)` is not `fl=(1)`.
    names = {"fl": {}, "fn": {}, "ob": {}}
    positions = ["line"]
    column = 1
    fn = fi = cfn = ob = None
    calls = None
    at = {"instr": 0, "line": 0}
    for raw in open(path, errors="replace"):
        raw = raw.rstrip("\n")
        if raw.startswith("positions:"):
            positions = raw.split()[1:]
            continue
        if raw.startswith("events:"):
            names_of_events = raw.split()[1:]
            if event not in names_of_events:
                sys.exit(f"no event {event} in {path}: it has {' '.join(names_of_events)}")
            column = len(positions) + names_of_events.index(event)
            continue
        key, eq, value = raw.partition("=")
        if eq and key in ("fl", "fi", "fe", "fn", "cfn", "cfi", "cfl", "cfe", "ob", "cob"):
            kind = key.removeprefix("c")
            table = names["fl" if kind in ("fl", "fi", "fe") else kind]
            m = NAMED.match(value)
            if m:
                if m.group(2) is not None:
                    table[m.group(1)] = m.group(2)
                value = table.get(m.group(1), "?")
            if key == "fn":
                fn = value
            elif key in ("fl", "fi", "fe"):
                fi = value
            elif key == "cfn":
                cfn = value
            elif key == "ob":
                ob = value
            continue
        if key == "calls" and eq:
            calls = int(value.split()[0])
            continue
        parts = raw.split()
        if len(parts) >= len(positions) and all(
            POSITION.match(t) for t in parts[: len(positions)]
        ):
            for kind, t in zip(positions, parts):
                if t[0] in "+-":
                    at[kind] += int(t, 0)
                elif t != "*":
                    at[kind] = int(t, 0)
            # callgrind leaves off a line's trailing zero costs.
            cost = int(parts[column]) if len(parts) > column else 0
            callee = cfn if calls is not None else None
            yield fn, fi, at["line"], callee, calls or 0, cost, at["instr"], ob
        calls = None


def frames(binary, addr):
    """The source lines inlined at `addr` in `binary`, innermost first
    (`addr2line -i`), each as file:line."""
    out = subprocess.run(
        ["addr2line", "-i", "-f", "-C", "-e", binary, hex(addr)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return [out[i + 1].rsplit("/", 1)[-1] for i in range(0, len(out) - 1, 2)]


def loops(path, requests, binary, top):
    """The `loops` mode: runs of instructions executed `LOOPING` times a
    request or more, within `GAP` bytes of each other in one function."""
    looping, gap = 3, 24
    cost, function = collections.Counter(), {}
    for fn, _, _, callee, _, c, address, _ in records(path, "Ir"):
        if callee is None and address:
            cost[address] += c
            function[address] = fn
    if not cost:
        sys.exit(f"{path} has no instruction addresses: run with CALLGRIND_ARGS=--dump-instr=yes")
    runs = []
    for address in sorted(a for a, c in cost.items() if c / requests >= looping):
        last = runs[-1] if runs else None
        if last and address - last[-1] <= gap and function[address] == function[last[-1]]:
            last.append(address)
        else:
            runs.append([address])
    ranked = sorted(runs, key=lambda run: -sum(cost[a] for a in run))[:top]
    for run in ranked:
        total = sum(cost[a] for a in run) / requests
        most = max(cost[a] for a in run) / requests
        where = " < ".join(frames(binary, run[0])[:4])
        print(f"{total:8.0f} {most:5.1f}x {function[run[0]][:50]:50} {where}")


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "loops":
        top = int(sys.argv[5]) if len(sys.argv) > 5 else 30
        loops(sys.argv[2], int(sys.argv[3]), sys.argv[4], top)
        return
    if len(sys.argv) < 5 or sys.argv[1] not in ("sites", "callees", "lines"):
        sys.exit(__doc__)
    mode, path, requests, rx = sys.argv[1], sys.argv[2], int(sys.argv[3]), re.compile(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 40
    cost, count = collections.Counter(), collections.Counter()
    own = 0
    events = os.environ.get("EVENT", "Ir").split("+")
    # Misses are counted in tenths of one a request, instructions whole.
    digits = 0 if events == ["Ir"] else 1
    for event in events:
        for fn, fi, line_no, callee, calls, c, _, _ in records(path, event):
            if mode == "sites":
                if callee and rx.search(callee):
                    key = f"{(fi or '?').split('/')[-1]}:{line_no}  {fn}"
                    cost[key] += c
                    count[key] += calls
            elif fn and rx.search(fn):
                if mode == "lines":
                    if not callee:
                        cost[f"{(fi or '?').split('/')[-1]}:{line_no}  {fn}"] += c
                elif callee:
                    cost[callee] += c
                    count[callee] += calls
                else:
                    own += c
    if mode == "callees":
        print(f"{own / requests:8.{digits}f}        (own)")
    if mode == "lines":
        print(f"{sum(cost.values()) / requests:8.{digits}f}  (all lines)")
        for key, c in cost.most_common(top):
            print(f"{c / requests:8.{digits}f}  {key[:160]}")
        return
    for key, c in cost.most_common(top):
        print(f"{c / requests:8.{digits}f} {count[key] / requests:6.2f}x {key[:160]}")


if __name__ == "__main__":
    main()
