"""What the summaries of benches/*.sh share: reading results.tsv, medians
that skip what a run did not record, and the warnings that say which runs
did not have their CPUs to themselves.

The scripts run their summary as `python3 -` with this folder on
PYTHONPATH (lib.sh's `summary_python`).
"""
import csv
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
