#!/usr/bin/env bash
# Instructions per proxied HTTP request, counted by callgrind: unlike req/s
# it does not move with machine noise, so it is the number to track while
# working on the hot path (run by hand, never in CI). With
# PROXIES="geolb haproxy nginx" it counts HAProxy and nginx the same way,
# in front of the same backend, so that the ratios hold from run to run.
#
# Each proxy runs alone under callgrind with collection off (one worker:
# geolb worker_threads = 1, HAProxy -db with nbthread 1, nginx with
# master_process off, daemon off, worker_processes 1), answers a check,
# takes WARMUP seconds of load, and only then is instrumentation switched on
# (callgrind_control -i on) for DURATION seconds of wrk -t1 -cCONNS (or
# h2load, CLIENT=h2). Only
# the proxy process is counted, user space only (callgrind sees no kernel
# work: the system calls of each are counted by benches/syscalls.sh).
# Besides the total, the script counts the calls into the C allocator
# (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign) from
# the same callgrind output, the same way for all three (nginx's and
# HAProxy's own pools hand out memory without such calls: those count as
# none), and lists the TOP functions by instructions of their own.
#
# Requires: valgrind (callgrind_annotate, callgrind_control), nginx, wrk
# (h2load for CLIENT=h2; openssl for it and for BACKEND_PROTO=tls), curl, python3; haproxy for PROXIES=haproxy.
#   GEOLB=target/release/geolb benches/instructions.sh
#   PROXIES="geolb haproxy nginx" GEOLB=/tmp/geolb-main benches/instructions.sh
# LISTENER: more lines for geolb's listener (a rule's cost: run with and
# without), e.g. LISTENER='request_id = false'; URL_PATH: the path wrk asks
# for (default /), e.g.:
#   LISTENER='routes = [{ path_prefix = "/api/", pool = "p", strip_prefix = true, methods = ["GET"], allow = ["127.0.0.0/8"] }]' \
#   URL_PATH=/api/x GEOLB=target/release/geolb benches/instructions.sh
# REQUEST=browser: the client's requests carry a browser's fifteen fields
# (Chrome's User-Agent, Accept, Cookie, ...: lib.sh's request_fields)
# rather than only Host, for all three proxies alike.
#   REQUEST=browser PROXIES="geolb haproxy nginx" GEOLB=target/release/geolb benches/instructions.sh
# SAME_FIELDS=1: HAProxy and nginx add to each request the fields geolb
# adds by default (X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host,
# and an X-Request-Id, returned with the answer too: lib.sh), with the
# lines their users write for it. Unset, they do less than geolb.
# SAME_FIELDS=forwarded: the three X-Forwarded-* fields only, and geolb's
# listener has request_id = false.
#   SAME_FIELDS=1 PROXIES="geolb haproxy nginx" GEOLB=target/release/geolb benches/instructions.sh
# CHUNKED=1 (with BODY): the backend answers that file chunked, with a
# line before and after it (nginx's addition module): three chunks of
# data and the last one, in one write. geolb passes a backend's chunks to
# an HTTP/1.1 client as they came, HAProxy and nginx make them anew.
#   CHUNKED=1 BODY=1k PROXIES="geolb haproxy nginx" GEOLB=target/release/geolb benches/instructions.sh
# BODY=16k: the backend answers a 16 KiB text file (text/plain) instead of
# "hello\n" (any size head -c takes, up to ~300 KB). COMPRESS=gzip (or br,
# zstd): geolb's listener has compress = { algorithms = [COMPRESS] } and
# wrk sends Accept-Encoding: COMPRESS (geolb only: LISTENER and COMPRESS
# do not apply to HAProxy and nginx).
#   BODY=16k COMPRESS=gzip GEOLB=target/release/geolb benches/instructions.sh
# CLIENT=h2: h2load -t1 -cCONNS -m1 over TLS 1.3 with ALPN h2 instead of
# wrk (each proxy terminates TLS with one self-signed P-256 certificate, as
# benches/http.sh CLIENT=h2 does; HTTP/1.1 to the backend): the count of an
# HTTP/2 client's request, TLS included, beside HAProxy's and nginx's.
#   CLIENT=h2 PROXIES="geolb haproxy nginx" GEOLB=target/release/geolb benches/instructions.sh
# CLIENT=h2c: the same h2load over cleartext, HTTP/2 by prior knowledge
# (gRPC's way without TLS; geolb's plain listener, HAProxy bind ... proto
# h2, nginx listen ... http2).
#   CLIENT=h2c PROXIES="geolb haproxy nginx" GEOLB=target/release/geolb benches/instructions.sh
# BACKEND_PROTO=h2c: the proxies speak HTTP/2 by prior knowledge to the
# backend (nginx's listen ... http2; geolb backend_protocol = "h2c",
# HAProxy proto h2; nginx cannot proxy so and is skipped).
#   BACKEND_PROTO=h2c PROXIES="geolb haproxy" GEOLB=target/release/geolb benches/instructions.sh
# BACKEND_PROTO=tls: HTTP/1.1 over TLS 1.3 to the backend (one self-signed
# P-256 certificate, not verified by any proxy: geolb tls = { verify =
# false }, HAProxy ssl verify none, nginx proxy_pass https://), as
# benches/http.sh BACKEND_PROTO=tls does.
#   BACKEND_PROTO=tls PROXIES="geolb haproxy nginx" GEOLB=target/release/geolb benches/instructions.sh
# UPLOAD=N (bytes, e.g. 1024 or 1k): every request is a POST carrying N
# bytes (wrk's script sets the body; Content-Length framing); the backend
# reads and drops it and answers as for a GET (nginx's `return`). nginx
# the proxy buffers a body before it forwards it (in memory up to its
# client_body_buffer_size, 16 KiB here; to a file past that), HAProxy and
# geolb stream it. CLIENT=h1 only.
#   UPLOAD=1k BACKEND_PROTO=h2c PROXIES="geolb haproxy" GEOLB=target/release/geolb benches/instructions.sh
# CACHE=1: callgrind also simulates the caches (valgrind's --cache-sim,
# this machine's sizes) and prints each proxy's data reads and writes and
# its L1 and last-level misses per request: where two proxies' instructions
# are close and their req/s per core are not, memory is the next suspect
# (this machine's VMs expose no hardware counters to perf).
#   CACHE=1 CLIENT=h2 PROXIES="geolb haproxy" GEOLB=target/release/geolb benches/instructions.sh
# CACHE_LL=size,ways,line: the last level callgrind simulates, rather
# than this machine's L3 (callgrind has two levels). With one core's L2
# (CACHE_LL=1048576,8,64 here) its "last-level" misses are the L2 misses,
# which is where a request's data goes cold with 1,000 connections.
# TOOL=dhat: valgrind's dhat instead of callgrind, for the heap at its peak
# and the places holding it (benches/allocs.sh runs it so, with 1,000
# connections).
# CALLGRIND_ARGS: more options for callgrind, e.g. --dump-instr=yes (costs
# by instruction address, whose inlined frames benches/callgrind_inlined.py
# names: which move made a memcpy).
# Environment: PROXIES (geolb), CLIENT (h1), REQUEST (plain), SAME_FIELDS (0), BACKEND_PROTO (http1), UPLOAD (none), CHUNKED (none), DURATION (10 s), WARMUP (1 s), CONNS (8),
# TOP (10 functions per proxy), TOOL (callgrind), KEEP (a directory: the
# valgrind outputs are copied there as TOOL.PROXY.out), GEOLB.
set -u
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GEOLB=${GEOLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/geolb}
PROXIES=${PROXIES:-geolb}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-8}
TOP=${TOP:-10}
TOOL=${TOOL:-callgrind}
LISTENER=${LISTENER:-}
URL_PATH=${URL_PATH:-/}
UPLOAD=${UPLOAD:-}
BODY=${BODY:-}
COMPRESS=${COMPRESS:-}
CLIENT=${CLIENT:-h1}
BACKEND_PROTO=${BACKEND_PROTO:-http1}
[[ $BACKEND_PROTO == http1 || $BACKEND_PROTO == h2c || $BACKEND_PROTO == tls ]] \
  || die "BACKEND_PROTO=$BACKEND_PROTO: http1, h2c or tls"
PROXY_CPU=0
LOAD_CPU=1
# nginx keeps at most this many idle backend connections (as in http.sh).
NGINX_KEEPALIVE=$((CONNS > 64 ? CONNS : 64))
WORK=$(mktemp -d /tmp/geolb-instructions.XXXXXX)
mkdir -p "$WORK/logs"
RESULTS=$WORK   # where lib.sh's make_cert logs
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM
read -r BACKEND PORT <<<"$(free_ports 2)"
LOCATION='location / { return 200 "hello\n"; }'
if [[ -n $BODY ]]; then
  mkdir -p "$WORK/www"
  chmod 755 "$WORK"   # nginx's workers run as nobody: mktemp's 0700 would give 403
  text_file "$WORK/www/body.txt" "${BODY/k/K}"
  LOCATION="location / { root $WORK/www; default_type text/plain; }"
fi
[[ -z $BODY ]] || URL_PATH=/body.txt
if [[ -n ${CHUNKED:-} ]]; then
  # nginx's addition module answers a file with one before and after it
  # with no length: chunked, three chunks of data and the last.
  [[ -n $BODY ]] || die "CHUNKED=1 needs BODY (the middle chunk's size)"
  printf 'before\n' >"$WORK/www/before.txt"
  printf 'after\n' >"$WORK/www/after.txt"
  LOCATION="location / { root $WORK/www; default_type text/plain; }
    location = /body.txt { root $WORK/www; default_type text/plain; add_before_body /before.txt; add_after_body /after.txt; addition_types text/plain; }"
fi
COMPRESS_LINE=${COMPRESS:+"compress = { algorithms = [\"$COMPRESS\"] }"}
cat > "$WORK/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND$(case $BACKEND_PROTO in h2c) echo " http2" ;; tls) echo " ssl" ;; esac);
$([[ $BACKEND_PROTO == tls ]] && nginx_tls)
    $LOCATION
  }
}
CONF

# ---------------------------------------------------------------- proxy configs
# The same jobs as in benches/http.sh, with one backend: keep-alive to it,
# no logs, no health checks.

write_geolb_conf() {
  local tls=""
  [[ $CLIENT == h2 ]] && tls=$(geolb_tls_listener)
  geolb_one_pool_conf "$BACKEND" "$PORT" "$LISTENER"$'\n'"$(geolb_same_fields)"$'\n'"$COMPRESS_LINE"$'\n'"$tls" \
    | if [[ $BACKEND_PROTO == http1 ]]; then cat; else sed "/^backends = /a $(geolb_backend_proto)"; fi \
    | if [[ $TOOL == dhat ]]; then
      # Marking the heap for huge pages grows it with 64 MiB of blocks
      # allocated and freed at start-up, which dhat, replacing the
      # allocator, would report as the heap's peak.
      sed '/^worker_threads = /a huge_pages = false'
    else cat; fi >"$WORK/geolb.toml"
}

write_haproxy_conf() {
  {
    haproxy_http_head 4096 "$([[ $CLIENT == h2 ]] && haproxy_tls_global)"
    cat <<EOF
frontend fe
    bind 127.0.0.1:$PORT$([[ $CLIENT == h2 ]] && haproxy_tls_bind)$([[ $CLIENT == h2c ]] && echo " proto h2")
$(haproxy_same_fields)
    default_backend be
backend be
    server b1 127.0.0.1:$BACKEND$(haproxy_server_opts)
EOF
  } >"$WORK/haproxy.cfg"
}

write_nginx_proxy_conf() {
  {
    nginx_common nginx
    echo "master_process off;"
    echo "http {"
    echo "    access_log off;"
    nginx_http_common nginx
    nginx_upstream "$BACKEND"
    cat <<EOF
    server {
        listen 127.0.0.1:$PORT$(case $CLIENT in h2) echo " ssl http2" ;; h2c) echo " http2" ;; esac);
$([[ $CLIENT == h2 ]] && nginx_tls)
$(if [[ $BACKEND_PROTO == tls ]]; then nginx_pass_location https "$(nginx_backend_tls_lines)"; else nginx_pass_location http; fi)
    }
}
EOF
  } >"$WORK/nginx.conf"
}

# start_under_valgrind NAME : the proxy under valgrind's TOOL (valgrind's
# pid is the proxy's: no fork, no exec); callgrind with collection off
# until callgrind_control turns it on; sets VG.
start_under_valgrind() {
  local name=$1 logf="$WORK/logs/$1.log" CALLGRIND
  if [[ $TOOL == dhat ]]; then
    CALLGRIND=(valgrind --tool=dhat --num-callers=40 --dhat-out-file="$WORK/dhat.$1.out")
  else
    CALLGRIND=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.$1.out")
    [[ ${CACHE:-0} == 1 ]] && CALLGRIND+=(--cache-sim=yes)
    [[ ${CACHE:-0} == 1 && -n ${CACHE_LL:-} ]] && CALLGRIND+=(--LL="$CACHE_LL")
    # e.g. --dump-instr=yes: costs by instruction address, whose inlined
    # callers `addr2line -i` names (which move a memcpy call site makes).
    [[ -n ${CALLGRIND_ARGS:-} ]] && read -ra extra <<< "$CALLGRIND_ARGS" && CALLGRIND+=("${extra[@]}")
  fi
  case $name in
    geolb)
      [[ -x $GEOLB ]] || { log "SKIP geolb: binary $GEOLB not found (set GEOLB=)"; return 1; }
      write_geolb_conf
      start_bg "$PROXY_CPU" "$logf" env RUST_LOG="${RUST_LOG:-warn}" "${CALLGRIND[@]}" "$GEOLB" run --config "$WORK/geolb.toml"
      ;;
    haproxy)
      write_haproxy_conf
      start_bg "$PROXY_CPU" "$logf" "${CALLGRIND[@]}" haproxy -db -f "$WORK/haproxy.cfg"
      ;;
    nginx)
      [[ $BACKEND_PROTO != h2c ]] || { log "SKIP nginx: it cannot proxy to HTTP/2 backends"; return 1; }
      write_nginx_proxy_conf
      start_bg "$PROXY_CPU" "$logf" "${CALLGRIND[@]}" nginx -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf"
      ;;
    *) log "SKIP $name: unknown proxy (known: geolb haproxy nginx)"; return 1 ;;
  esac
  VG=$STARTED_PID
}

# mallocs FILE : calls into the C allocator recorded in a callgrind output
# (calls made from inside the allocator itself are not counted twice).
mallocs() {
  python3 - "$1" <<'EOF'
import re, sys
ALLOC = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"}
names, fn, cfn, total = {}, None, None, 0
def name(v):
    m = re.match(r"\((\d+)\)(?: (.*))?", v)
    if not m:
        return v
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), "")
def base(n):   # "malloc'2" (recursion) -> "malloc"
    return n.split("'")[0]
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("fn="):
        fn = base(name(line[3:].rstrip("\n")))
    elif line.startswith("cfn="):
        cfn = base(name(line[4:].rstrip("\n")))
    elif line.startswith("calls=") and cfn in ALLOC and fn not in ALLOC:
        total += int(line[6:].split()[0])
print(total)
EOF
}

# top_functions REQUESTS TOP : from callgrind_annotate's output on stdin,
# the TOP lines after the function header: instructions per request, share,
# function [object] (the source path dropped, to fit a line).
top_functions() {
  python3 -c '
import re, sys
n, top, on, shown = int(sys.argv[1]), int(sys.argv[2]), False, 0
for line in sys.stdin:
    if "file:function" in line:
        on = True
        continue
    m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*)$", line)
    if not on or not m or shown >= top:
        continue
    where = m.group(3)
    obj = re.search(r" \[([^]]*)\]$", where)
    fn = where[: obj.start()] if obj else where
    fn = fn.split(":", 1)[1] if ":" in fn else fn   # drop "file:"
    lib = obj.group(1).rsplit("/", 1)[-1] if obj else ""
    ir = int(m.group(1).replace(",", ""))
    print(f"    {ir / n:8.0f} per request {float(m.group(2)):5.1f} %  {fn} [{lib}]")
    shown += 1
' "$@"
}

# dhat_report FILE CONNECTIONS TOP : the heap at its peak (dhat's t-gmax)
# from a dhat output: bytes and blocks live then, bytes per connection, and
# the TOP places holding them, each named by the first three frames of its
# stack outside the allocator's plumbing (the Rust standard library, the
# allocation wrappers of bytes, hashbrown, nginx and HAProxy), stacks
# sharing those frames summed.
dhat_report() {
  python3 - "$@" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
conns, top = int(sys.argv[2]), int(sys.argv[3])
ftbl = d["ftbl"]
PLUMBING = re.compile(r"^(malloc|calloc|realloc|posix_memalign|aligned_alloc|memalign|UnknownInlinedFun)$"
                      r"|^(__rust_|__rdl_)|^(alloc|alloc_impl|alloc_impl_runtime|allocate|exchange_malloc)$"
                      r"|^bytes::bytes_mut::|^(reserve|with_capacity|new)(<|$)|^hashbrown::"
                      r"|^(ngx_alloc|ngx_calloc|ngx_palloc|ngx_pnalloc|ngx_pcalloc|ngx_memalign|ngx_palloc_large|ngx_palloc_block|ngx_create_pool)$"
                      r"|^(__pool_alloc|pool_alloc_nocache|pool_get_from_os|pool_alloc|pool_zalloc)$")
def frame(i):
    """(name, where) of a frame, or None when it is the allocator's plumbing."""
    m = re.match(r"0x[0-9A-Fa-f]+: (.*?)(?: \((?:in )?([^()]*)\))?$", ftbl[i])
    name, where = (m.group(1), m.group(2) or "") if m else (ftbl[i], "")
    if where.startswith(("library/", "/rustc/")) or "vgpreload" in where or PLUMBING.search(name):
        return None
    while True:   # generic arguments dropped, innermost first, to fit a line
        short = re.sub(r"<[^<>]*>", "", name)
        if short == name:
            break
        name = short
    return f"{name} ({where.rsplit('/', 1)[-1]})" if where else name
gb = sum(p.get("gb", 0) for p in d["pps"])
gbk = sum(p.get("gbk", 0) for p in d["pps"])
tb = sum(p["tb"] for p in d["pps"])
tbk = sum(p["tbk"] for p in d["pps"])
print(f"  heap at its peak: {gb:,} bytes in {gbk:,} blocks; {gb / conns:,.0f} bytes per connection (all of it / {conns});"
      f" whole run: {tbk:,} blocks, {tb:,} bytes allocated")
groups = {}
for p in d["pps"]:
    if not p.get("gb"):
        continue
    kept = [f for f in map(frame, p["fs"]) if f][:3]
    key = " <- ".join(kept) or "(allocator only)"
    g = groups.setdefault(key, [0, 0])
    g[0] += p["gb"]; g[1] += p["gbk"]
for key, (b, k) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"  {b:>12,} B {100 * b / gb:5.1f} % {k:>7,} blocks {b / conns:>9,.0f} B/conn  {key}")
EOF
}

# ratio A B : A / B to two decimals, or a dash without B.
ratio() { [[ -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || echo —; }

# ---------------------------------------------------------------- main

for c in valgrind callgrind_annotate callgrind_control nginx curl python3 taskset; do
  command -v "$c" >/dev/null || die "$c not found"
done
H2LOAD=0
if [[ $CLIENT == h2 || $CLIENT == h2c ]]; then
  H2LOAD=1
  command -v h2load >/dev/null || die "h2load not found (apt-get install -y nghttp2-client)"
  [[ -z $COMPRESS ]] || die "COMPRESS is for CLIENT=h1 (wrk) only"
  if [[ $CLIENT == h2 ]]; then
    SCHEME=https CURL=(curl -s -k --http2)
  else
    SCHEME=http CURL=(curl -s --http2-prior-knowledge)
  fi
else
  command -v wrk >/dev/null || die "wrk not found"
  SCHEME=http CURL=(curl -s)
  [[ $CLIENT == h1 ]] || die "CLIENT=$CLIENT: h1, h2 or h2c"
fi
# One certificate for both ends that speak TLS (the listener, the backend).
[[ $CLIENT == h2 || $BACKEND_PROTO == tls ]] && make_cert
start_bg "$LOAD_CPU" "$WORK/logs/backend.log" nginx -c "$WORK/backend.conf" -p "$WORK"
wait_port "$BACKEND" "$STARTED_PID" || die "backend nginx did not start: $(tail -3 "$WORK/backend-error.log")"
request_fields
WRK_HEADER=("${REQUEST_FIELDS[@]}")
[[ -n $COMPRESS ]] && WRK_HEADER+=(-H "Accept-Encoding: $COMPRESS")
WRK_SCRIPT=()
if [[ -n $UPLOAD ]]; then
  [[ $CLIENT == h1 ]] || die "UPLOAD: CLIENT=h1 only"
  upload_bytes=${UPLOAD/k/*1024}
  [[ $upload_bytes =~ ^[0-9]+(\*1024)?$ ]] || die "UPLOAD=$UPLOAD: a number of bytes, or of KiB with k"
  cat >"$WORK/upload.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("x", $((upload_bytes)))
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
  WRK_SCRIPT=(-s "$WORK/upload.lua")
fi

# load SECONDS OUTFILE : CONNS connections of wrk, or of h2load (one stream
# each, a line per request in OUTFILE.log) with CLIENT=h2 or h2c, on LOAD_CPU.
load() {
  if ((H2LOAD)); then
    run_load "$1" "$2" h2load -t1 -c"$CONNS" -m1 -D"$1" --log-file="$2.log" "${WRK_HEADER[@]}" "$SCHEME://127.0.0.1:$PORT$URL_PATH"
  else
    # --timeout: under callgrind an answer with 1,000 connections open
    # can take longer than wrk's 2 s (nginx's did, 221 times in 20 s).
    # wrk then counts a timeout, not an answer, and the proxy's work for
    # it is shared by the requests counted.
    run_load "$1" "$2" wrk -t1 -c"$CONNS" -d"${1}s" --timeout 60s "${WRK_HEADER[@]}" "${WRK_SCRIPT[@]}" "http://127.0.0.1:$PORT$URL_PATH"
  fi
}

# answered OUTFILE : "requests non2xx" of a wrk run (non2xx empty when none).
answered() {
  awk '/requests in/ { n = $1 } /Non-2xx/ { bad = $NF } END { printf "%s %s\n", n, bad }' "$1"
}

declare -A IR_PER=() MALLOC_PER=()
for name in $PROXIES; do
  start_under_valgrind "$name" || continue
  if ! wait_until "$VG" 300 0.1 "${CURL[@]}" -o /dev/null "$SCHEME://127.0.0.1:$PORT/"; then
    log "SKIP $name: no answer within 30 s under valgrind; log tail:"; tail -5 "$WORK/logs/$name.log" >&2
    stop_pids "$VG"; forget_pid "$VG"; continue
  fi
  HEAD=$("${CURL[@]}" -D - -o /dev/null "${WRK_HEADER[@]}" "$SCHEME://127.0.0.1:$PORT$URL_PATH")
  WANT="HTTP/1.1 200"
  ((H2LOAD)) && WANT="HTTP/2 200"
  if [[ $HEAD != "$WANT"* ]] || [[ -n $COMPRESS && ${HEAD,,} != *"content-encoding: $COMPRESS"* ]]; then
    log "SKIP $name: not $WANT${COMPRESS:+ with $COMPRESS}: $HEAD"; stop_pids "$VG"; forget_pid "$VG"; continue
  fi
  if ((H2LOAD)); then
    # One h2load run: a new one would open its connections again, and 64
    # TLS handshakes would be counted with the requests. Counting starts
    # WARMUP seconds in; the requests counted are those that ended after
    # that (h2load's log: start in µs since the epoch, status, µs taken).
    load $((WARMUP + DURATION)) "$WORK/$name.load" &
    LOADER=$!
    sleep "$WARMUP"
    ON_US=$(date +%s%6N)
    if [[ $TOOL == callgrind ]] && ! callgrind_control -i on "$VG" >"$WORK/logs/$name-control.log" 2>&1; then
      log "SKIP $name: callgrind_control failed: $(tail -2 "$WORK/logs/$name-control.log")"; wait "$LOADER"; stop_pids "$VG"; forget_pid "$VG"; continue
    fi
    wait "$LOADER"
    N=$(awk -F'\t' -v on="$ON_US" '$1 + $3 >= on && $2 >= 200 && $2 < 300 { n++ } END { print n + 0 }' "$WORK/$name.load.log")
    NON2XX=$(awk -F'\t' -v on="$ON_US" '$1 + $3 >= on && $2 >= 400 { n++ } END { if (n) print n }' "$WORK/$name.load.log")
  else
    ((WARMUP > 0)) && load "$WARMUP" "$WORK/warmup-$name.load"
    if [[ $TOOL == callgrind ]] && ! callgrind_control -i on "$VG" >"$WORK/logs/$name-control.log" 2>&1; then
      log "SKIP $name: callgrind_control failed: $(tail -2 "$WORK/logs/$name-control.log")"; stop_pids "$VG"; forget_pid "$VG"; continue
    fi
    load "$DURATION" "$WORK/$name.load"
    read -r N NON2XX <<<"$(answered "$WORK/$name.load")"
  fi
  kill -TERM "$VG"   # no SIGKILL: valgrind writes its output at exit
  for ((i = 0; i < 300; i++)); do kill -0 "$VG" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$VG" 2>/dev/null && log "$name: still running 30 s after SIGTERM (its output may be missing)"
  forget_pid "$VG"
  OUT=$WORK/$TOOL.$name.out
  [[ -n ${KEEP:-} ]] && mkdir -p "$KEEP" && cp "$OUT" "$WORK/$name.load"* "$KEEP/"
  if [[ -z $N || $N == 0 || ! -s $OUT ]]; then
    log "SKIP $name: no result (requests '${N:-}', output $(stat -c %s "$OUT" 2>/dev/null || echo missing))"; continue
  fi
  if [[ $TOOL == dhat ]]; then
    echo "$name: requests=$N${NON2XX:+ non2xx=$NON2XX} connections=$CONNS"
    dhat_report "$OUT" "$CONNS" "$TOP"
    continue
  fi
  IR=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  MALLOCS=$(mallocs "$OUT")
  IR_PER[$name]=$((IR / N))
  MALLOC_PER[$name]=$(awk -v m="$MALLOCS" -v n="$N" 'BEGIN { printf "%.2f", m / n }')
  echo "$name: requests=$N${NON2XX:+ non2xx=$NON2XX} instructions=$IR per_request=${IR_PER[$name]} mallocs=$MALLOCS mallocs_per_request=${MALLOC_PER[$name]}"
  if [[ ${CACHE:-0} == 1 ]]; then
    # The totals, by the event names callgrind_annotate shows.
    callgrind_annotate "$OUT" 2>/dev/null | awk -v n="$N" -v name="$name" '
      /^Events shown:/ { for (i = 3; i <= NF; i++) ev[i - 2] = $i }
      /PROGRAM TOTALS/ {
        gsub(/\([^)]*\)/, ""); gsub(",", "")
        for (i = 1; i < NF - 1; i++) t[ev[i]] = $i
        printf "%s: per request: data reads %.0f, data writes %.0f; L1 misses: data %.1f, instructions %.1f; last-level misses %.2f\n",
          name, t["Dr"] / n, t["Dw"] / n, (t["D1mr"] + t["D1mw"]) / n, t["I1mr"] / n, (t["DLmr"] + t["DLmw"] + t["ILmr"]) / n }'
  fi
  # The TOP functions by their own instructions, per request.
  callgrind_annotate --inclusive=no "$OUT" 2>/dev/null | top_functions "$N" "$TOP"
done
if ((${#IR_PER[@]} > 1)); then
  echo
  echo "| proxy | instructions per request | vs HAProxy | vs nginx | mallocs per request |"
  echo "|---|---:|---:|---:|---:|"
  for name in $PROXIES; do
    [[ -n ${IR_PER[$name]:-} ]] || continue
    printf '| %s | %s | %s | %s | %s |\n' "$name" "${IR_PER[$name]}" \
      "$(ratio "${IR_PER[$name]}" "${IR_PER[haproxy]:-}")" "$(ratio "${IR_PER[$name]}" "${IR_PER[nginx]:-}")" \
      "${MALLOC_PER[$name]}"
  done
fi
