#!/usr/bin/env bash
# Helpers shared by the benchmark scripts (sourced, never run). They expect
# the sourcing script to define log(), the PIDS array and, for idle_check,
# RESULTS; CPU numbers and pids are passed in.

# start_bg CPU LOGFILE CMD... : run CMD pinned to CPU in the background; sets STARTED_PID.
start_bg() {
  local cpu=$1 logf=$2; shift 2
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# free_ports N : N distinct free loopback ports (bound together, then released).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Sum of utime+stime (clock ticks) over the given pids.
ticks_of() {
  local p
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] && sed 's/^.*) //' "/proc/$p/stat"
  done | awk '{ t += $12 + $13 } END { print t + 0 }'
}

# Clock ticks used by processes that are not ours (not descendants of this
# script, not kernel threads): a compile started by someone else mid-run
# shows up here. Children reaped during the run count via the parent's
# cutime/cstime, so short-lived processes are included.
foreign_ticks() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v me="$$" '
    { pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
      ppid[pid] = f[2]; t[pid] = f[12] + f[13] + f[14] + f[15] }
    END {
      for (p in t) {
        q = p; ours = 0
        for (d = 0; q > 0 && d < 64; d++) {
          if (q == me || q == 2) { ours = 1; break }
          q = ppid[q]
        }
        if (!ours) s += t[p]
      }
      print s + 0
    }'
}

# wait_quiet : up to WAIT_QUIET s, until foreign processes use < 10% of a core for 1 s.
wait_quiet() {
  local start=$SECONDS a b
  while ((SECONDS - start < WAIT_QUIET)); do
    a=$(foreign_ticks); sleep 1; b=$(foreign_ticks)
    if (((b - a) * 100 < HZ * 10)); then
      ((SECONDS - start > 1)) && log "other processes quiet after $((SECONDS - start)) s"
      return 0
    fi
  done
  log "other processes still busy after ${WAIT_QUIET} s; measuring anyway"
}

# "busy total" jiffies of CPU 0 and CPU 1 from /proc/stat.
cpu_snapshot() {
  awk '$1 == "cpu0" || $1 == "cpu1" {
         t = 0; for (i = 2; i <= 9; i++) t += $i   # user..steal
         printf "%d %d ", t - $5 - $6, t }' /proc/stat   # minus idle, iowait
}

# Warn when the machine is not idle: a busy CPU skews every number.
idle_check() {
  local a b
  a=$(cpu_snapshot); sleep 1; b=$(cpu_snapshot)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
    c0 = 100 * (y[1] - x[1]) / (y[2] - x[2]); c1 = 100 * (y[3] - x[3]) / (y[4] - x[4])
    printf "idle check: CPU0 %.0f%% busy, CPU1 %.0f%% busy\n", c0, c1
    if (c0 > 10 || c1 > 10) print "WARNING: the machine is not idle; results will be noisy" }' | tee -a "$RESULTS/env.txt" >&2
}
