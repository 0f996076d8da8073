#!/usr/bin/env bash
# Where the heap goes under many client connections: each proxy under
# valgrind's dhat, wrk -t1 -cCONNS (1,000) for DURATION (10 s) through it to
# one nginx backend, then the heap at its peak (bytes and blocks live at
# dhat's t-gmax) and the TOP places holding it, named by the first frames
# of their stacks outside the allocator's plumbing (run by hand, never in
# CI). benches/instructions.sh with TOOL=dhat: the same proxies, configs
# and backend as the instruction counts; every variable of that script
# applies (PROXIES, GEOLB, DURATION, WARMUP, TOP, KEEP, ...).
#   GEOLB=/tmp/geolb-main benches/allocs.sh
#   PROXIES=geolb CONNS=200 GEOLB=target/release/geolb benches/allocs.sh
#
# dhat replaces malloc and friends inside valgrind (no LD_PRELOAD), so it
# sees the C allocator's callers in all three alike; memory that nginx and
# HAProxy hand out from their own pools shows at the pool's malloc. The
# peak includes what each allocates once at start-up (nginx's connection
# array, HAProxy's pollers and rings): read the listed places, not the
# total alone. Allocations per request: instructions.sh counts malloc calls
# (callgrind, after the warm-up). Under valgrind the proxy runs some 20-50x
# slower, so wrk's 1,000 connections all stay busy: the peak is that of
# 1,000 requests in flight at once.
TOOL=dhat CONNS=${CONNS:-1000} PROXIES=${PROXIES:-"geolb haproxy nginx"} TOP=${TOP:-12} \
  exec "$(dirname "${BASH_SOURCE[0]}")/instructions.sh" "$@"
