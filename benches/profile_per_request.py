#!/usr/bin/env python3
"""Where a proxy's CPU time goes, in µs a request, from the profiles of
`PERF_RECORD=1 benches/http.sh` (it runs this at the end of its summary).

Each run's raw/rROUND-TARGET-WORKLOAD.perf.data holds one cpu-clock
sample each 250 µs of the proxy's CPU time (user and kernel), taken over
SECONDS of the run; the run's req/s in results.tsv says how many requests
those seconds served. Samples of all rounds of one target and workload
are summed, and so are their requests: a function's µs a request is

    samples * 250 / sum over rounds of (req/s * SECONDS)

Samples in profiles of different runs are comparable this way where
their req/s differ, which raw sample shares are not.

  benches/profile_per_request.py RESULTS_DIR SECONDS [TOP]

TOP: how many user-space and kernel functions to list (10).
"""
import collections
import glob
import os
import re
import subprocess
import sys

from summary import num, read_rows

SAMPLE_US = 250


def samples_by_symbol(path):
    """{(kind, symbol): samples}, kind "k" (kernel) or "." (user)."""
    out = subprocess.run(
        ["perf", "report", "-i", path, "--sort", "sym", "--stdio", "-n", "-q"],
        capture_output=True, text=True, check=False,
    ).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+\[(.)\]\s+(.*\S)", line)
        if m:
            counts[(m.group(2), m.group(3))] += int(m.group(1))
    return counts


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    results, seconds = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    rps = {(r["round"], r["target"], r["workload"]): num(r["rps"])
           for r in read_rows(os.path.join(results, "results.tsv"))}
    samples = collections.defaultdict(collections.Counter)
    requests = collections.Counter()
    for path in sorted(glob.glob(os.path.join(results, "raw", "r*-*.perf.data"))):
        m = re.match(r"r(\d+)-(.+)-([^-]+)\.perf\.data$", os.path.basename(path))
        rate = rps.get(m.groups()) if m else None
        if not rate:
            continue
        key = (m.group(2), m.group(3))
        samples[key] += samples_by_symbol(path)
        requests[key] += rate * seconds
    if not samples:
        print("No profiles to read (PERF_RECORD=1 keeps them in raw/*.perf.data).")
        return
    print(f"Where each proxy's CPU time went, µs a request (perf record -e cpu-clock, "
          f"one sample each {SAMPLE_US} µs, {seconds:g} s of each run, all rounds):")
    for (target, workload), counts in sorted(samples.items()):
        per = SAMPLE_US / requests[(target, workload)]
        user = sum(c for (kind, _), c in counts.items() if kind != "k") * per
        kernel = sum(c for (kind, _), c in counts.items() if kind == "k") * per
        print(f"\n{target} {workload}: user {user:.2f}, kernel {kernel:.2f}")
        for kind, title in ((".", "user"), ("k", "kernel")):
            ranked = sorted(((c, s) for (k, s), c in counts.items() if k == kind), reverse=True)
            for c, symbol in ranked[:top]:
                print(f"  {c * per:7.3f}  {title:6}  {symbol[:120]}")


if __name__ == "__main__":
    main()
