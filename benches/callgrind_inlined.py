#!/usr/bin/env python3
"""Call sites of a function by instruction address, each with the chain of
functions inlined there, per request. In an optimized build most of a
request's code is inlined into a few functions, and a source line (what
callgrind_calls.py shows) names the innermost of them only: `mod.rs:547`
is every `copy_nonoverlapping`. The address, read back with
`addr2line -i`, names each frame out to the function that holds it, so
that one move of the response can be told from another.

  CALLGRIND_ARGS=--dump-instr=yes KEEP=/tmp/cg GEOLB=target/release/geolb benches/instructions.sh
  benches/callgrind_inlined.py OUT REQUESTS REGEX BINARY [TOP]

OUT: a callgrind output made with --dump-instr=yes; REQUESTS: the run's
`requests=` figure; REGEX: the callee, matched against its full name
(e.g. '^__memcpy_avx_unaligned_erms$'); BINARY: the geolb binary that
ran (its debug lines: the release profile keeps them). Columns:
instructions a request (inclusive), calls a request, address, then the
inlined frames, innermost first, as file:line.
EVENT=name: another of the output's events than instructions (Ir), e.g.
DLmw for the writes that missed the last level (`CACHE=1`): which move
wrote to cold memory.
Requires addr2line (binutils).
"""
import collections
import os
import re
import sys

from callgrind_calls import frames, records


def sites(path, callee_pattern, binary_name, event="Ir"):
    """{address: [calls, inclusive cost]} of the calls to a matching callee
    made from code of `binary_name`, the cost being of `event`."""
    found = collections.defaultdict(lambda: [0, 0])
    for _, _, _, callee, calls, cost, addr, ob in records(path, event):
        if callee and callee_pattern.search(callee) and (ob or "").endswith("/" + binary_name):
            found[addr][0] += calls
            found[addr][1] += cost
    return found


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    path, requests, pattern, binary = sys.argv[1:5]
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 30
    requests = float(requests)
    event = os.environ.get("EVENT", "Ir")
    found = sites(path, re.compile(pattern), binary.rsplit("/", 1)[-1], event)
    if found and set(found) == {0}:
        sys.exit(f"{path} has no instruction addresses: run callgrind with --dump-instr=yes")
    ranked = sorted(found.items(), key=lambda kv: -kv[1][1])[:top]
    for addr, (calls, cost) in ranked:
        chain = " < ".join(frames(binary, addr)[:8])
        print(f"{cost / requests:8.2f} {calls / requests:6.2f}x  {addr:#x}  {chain}")


if __name__ == "__main__":
    main()
