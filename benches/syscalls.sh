#!/usr/bin/env bash
# System calls and context switches per proxied HTTP request: geolb beside
# HAProxy and nginx (run by hand, never in CI). benches/http.sh with
# PERF_SYSCALLS=1: the same proxies, backends and load, with perf stat
# counting the proxy's syscall tracepoints (every thread) during each run;
# the table gains "syscalls per request" and "context switches per
# request", and a list by kind follows it. The req/s of these runs carry
# perf's cost: take rates from plain benches/http.sh runs.
#
# Defaults here: one round of 10 s, no direct baseline; every variable of
# benches/http.sh applies (CONNS=1000, CLIENT=h2, GEOLB=, PROXIES=, ...).
#   GEOLB=/tmp/geolb-main benches/syscalls.sh
#   CONNS=1000 GEOLB=/tmp/geolb-main benches/syscalls.sh
#
# Counts per request depend on how many requests each wake-up finds ready
# (one epoll_wait serves many when the proxy is busy): compare proxies
# under the same load, as here, not across loads.
#
# Requires what benches/http.sh does, and perf (Debian: linux-perf) able to
# read tracepoints (kernel.perf_event_paranoid <= 1 or root).
PERF_SYSCALLS=1 ROUNDS=${ROUNDS:-1} BASELINE=${BASELINE:-0} \
  exec "$(dirname "${BASH_SOURCE[0]}")/http.sh" "$@"
