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
Requires addr2line (binutils).
"""
import collections
import re
import subprocess
import sys

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def position(token, last):
    if token == "*":
        return last
    if token[0] in "+-":
        return last + int(token, 0)
    return int(token, 0)


def sites(path, callee_pattern, binary_name):
    """{address: [calls, inclusive cost]} of the calls to a matching callee
    made from code of `binary_name`."""
    names, objects = {}, {}
    found = collections.defaultdict(lambda: [0, 0])
    obj = callee = None
    calls = None
    addr = line = 0
    with open(path, errors="replace") as out:
        for raw in out:
            text = raw.rstrip("\n")
            if not text:
                continue
            key, _, value = text.partition("=")
            if key in ("ob", "cob"):
                m = NAMED.match(value)
                if m and m.group(2) is not None:
                    objects[m.group(1)] = m.group(2)
                if key == "ob":
                    obj = objects.get(m.group(1)) if m else value
                continue
            if key in ("fn", "cfn"):
                m = NAMED.match(value)
                name = value
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1), "?")
                if key == "cfn":
                    callee = name
                continue
            if key == "calls":
                calls = int(value.split()[0])
                continue
            if "=" in text:
                continue
            if text[0].isdigit() or text[0] in "+-*":
                parts = text.split()
                addr = position(parts[0], addr)
                if len(parts) > 1:
                    line = position(parts[1], line)
                if calls is not None:
                    if (
                        callee_pattern.search(callee or "")
                        and obj
                        and obj.endswith("/" + binary_name)
                    ):
                        cost = int(parts[2]) if len(parts) > 2 else 0
                        found[addr][0] += calls
                        found[addr][1] += cost
                    calls = None
    return found


def frames(binary, addr):
    out = subprocess.run(
        ["addr2line", "-i", "-f", "-C", "-e", binary, hex(addr)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return [out[i + 1].rsplit("/", 1)[-1] for i in range(0, len(out) - 1, 2)]


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    path, requests, pattern, binary = sys.argv[1:5]
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 30
    requests = float(requests)
    found = sites(path, re.compile(pattern), binary.rsplit("/", 1)[-1])
    ranked = sorted(found.items(), key=lambda kv: -kv[1][1])[:top]
    for addr, (calls, cost) in ranked:
        chain = " < ".join(frames(binary, addr)[:8])
        print(f"{cost / requests:8.1f} {calls / requests:6.2f}x  {addr:#x}  {chain}")


if __name__ == "__main__":
    main()
