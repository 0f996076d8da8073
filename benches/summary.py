"""What the summaries of benches/*.sh share: reading results.tsv, medians
that skip what a run did not record, and the warnings that say which runs
did not have their CPUs to themselves.

The scripts run their summary as `python3 -` with this folder on
PYTHONPATH (lib.sh's `summary_python`).
"""
import csv
import math
import statistics


def read_rows(path):
    return list(csv.DictReader(open(path), delimiter="\t"))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def run_name(r):
    return f"round {r['round']} {r.get('target') or r.get('server')} {r['workload']}"


def warn_skewed(rows, results_path, stolen_means=None):
    """Prints how many noisy runs were measured again, then the runs in
    which other processes used more than 5 % of a core, then (given
    `stolen_means`, what less of a core meant in that bench) those in which
    the hypervisor took more than 5 % of CPU 0 or CPU 1."""
    try:
        with open(results_path.replace("results.tsv", "discarded.tsv")) as f:
            discarded = sum(1 for _ in f) - 1
    except OSError:
        discarded = 0
    if discarded > 0:
        print(f"\n{discarded} noisy run(s) were discarded and measured again (NOISY_RETRIES); see discarded.tsv.")
    noisy = [r for r in rows if (num(r["foreign_cpu"]) or 0) > 5]
    if noisy:
        print(f"\nWARNING: {len(noisy)} of {len(rows)} runs had more than 5% of a core used by other processes "
              "(foreign CPU %); those numbers are skewed, rerun on an idle machine:")
        for r in noisy:
            print(f"- {run_name(r)}: foreign {r['foreign_cpu']}%")
    if stolen_means is None:
        return
    stolen = [r for r in rows if max(num(r["stolen_cpu0"]) or 0, num(r["stolen_cpu1"]) or 0) > 5]
    if stolen:
        print(f"\nWARNING: in {len(stolen)} of {len(rows)} runs the hypervisor took more than 5% of CPU 0 or CPU 1 "
              f"(steal in /proc/stat): {stolen_means}:")
        for r in stolen:
            print(f"- {run_name(r)}: CPU 0 {r['stolen_cpu0']}%, CPU 1 {r['stolen_cpu1']}%")


def median_interval(xs, confidence=0.95):
    """The median of `xs` with an interval that holds it with at least
    `confidence`, from the order statistics alone (the sign test's
    interval: no assumption on how the rounds spread). Returns (median,
    low, high, coverage), low and high None when `xs` are too few for
    `confidence` (under 6 for 95 %)."""
    xs = sorted(x for x in xs if x is not None)
    n = len(xs)
    if not n:
        return None, None, None, None
    # k: how many values to drop at each end, the most whose chance of
    # all lying on one side of the true median stays within the tail.
    tail, k = 0.0, 0
    while k < n:
        p = math.comb(n, k) / 2**n
        if tail + p > (1 - confidence) / 2:
            break
        tail += p
        k += 1
    if k == 0:
        return statistics.median(xs), None, None, None
    return statistics.median(xs), xs[k - 1], xs[n - k], 1 - 2 * tail


def paired_ratios(rows, target, anchors, workload, value):
    """Round by round, `target`'s `value(row)` over the best of the
    `anchors`' in the same round: the rounds interleave the proxies, so a
    slow minute of the machine falls on both sides of each ratio."""
    rounds = {}
    for r in rows:
        if r["workload"] == workload:
            rounds.setdefault(r["round"], {})[r["target"]] = value(r)
    out = []
    for by_target in rounds.values():
        refs = [by_target.get(a) for a in anchors]
        if by_target.get(target) and refs and all(refs):
            out.append(by_target[target] / max(refs))
    return out


def print_paired(rows, targets, workloads, rate="rps", anchors_all=("nginx", "haproxy")):
    """The table of per-round ratios: each geolb build against each anchor
    and against the better of them, by the rows' `rate` field and by it
    per proxy core, with the interval `median_interval` gives."""
    anchors = [a for a in anchors_all if a in targets]
    builds = [t for t in targets if t.startswith("geolb")]
    if not builds or (not anchors and len(builds) < 2):
        return
    value = lambda r: num(r[rate])
    per_core = lambda r: num(r[rate]) / (num(r["proxy_cpu"]) / 100) if num(r[rate]) and num(r["proxy_cpu"]) else None
    print("\nRound by round (each round's ratio of the two, then their median and the interval that holds the"
          " median with 95 % or more from the rounds' order alone; it needs 6 rounds or more):\n")
    print("| target | workload | against | rounds | ahead | ratio, median | interval (coverage) | per proxy core, median | interval (coverage) |")
    print("|---|---|---|---:|---:|---:|---|---:|---|")
    span = lambda lo, hi, cov: "—" if lo is None else f"{lo:.2f} to {hi:.2f} ({cov:.0%})"
    refs = [(a, [a]) for a in anchors] + ([("the better anchor", anchors)] if len(anchors) > 1 else [])
    for w in workloads:
        for t in builds:
            # Two builds in one run: the first against the second as well.
            pair = [(b, [b]) for b in builds if t == builds[0] and b != t]
            for name, group in refs + pair:
                ratios = paired_ratios(rows, t, group, w, value)
                if not ratios:
                    continue
                m, lo, hi, cov = median_interval(ratios)
                cm, clo, chi, ccov = median_interval(paired_ratios(rows, t, group, w, per_core))
                ahead = sum(1 for x in ratios if x > 1)
                print(f"| {t} | {w} | {name} | {len(ratios)} | {ahead} | {fmt(m, '.2f')} | {span(lo, hi, cov)} | "
                      f"{fmt(cm, '.2f')} | {span(clo, chi, ccov)} |")
