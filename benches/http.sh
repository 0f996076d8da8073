#!/usr/bin/env bash
# HTTP proxy benchmark: geolb beside HAProxy and nginx (run by hand, never in CI).
#
# Layout (2-core machine):
#   CPU 0: the proxy under test, one worker (geolb worker_threads=1,
#          haproxy nbthread 1, nginx worker_processes 1)
#   CPU 1: wrk (-t1 -c64 --latency) and one nginx serving three backends
# Each proxy round-robins over the same three loopback backends with
# keep-alive to them. Workloads: "/" (tiny body), "/1k" (1 KiB body) and
# "/64k" (64 KiB, a static file the backends send with sendfile).
# Rounds are interleaved: every round runs every target once per workload.
#
# Environment:
#   PROXIES="geolb haproxy nginx"  proxies to measure (any subset, any order);
#                   geolb-b is a second geolb build, GEOLB_B, in the same
#                   rounds (a change's before and after, beside the anchors)
#   BASELINE=1      also measure wrk straight to one backend ("direct")
#   ROUNDS=3        interleaved rounds (the first table shows the median, the
#                   second each round's ratios and their interval: 6 or more)
#   DURATION=10     seconds per measured run
#   WARMUP=2        seconds of warm-up per target and workload, before round 1
#   CONNS=64        client connections (wrk -c, h2load -c)
#   WORKLOADS="tiny 1k"  any of tiny, 1k, 64k, upload (every request a
#                   POST of 1 KiB to /, Content-Length framed: wrk's script,
#                   h2load -d; the backend reads the body and answers as
#                   for tiny), chunked (1 KiB with a line before and after
#                   it, no length: three chunks and the last, in one write)
#   LISTENER=      more lines for geolb's listener, e.g. LISTENER='http1_server = "geolb"'
#   LISTENER_B=    geolb-b's instead (default: LISTENER): one build, two
#                   settings in the same rounds, e.g. LISTENER_B='splice = false'
#   CLIENT=h1       h1: wrk, cleartext HTTP/1.1; h2: h2load -t1 over TLS 1.3
#                   with ALPN h2 (one self-signed P-256 certificate as in
#                   benches/tls.sh), HTTP/1.1 to the backends as in h1;
#                   h2c: h2load over cleartext, HTTP/2 by prior knowledge
#                   (HAProxy bind ... proto h2, nginx listen ... http2)
#   H2_STREAMS=1    h2load -m: concurrent streams per connection
#   PACE_MS=0       CLIENT=h1: each connection waits this many ms after an
#                   answer before its next request (wrk's delay(); latency
#                   is timed from the request's write, without the wait):
#                   every proxy is offered about the same load, below what
#                   saturates the load CPU, so p50 and p99 compare the
#                   proxies' latency and not how hard each drives CPU 1
#                   (at 64 connections 1 ms is about 33,000 req/s here)
#   REQUEST=plain   browser: each request carries a browser's fifteen fields
#                   (User-Agent, Accept, Cookie, ...: lib.sh request_fields)
#   SAME_FIELDS=0   1: HAProxy and nginx add the fields geolb adds by default
#                   (X-Forwarded-For, -Proto, -Host, X-Request-Id: lib.sh);
#                   forwarded: the X-Forwarded-* three only, and geolb
#                   without its X-Request-Id
#   PERF_SYSCALLS=0 1: count the proxy's system calls and context switches
#                   during each run (perf stat on tracepoints; costs some
#                   req/s, so the rates of such a run are not the figures
#                   to quote); benches/syscalls.sh sets it
#   PERF_RECORD=0   1: profile the proxy during each run (perf record -e
#                   cpu-clock on its processes, a sample each 250 µs of
#                   their CPU, kernel included, for DURATION - 2 s from the
#                   run's first second) and add to summary.md its user and
#                   kernel µs a request and its top functions' µs a request
#                   (benches/profile_per_request.py; costs some req/s, as
#                   PERF_SYSCALLS does). raw/*.perf.data keep the samples
#                   for perf report and perf annotate.
#   WAIT_QUIET=0    before each run, wait up to this many seconds for other
#                   processes to use < 10% of a core (0 = don't wait)
#   BACKEND_PROTO=http1  how the proxies speak to the backends:
#                   http1 (cleartext HTTP/1.1), tls (HTTP/1.1 over TLS 1.3,
#                   certificate not verified by any proxy), h2c (HTTP/2 by
#                   prior knowledge; nginx cannot proxy it and is skipped)
#   GEOLB=/work/main/target/release/geolb
#   GEOLB_B=        the binary of the geolb-b target (default: GEOLB)
#   (every run also splits the proxy's CPU time: the user-space share column,
#   and user and kernel µs per request)
#   RESULTS_DIR=    where raw results go (default: a new /tmp/geolb-http-bench.XXXXXX)
#
# Every run also reads the proxy's VmRSS and VmHWM (peak RSS, from
# /proc/PID/status, summed over its processes) after the run; with the
# proxy's VmRSS before its warm-up, (peak - before) / CONNS is the memory
# one active client connection (and the backend connection it needs) costs.
#
# Requires: haproxy, nginx (nginx-light is enough), wrk, taskset, python3, curl;
# h2load for CLIENT=h2, perf for PERF_SYSCALLS=1 and PERF_RECORD=1.
#   apt-get install -y haproxy nginx-light wrk nghttp2-client linux-perf
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROXIES=${PROXIES:-"geolb haproxy nginx"}
BASELINE=${BASELINE:-1}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
CLIENT=${CLIENT:-h1}
# h2load for both HTTP/2 clients; TLS for h2 alone.
H2LOAD=0
[[ $CLIENT == h2 || $CLIENT == h2c ]] && H2LOAD=1
H2_STREAMS=${H2_STREAMS:-1}
PACE_MS=${PACE_MS:-0}
PERF_SYSCALLS=${PERF_SYSCALLS:-0}
PERF_RECORD=${PERF_RECORD:-0}
WAIT_QUIET=${WAIT_QUIET:-0}
BACKEND_PROTO=${BACKEND_PROTO:-http1}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
GEOLB_B=${GEOLB_B:-$GEOLB}
PROXY_CPU=0
LOAD_CPU=1
NGINX_WORKER_CONNECTIONS=4096
SECOND_GEOLB=1   # lib.sh's start_proxy: geolb-b runs here
# nginx keeps at most this many idle backend connections: with fewer than
# CONNS it closes one after most responses under load.
NGINX_KEEPALIVE=$((CONNS > 64 ? CONNS : 64))
# Room for a 64 KiB answer in memory: nginx's default (8 pages) spills the
# rest of it into a temporary file, which no one tuning for this would keep.
NGINX_BUFFERS="            proxy_buffers 8 16k;"
read -ra WORKLOADS <<<"${WORKLOADS:-tiny 1k}"
declare -A WL_PATH=([tiny]=/ [1k]=/1k [64k]=/64k [upload]=/ [chunked]=/chunked)

# wl_args WORKLOAD : the load generator's arguments for the workload's
# requests (the upload's body), into WL_ARGS.
wl_args() {
  WL_ARGS=()
  if ((H2LOAD)); then
    [[ $1 == upload ]] && WL_ARGS=(-d "$WORK/upload.body")
    return 0
  fi
  # wrk takes one script: the pace goes into the upload's or its own.
  local script="$WORK/wrk-$1.lua"
  : >"$script"
  [[ $1 == upload ]] && cat "$WORK/upload.lua" >"$script"
  ((PACE_MS > 0)) && printf 'function delay() return %d end\n' "$PACE_MS" >>"$script"
  [[ -s $script ]] && WL_ARGS=(-s "$script")
  return 0
}

declare -a PIDS=()          # every long-running process this script started
declare -A TARGET_PID=()    # target -> pid of the proxy (empty for direct)
declare -A TARGET_PORT=()   # target -> port wrk connects to
declare -A TARGET_RSS0=()   # target -> its VmRSS (kB) before the warm-up
declare -a TARGETS=()       # targets that started and passed the sanity check
BACKEND_PID=""

# ---------------------------------------------------------------- configs

write_backend_conf() {   # three server blocks; body of "/" names the backend
  local kib i
  kib=$(printf 'x%.0s' $(seq 1024))
  head -c 65536 /dev/zero | tr '\0' y >"$WORK/64k"
  # The chunked workload: 1 KiB with a line before and after it (nginx's
  # addition module), sent with no length: three chunks and the last.
  head -c 1024 /dev/zero | tr '\0' c >"$WORK/chunked.txt"
  printf 'before\n' >"$WORK/before.txt"
  printf 'after\n' >"$WORK/after.txt"
  # The upload workload's body, for h2load -d and wrk's script alike.
  head -c 1024 /dev/zero | tr '\0' x >"$WORK/upload.body"
  cat >"$WORK/upload.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
  {
    nginx_common backend
    echo "http {"
    echo "    access_log off;"
    nginx_http_common backend
    echo "    default_type text/plain;"
    local listen_opts="" tls_lines=""
    case $BACKEND_PROTO in
      tls)
        listen_opts=" ssl"
        tls_lines="ssl_certificate $WORK/backend.pem; ssl_certificate_key $WORK/backend.key; ssl_protocols TLSv1.3;"
        ;;
      h2c) listen_opts=" http2" ;;
    esac
    for i in 1 2 3; do
      cat <<EOF
    server {
        listen 127.0.0.1:${BACKEND_PORTS[i-1]}$listen_opts;
        $tls_lines
        location = /   { return 200 "b$i\n"; }
        location = /1k { return 200 "$kib"; }
        location = /64k { sendfile on; alias $WORK/64k; }
        location = /chunked { alias $WORK/chunked.txt; add_before_body /before.txt; add_after_body /after.txt; addition_types text/plain; }
        location = /before.txt { alias $WORK/before.txt; }
        location = /after.txt { alias $WORK/after.txt; }
        location /     { return 404; }
    }
EOF
    done
    echo "}"
  } >"$WORK/backend.conf"
}

write_nginx_proxy_conf() {
  {
    nginx_common nginx
    echo "http {"
    echo "    access_log off;"
    nginx_http_common nginx
    nginx_upstream "${BACKEND_PORTS[@]}"
    cat <<EOF
    server {
        listen 127.0.0.1:${TARGET_PORT[nginx]}$(case $CLIENT in h2) echo " ssl http2" ;; h2c) echo " http2" ;; esac);
$([[ $CLIENT == h2 ]] && nginx_tls)
$(nginx_pass_location "$([[ $BACKEND_PROTO == tls ]] && echo https || echo http)" \
    "$(nginx_backend_tls_lines)"$'\n'"$NGINX_BUFFERS")
    }
}
EOF
  } >"$WORK/nginx.conf"
}

write_haproxy_conf() {
  {
    haproxy_http_head 4096 "$([[ $CLIENT == h2 ]] && haproxy_tls_global)"
    cat <<EOF

frontend fe
    bind 127.0.0.1:${TARGET_PORT[haproxy]}$([[ $CLIENT == h2 ]] && haproxy_tls_bind)$([[ $CLIENT == h2c ]] && echo " proto h2")
$(haproxy_same_fields)
    default_backend be

backend be
    balance roundrobin
    server b1 127.0.0.1:${BACKEND_PORTS[0]}$(haproxy_server_opts)
    server b2 127.0.0.1:${BACKEND_PORTS[1]}$(haproxy_server_opts)
    server b3 127.0.0.1:${BACKEND_PORTS[2]}$(haproxy_server_opts)
EOF
  } >"$WORK/haproxy.cfg"
}

write_geolb_conf() {   # NAME: geolb or geolb-b, the same config on its own port
  local name=${1:-geolb}
  cat >"$WORK/$name.toml" <<EOF
[runtime]
worker_threads = 1
# Not the machine's /var/lib/geolb, whose overrides would apply.
state_dir = "$WORK/$name-state"
shutdown_grace = "1s"

[[pool]]
name = "bench"
backends = [{ addr = "127.0.0.1:${BACKEND_PORTS[0]}" }, { addr = "127.0.0.1:${BACKEND_PORTS[1]}" }, { addr = "127.0.0.1:${BACKEND_PORTS[2]}" }]
$(geolb_backend_proto)

[[listener]]
name = "bench"
bind = "127.0.0.1:${TARGET_PORT[$name]}"
pool = "bench"
$([[ $name == geolb-b ]] && echo "${LISTENER_B-${LISTENER:-}}" || echo "${LISTENER:-}")
$(geolb_same_fields)
$([[ $CLIENT == h2 ]] && geolb_tls_listener)
EOF
}

# ---------------------------------------------------------------- processes

start_backends() {
  if [[ $BACKEND_PROTO == tls ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=backend -keyout "$WORK/backend.key" -out "$WORK/backend.pem" 2>/dev/null \
      || die "openssl could not make the backend certificate"
  fi
  write_backend_conf
  nginx -t -q -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf" \
    || die "backend nginx config rejected (see $WORK/backend.conf)"
  start_bg "$LOAD_CPU" "$RESULTS/logs/backend.log" \
    nginx -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf"
  BACKEND_PID=$STARTED_PID
  local p
  for p in "${BACKEND_PORTS[@]}"; do
    wait_port "$p" "$BACKEND_PID" || die "backend nginx did not listen on $p ($(tail -3 "$WORK/backend-error.log" 2>/dev/null))"
  done
  log "backends: nginx pid $BACKEND_PID on CPU $LOAD_CPU, ports ${BACKEND_PORTS[*]}"
}

# nginx_usable : nginx cannot proxy to HTTP/2 backends.
nginx_usable() {
  [[ $BACKEND_PROTO != h2c ]] || { log "SKIP nginx: it cannot proxy to HTTP/2 backends"; return 1; }
}

# sanity_check NAME : 200s with the right bodies, and which backends answered.
# With CLIENT=h2 or h2c every answer must come over HTTP/2.
sanity_check() {
  local name=$1 port=${TARGET_PORT[$1]} i out seen=() size curl_args=(-s -m 2)
  [[ $CLIENT == h2 ]] && curl_args+=(-k --http2)
  [[ $CLIENT == h2c ]] && curl_args+=(--http2-prior-knowledge)
  for ((i = 0; i < 6; i++)); do
    out=$(curl "${curl_args[@]}" "$SCHEME://127.0.0.1:$port/") || { log "SKIP $name: GET / failed"; return 1; }
    [[ $out == b[123] ]] || { log "SKIP $name: GET / answered '${out:0:60}'"; return 1; }
    seen+=("$out")
  done
  size=$(curl "${curl_args[@]}" -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$SCHEME://127.0.0.1:$port/1k")
  [[ $size == "200 1024 $( ((H2LOAD)) && echo 2 || echo 1.1)" ]] \
    || { log "SKIP $name: GET /1k gave '$size' (status, bytes, HTTP version), want 200 1024"; return 1; }
  log "$name: sanity ok, backends seen over 6 requests: $(printf '%s\n' "${seen[@]}" | sort | uniq -c | tr -s ' \n' ' ')"
}

# ---------------------------------------------------------------- measuring

# run_h2load SECONDS OUTFILE URL : h2load -t1 -cCONNS -mH2_STREAMS for
# SECONDS on LOAD_CPU, one line per request in OUTFILE.log.
# run_h2load SECS OUT URL [ARGS...]
run_h2load() {
  request_fields
  run_load "$1" "$2" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$1" --log-file="$2.log" "${REQUEST_FIELDS[@]}" "${@:4}" "$3"
}

# parse_h2load FILE : rps p50 p99 non2xx sock requests, as parse_wrk gives
# them for wrk. h2load prints no percentiles: they come from FILE.log (start
# time, status, microseconds to the end of the response), which is then
# deleted (a line per request). non2xx: 4xx and 5xx; sock: errored and
# timed-out requests.
parse_h2load() {
  local file=$1 pct
  pct=$(awk -F'\t' '$2 > 0 { print $3 }' "$file.log" 2>/dev/null | sort -n | awk '
    function at(p,  i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] / 1000 }
    { v[NR] = $1 } END { if (NR) printf "%.3f %.3f", at(0.5), at(0.99); else print "NA NA" }')
  rm -f "$file.log"
  awk -v pct="$pct" '
    /^finished in/   { rps = $4 }
    /^requests:/     { done = $6; errored = $12; timeout = $14 }
    /^status codes:/ { bad = $7 + $9 }
    END {
      if (rps == "") { print "NA\tNA\tNA\tNA\tNA\tNA"; exit }
      split(pct, p, " ")
      printf "%s\t%s\t%s\t%d\t%d\t%d\n", rps, p[1], p[2], bad, errored + timeout, done }' "$file"
}

# The system calls counted one by one (all of them are counted together as
# well): those of event loops, sockets and memory. Each tracepoint is a
# counter per thread that perf sets up and tears down in turn (all ~350
# of them took 15 s here).
SYSCALL_KINDS="read write readv writev recvfrom sendto recvmsg sendmsg recvmmsg sendmmsg epoll_wait
  epoll_pwait epoll_pwait2 epoll_ctl futex accept4 accept close connect socket setsockopt getsockopt
  getsockname getpeername shutdown ioctl fcntl sched_yield madvise mmap munmap mprotect brk
  clock_gettime gettimeofday sendfile splice timerfd_settime eventfd2 poll ppoll io_uring_enter"

# perf_start OUTFILE PID... : count the system calls (all, and each kind) and
# context switches of PIDs (every thread) into OUTFILE for DURATION + 2 s
# (perf stat --timeout: no signal needed, where a background job would
# ignore SIGINT); sets PERF_PID. perf opens a
# counter per tracepoint and thread, which takes a moment: the second
# before the load starts is counted too, and the one after, while the
# proxy is idle (a few timer calls at most).
perf_start() {
  local out=$1 kind events=""
  shift
  for kind in $SYSCALL_KINDS; do
    [[ -d /sys/kernel/tracing/events/syscalls/sys_enter_$kind ]] && events+=",syscalls:sys_enter_$kind"
  done
  start_bg "$LOAD_CPU" "$out.log" timeout -k 5 $((DURATION + 30)) perf stat -x, -o "$out" -e raw_syscalls:sys_enter -e context-switches \
    -e "${events#,}" --timeout $(((DURATION + 2) * 1000)) -p "$(IFS=,; echo "$*")"
  PERF_PID=$STARTED_PID
  sleep 1
}

profile_seconds() { echo $((DURATION > 3 ? DURATION - 2 : 1)); }

# profile_start OUTFILE PID... : sample PIDS' CPU time (every thread, user
# and kernel) into OUTFILE from one second into the run until two seconds
# before its end: the load is steady then. Sets PROFILE_PID.
profile_start() {
  local out=$1
  shift
  start_bg "$LOAD_CPU" "$out.log" timeout -k 5 $((DURATION + 30)) \
    sh -c 'sleep 1; exec perf record -e cpu-clock -c 250000 -o "$1" -p "$2" -- sleep "$3"' \
    profile "$out" "$(IFS=,; echo "$*")" "$(profile_seconds)"
  PROFILE_PID=$STARTED_PID
}

# perf_stop OUTFILE : wait for the count to end (bounded twice: perf's own
# --timeout, and timeout(1) around it), set PERF_COUNTS to "syscalls<TAB>context switches".
perf_stop() {
  forget_pid "$PERF_PID"
  PERF_COUNTS=$(awk -F, '$3 == "raw_syscalls:sys_enter" { s = $1 } $3 == "context-switches" { c = $1 }
           END { printf "%s\t%s", (s == "" ? "NA" : s), (c == "" ? "NA" : c) }' "$1")
}

# ipis_to CPU : the function-call interrupts CPU has taken (/proc/interrupts'
# CAL row), which is how the kernel wakes a process on an idle CPU: a proxy
# whose writes wake the load generator or backend from idle more often pays
# for it in its own kernel time.
ipis_to() { awk -v c="$1" '$1 == "CAL:" { print $(c + 2) }' /proc/interrupts; }

# tcp_segments : TCP segments sent by the whole machine (/proc/net/snmp's
# OutSegs). All of a run's traffic is on loopback, so the count over a run,
# per request, covers both ends of both connections: a proxy that makes its
# peers (or itself) send pure ACKs or split writes shows more segments, and
# each costs kernel time on both sides.
tcp_segments() { awk '$1 == "Tcp:" { if (!n++) { for (i = 2; i <= NF; i++) if ($i == "OutSegs") c = i } else if (c) print $c }' /proc/net/snmp; }

# delayed_acks : ACKs the machine's TCP sent alone when its delayed-ACK
# timer ran out (/proc/net/netstat's DelayedACKs): with 1,000 connections a
# request's round trip nears Linux's 40 ms floor of that timer, and each
# answer slower than it costs a segment more on both sides.
delayed_acks() { awk '$1 == "TcpExt:" { if (!n++) { for (i = 2; i <= NF; i++) if ($i == "DelayedACKs") c = i } else if (c) print $c }' /proc/net/netstat; }

# measure ROUND TARGET WORKLOAD : one run, one row appended to results.tsv
measure() {
  local round=$1 target=$2 wl=$3
  local url="$SCHEME://127.0.0.1:${TARGET_PORT[$target]}${WL_PATH[$wl]}"
  local out="$RESULTS/raw/r${round}-${target}-${wl}.$LOADGEN"
  local ppids=() bpids=() p0 p1 u0 u1 b0 b1 c0 c1 f0 f1 t0 t1 i0 i1 s0 s1 d0 d1 row load mem sys="NA\tNA" user="NA"

  ((WAIT_QUIET > 0)) && wait_quiet
  [[ -n ${TARGET_PID[$target]:-} ]] && ppids=("${TARGET_PID[$target]}" $(children_of "${TARGET_PID[$target]}"))
  bpids=("$BACKEND_PID" $(children_of "$BACKEND_PID"))
  ((PERF_SYSCALLS && ${#ppids[@]})) && perf_start "$RESULTS/raw/r${round}-${target}-${wl}.perf" "${ppids[@]}"
  ((PERF_RECORD && ${#ppids[@]})) && profile_start "$RESULTS/raw/r${round}-${target}-${wl}.perf.data" "${ppids[@]}"

  u0=$(user_ticks_of "${ppids[@]}"); i0=$(ipis_to "$LOAD_CPU"); s0=$(tcp_segments); d0=$(delayed_acks)
  f0=$(foreign_ticks); p0=$(ticks_of "${ppids[@]}"); b0=$(ticks_of "${bpids[@]}"); c0=$(cpu_snapshot); t0=$(date +%s.%N)
  wl_args "$wl"
  if ((H2LOAD)); then
    run_h2load "$DURATION" "$out" "$url" "${WL_ARGS[@]}"
  else
    run_wrk "$DURATION" "$out" -c"$CONNS" "${WL_ARGS[@]}" "$url"
  fi
  p1=$(ticks_of "${ppids[@]}"); b1=$(ticks_of "${bpids[@]}"); c1=$(cpu_snapshot); t1=$(date +%s.%N); f1=$(foreign_ticks)
  u1=$(user_ticks_of "${ppids[@]}"); i1=$(ipis_to "$LOAD_CPU"); s1=$(tcp_segments); d1=$(delayed_acks)
  # The proxy's user-space share of its CPU time (the rest is the kernel's
  # work on its behalf: system calls, TCP).
  ((${#ppids[@]} && p1 > p0)) && user=$(awk -v u="$((u1 - u0))" -v p="$((p1 - p0))" 'BEGIN { printf "%.1f", 100 * u / p }')
  ((PERF_RECORD && ${#ppids[@]})) && forget_pid "$PROFILE_PID"
  if ((PERF_SYSCALLS && ${#ppids[@]})); then
    perf_stop "$RESULTS/raw/r${round}-${target}-${wl}.perf"
    sys=$PERF_COUNTS
  fi
  mem="NA\tNA"
  ((${#ppids[@]})) && mem=$(mem_kb "${ppids[@]}")

  row=$(awk -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v b0="$b0" -v b1="$b1" \
            -v has_proxy="${#ppids[@]}" -v c0="$c0" -v c1="$c1" -v f0="$f0" -v f1="$f1" 'BEGIN {
      el = t1 - t0
      split(c0, a, " "); split(c1, b, " ")
      cpu0 = (b[2] - a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
      cpu1 = (b[4] - a[4]) ? 100 * (b[3] - a[3]) / (b[4] - a[4]) : 0
      proxy = has_proxy ? sprintf("%.1f", 100 * (p1 - p0) / hz / el) : "NA"
      foreign = 100 * (f1 - f0) / hz / el; if (foreign < 0) foreign = 0
      printf "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f", proxy, 100 * (b1 - b0) / hz / el, cpu0, cpu1, foreign, el
    }')
  if ((H2LOAD)); then
    load=$(parse_h2load "$out")
  else
    load=$(parse_wrk "$out" rps p50 p99 non2xx sock requests)
  fi
  # rps p50 p99 non2xx sock | proxy CPU ... elapsed | requests | memory | syscalls
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%b\t%b\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$wl" "$(cut -f1-5 <<<"$load")" "$row" \
    "$(cut -f6 <<<"$load")" "${TARGET_RSS0[$target]:-NA}" "$mem" "$sys" "$user" "$([[ -n $i0 && -n $i1 ]] && echo $((i1 - i0)) || echo NA)" \
    "$([[ -n $s0 && -n $s1 ]] && echo $((s1 - s0)) || echo NA)" \
    "$([[ -n $d0 && -n $d1 ]] && echo $((d1 - d0)) || echo NA)" "$(stolen_and_softirq_percent "$c0" "$c1")" >>"$RESULTS/results.tsv"
  tail -1 "$RESULTS/results.tsv" | awk -F'\t' '{
    printf "  round %s %-8s %-4s %10s req/s  p50 %6s ms  p99 %6s ms  errs %s/%s  proxy %5s%%  backend %5s%%  cpu0 %5s%%  cpu1 %5s%%  foreign %5s%%  stolen %4s%% %4s%%  softirq0 %4s%%  peak RSS %s kB%s%s\n",
      $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $25, $26, $27, $18,
      ($19 != "NA" && $15 > 0 ? sprintf("  syscalls/req %.2f", $19 / $15) : ""), ($13 > 5 || $25 > 5 || $26 > 5 ? "  << NOISY" : "") }' >&2
}

# ---------------------------------------------------------------- summary

summarize() {
  summary_python "$RESULTS/results.tsv" "$CONNS" <<'EOF'
import glob, os, sys
from summary import fmt, med, num, print_paired, read_rows, warn_skewed
rows = read_rows(sys.argv[1])
conns = int(sys.argv[2])
groups = {}
for r in rows:
    groups.setdefault((r["target"], r["workload"]), []).append(r)
order = ["direct", "geolb", "geolb-b", "haproxy", "nginx"]
targets = sorted({t for t, _ in groups}, key=lambda t: order.index(t) if t in order else 99)
workloads = [w for w in ("tiny", "1k", "64k", "upload", "chunked") if any(w == k[1] for k in groups)]
# The proxy's CPU time per request split in two: where the kernel's part
# is as large as another proxy's whole, no user-space work can overtake
# that proxy by much.
def us_per_req(r, user):
    rps, cpu, share = num(r["rps"]), num(r["proxy_cpu"]), num(r["proxy_user_share"])
    if not rps or cpu is None or share is None: return None
    part = share if user else 100 - share
    return cpu / 100 * part / 100 / rps * 1e6
summary = {}
for key, rs in groups.items():
    s = {f: med(num(r[f]) for r in rs) for f in ("rps", "p50_ms", "p99_ms", "proxy_cpu", "cpu0", "cpu1", "foreign_cpu", "stolen_cpu0", "softirq_cpu0", "proxy_user_share")}
    s["errors"] = sum(int(num(r["non2xx"]) or 0) + int(num(r["sock_err"]) or 0) for r in rs)
    s["n"] = sum(1 for r in rs if num(r["rps"]) is not None)
    hwm = [num(r["hwm_kb"]) for r in rs if num(r["hwm_kb"]) is not None]
    s["peak_mb"] = max(hwm) / 1024 if hwm else None
    rss0 = num(rs[0]["rss0_kb"])
    s["kb_per_conn"] = (max(hwm) - rss0) / conns if hwm and rss0 is not None else None
    per = lambda f: med(num(r[f]) / num(r["requests"]) if num(r[f]) is not None and num(r["requests"]) else None for r in rs)
    s["sys_per_req"], s["cs_per_req"] = per("syscalls"), per("ctx_switches")
    s["ipis_per_req"] = per("ipis_load")
    s["segments_per_req"] = per("tcp_segments")
    s["delayed_acks_per_req"] = per("delayed_acks")
    s["user_us"] = med(us_per_req(r, True) for r in rs)
    s["kernel_us"] = med(us_per_req(r, False) for r in rs)
    summary[key] = s
perf = any(s["sys_per_req"] is not None for s in summary.values())
print("| target | workload | runs | req/s (median) | vs nginx | vs haproxy | p50 ms | p99 ms | errors | proxy CPU % | req/s per proxy core | CPU0 busy % | CPU1 busy % | foreign CPU % | CPU0 stolen % | CPU0 softirq % | peak RSS MiB | KiB per connection | proxy user-space share of its CPU % | user µs per request | kernel µs per request | wake-up IPIs to the load CPU per request | TCP segments per request (whole machine) | delayed ACKs per request (whole machine) |"
      + (" syscalls per request | context switches per request |" if perf else ""))
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if perf else ""))
for w in workloads:
    for t in targets:
        s = summary.get((t, w))
        if not s: continue
        def ratio(ref):
            r = summary.get((ref, w))
            return s["rps"] / r["rps"] if r and r["rps"] and s["rps"] is not None else None
        per_core = s["rps"] / (s["proxy_cpu"] / 100) if s["rps"] and s["proxy_cpu"] else None
        print(f"| {t} | {w} | {s['n']} | {fmt(s['rps'], ',.0f')} | {fmt(ratio('nginx'), '.2f')} | "
              f"{fmt(ratio('haproxy'), '.2f')} | {fmt(s['p50_ms'], '.3f')} | {fmt(s['p99_ms'], '.3f')} | {s['errors']} | "
              f"{fmt(s['proxy_cpu'], '.0f')} | {fmt(per_core, ',.0f')} | {fmt(s['cpu0'], '.0f')} | {fmt(s['cpu1'], '.0f')} | {fmt(s['foreign_cpu'], '.0f')} | {fmt(s['stolen_cpu0'], '.0f')} | {fmt(s['softirq_cpu0'], '.0f')} | "
              f"{fmt(s['peak_mb'], '.1f')} | {fmt(s['kb_per_conn'], '.1f')} | {fmt(s['proxy_user_share'], '.0f')} | "
              f"{fmt(s['user_us'], '.2f')} | {fmt(s['kernel_us'], '.2f')} | {fmt(s['ipis_per_req'], '.3f')} | {fmt(s['segments_per_req'], '.2f')} | {fmt(s['delayed_acks_per_req'], '.3f')} |"
              + (f" {fmt(s['sys_per_req'], '.2f')} | {fmt(s['cs_per_req'], '.3f')} |" if perf else ""))
print_paired(rows, targets, workloads)
if perf:
    # Each kind of system call per request, summed over the rounds.
    raw = os.path.join(os.path.dirname(sys.argv[1]), "raw")
    print("\nSystem calls per request, by kind (perf stat on syscalls:sys_enter_* tracepoints, all rounds;"
          " other = raw_syscalls:sys_enter minus the kinds counted one by one):\n")
    for w in workloads:
        for t in targets:
            rs = [r for r in groups.get((t, w), []) if num(r["requests"])]
            counts, reqs = {}, sum(num(r["requests"]) for r in rs)
            for r in rs:
                for f in glob.glob(os.path.join(raw, f"r{r['round']}-{t}-{w}.perf")):
                    for line in open(f):
                        c = line.split(",")
                        if len(c) > 2 and c[2].startswith("syscalls:sys_enter_") and num(c[0]):
                            name = c[2][len("syscalls:sys_enter_"):]
                            counts[name] = counts.get(name, 0) + num(c[0])
            if counts and reqs:
                total = sum(num(r["syscalls"]) or 0 for r in rs)
                top = [kv for kv in sorted(counts.items(), key=lambda kv: -kv[1]) if kv[1] / reqs >= 0.005][:8]
                top.append(("other", total - sum(v for _, v in top)))
                print(f"- {t} {w}: " + ", ".join(f"{k} {v / reqs:.2f}" for k, v in top))
warn_skewed(rows, sys.argv[1], "those runs' proxy had less of a core; compare req/s per proxy core, or rerun")
EOF
}

# ---------------------------------------------------------------- main

preflight() {
  local c
  for c in haproxy nginx wrk taskset python3 curl ps; do
    command -v "$c" >/dev/null || die "$c not found (apt-get install -y haproxy nginx-light wrk)"
  done
  case $CLIENT in
    h1) SCHEME=http; LOADGEN=wrk ;;
    h2) SCHEME=https; LOADGEN=h2load
        command -v h2load >/dev/null || die "h2load not found (apt-get install -y nghttp2-client)"
        command -v openssl >/dev/null || die "openssl not found" ;;
    h2c) SCHEME=http; LOADGEN=h2load
        command -v h2load >/dev/null || die "h2load not found (apt-get install -y nghttp2-client)" ;;
    *) die "CLIENT=$CLIENT: h1, h2 or h2c" ;;
  esac
  if ((PERF_SYSCALLS || PERF_RECORD)); then
    command -v perf >/dev/null || die "perf not found (apt-get install -y linux-perf)"
  fi
  if ((PERF_SYSCALLS)); then
    perf stat -e raw_syscalls:sys_enter -o /dev/null true 2>/dev/null \
      || die "perf cannot count syscall tracepoints here (kernel.perf_event_paranoid, tracefs)"
  fi
  (($(nproc --all) >= 2)) || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
  ((ROUNDS >= 1 && DURATION >= 1 && WARMUP >= 0)) || die "bad ROUNDS/DURATION/WARMUP"
  [[ $PACE_MS =~ ^[0-9]+$ ]] || die "PACE_MS=$PACE_MS: a whole number of milliseconds"
  ((PACE_MS == 0)) || [[ $CLIENT == h1 ]] || die "PACE_MS is for CLIENT=h1 (wrk's delay())"
  HZ=$(getconf CLK_TCK)
}


write_env() {
  {
    echo "date: $(date -Is)"
    echo "command: PROXIES='$PROXIES' CLIENT=$CLIENT REQUEST=${REQUEST:-plain} SAME_FIELDS=$SAME_FIELDS WORKLOADS='${WORKLOADS[*]}' H2_STREAMS=$H2_STREAMS PACE_MS=$PACE_MS PERF_SYSCALLS=$PERF_SYSCALLS PERF_RECORD=$PERF_RECORD BACKEND_PROTO=$BACKEND_PROTO BASELINE=$BASELINE ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS WAIT_QUIET=$WAIT_QUIET GEOLB=$GEOLB GEOLB_B=${GEOLB_B:-} LISTENER='${LISTENER:-}' LISTENER_B='${LISTENER_B-${LISTENER:-}}' $0"
    echo "kernel: $(uname -r)  cpus: $(nproc --all)  model: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "haproxy: $(haproxy -v 2>&1 | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "wrk: $(wrk --version 2>&1 | head -1)"
    ((H2LOAD)) && echo "h2load: $(h2load --version 2>&1 | head -1); openssl: $(openssl version)"
    ((PERF_SYSCALLS || PERF_RECORD)) && echo "perf: $(perf --version 2>&1)"
    [[ -x $GEOLB ]] && echo "geolb: $GEOLB ($(stat -c '%y' "$GEOLB"))"
    [[ -n ${GEOLB_B:-} && -x $GEOLB_B ]] && echo "geolb-b: $GEOLB_B ($(stat -c '%y' "$GEOLB_B"))"
    echo "loadavg: $(cat /proc/loadavg)"
  } >"$RESULTS/env.txt"
}

main() {
  preflight
  RESULTS=${RESULTS_DIR:-$(mktemp -d /tmp/geolb-http-bench.XXXXXX)}
  mkdir -p "$RESULTS/raw" "$RESULTS/logs" "$RESULTS/configs"
  WORK=$(mktemp -d /tmp/geolb-bench-work.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  log "results: $RESULTS"
  write_env
  idle_check

  local ports
  read -ra ports <<<"$(free_ports 7)"
  BACKEND_PORTS=("${ports[@]:0:3}")
  TARGET_PORT[geolb]=${ports[3]}; TARGET_PORT[haproxy]=${ports[4]}; TARGET_PORT[nginx]=${ports[5]}
  TARGET_PORT[geolb-b]=${ports[6]}
  TARGET_PORT[direct]=${BACKEND_PORTS[0]}

  start_backends
  [[ $CLIENT == h2 ]] && make_cert
  # wrk speaks cleartext HTTP/1.1 only: no direct baseline for tls/h2c
  # backends, nor for HTTP/2 clients (the backends speak HTTP/1.1).
  ((BASELINE)) && [[ $BACKEND_PROTO == http1 && $CLIENT == h1 ]] && TARGETS+=(direct)
  local name
  for name in $PROXIES; do
    if start_proxy "$name" "${TARGET_PORT[$name]}" && sanity_check "$name"; then
      TARGETS+=("$name")
      TARGET_RSS0[$name]=$(mem_kb "${TARGET_PID[$name]}" $(children_of "${TARGET_PID[$name]}") | cut -f1)
    elif [[ -n ${TARGET_PID[$name]:-} ]]; then
      stop_pids "${TARGET_PID[$name]}"; forget_pid "${TARGET_PID[$name]}"   # skipped: free CPU 0
    fi
  done
  cp "$WORK"/*.conf "$WORK"/*.cfg "$WORK"/*.toml "$RESULTS/configs/" 2>/dev/null
  ((${#TARGETS[@]})) || die "nothing to measure"
  log "targets: ${TARGETS[*]}; ${ROUNDS} rounds x ${#WORKLOADS[@]} workloads x ${DURATION}s" \
      "(~$(( (ROUNDS * DURATION + WARMUP) * ${#TARGETS[@]} * ${#WORKLOADS[@]} ))s)"

  local t wl round i n=${#TARGETS[@]}
  if ((WARMUP > 0)); then
    for t in "${TARGETS[@]}"; do
      for wl in "${WORKLOADS[@]}"; do
        wl_args "$wl"
        if ((H2LOAD)); then
          run_h2load "$WARMUP" "$RESULTS/raw/warmup-$t-$wl.h2load" "$SCHEME://127.0.0.1:${TARGET_PORT[$t]}${WL_PATH[$wl]}" "${WL_ARGS[@]}"
          rm -f "$RESULTS/raw/warmup-$t-$wl.h2load.log"
        else
          run_wrk "$WARMUP" "$RESULTS/raw/warmup-$t-$wl.wrk" -c"$CONNS" "${WL_ARGS[@]}" "$SCHEME://127.0.0.1:${TARGET_PORT[$t]}${WL_PATH[$wl]}"
        fi
      done
    done
    log "warm-up done"
  fi

  printf 'round\ttarget\tworkload\trps\tp50_ms\tp99_ms\tnon2xx\tsock_err\tproxy_cpu\tbackend_cpu\tcpu0\tcpu1\tforeign_cpu\telapsed_s\trequests\trss0_kb\trss_kb\thwm_kb\tsyscalls\tctx_switches\tproxy_user_share\tipis_load\ttcp_segments\tdelayed_acks\tstolen_cpu0\tstolen_cpu1\tsoftirq_cpu0\n' >"$RESULTS/results.tsv"
  for ((round = 1; round <= ROUNDS; round++)); do
    for wl in "${WORKLOADS[@]}"; do
      for ((i = 0; i < n; i++)); do            # rotate the order each round
        t=${TARGETS[(i + round - 1) % n]}
        measure "$round" "$t" "$wl"
      done
    done
  done

  summarize | tee "$RESULTS/summary.md"
  if ((PERF_RECORD)); then
    echo | tee -a "$RESULTS/summary.md"
    python3 "$BENCHES_DIR/profile_per_request.py" "$RESULTS" "$(profile_seconds)" | tee -a "$RESULTS/summary.md"
  fi
  cat >>"$RESULTS/summary.md" <<EOF

Median over $ROUNDS round(s) of ${DURATION}s, $( ((H2LOAD)) && echo "h2load -t1 -c$CONNS -m$H2_STREAMS $([[ $CLIENT == h2 ]] && echo "over TLS 1.3" || echo "over cleartext, by prior knowledge") (HTTP/2)" || echo "wrk -t1 -c$CONNS$( ((PACE_MS)) && echo ", each connection waiting ${PACE_MS} ms after each answer")") on CPU $LOAD_CPU with the backends; proxy on CPU $PROXY_CPU.
"direct" = wrk straight to one backend (no proxy). Errors = non-2xx/3xx + socket errors, summed over rounds.
Proxy CPU % = utime+stime of the proxy processes (softirq time may be counted only in CPU0 busy %).
Proxy user-space share = utime / (utime+stime) of the proxy processes: the rest is system time, the kernel's work for it.
User and kernel µs per request = proxy CPU % split by that share, over req/s (softirq work the kernel does outside the proxy's system time is in neither).
Foreign CPU % = CPU used by processes this script did not start (any CPU); above 5 the run is skewed.
CPU0 stolen % = of CPU 0's time, the share the hypervisor gave to other machines (steal in /proc/stat): the proxy could not run then.
CPU0 softirq % = of CPU 0's time, the kernel's network work in softirq (softirq in /proc/stat), most of it TCP over loopback; a tick of it that interrupted the proxy is in proxy CPU % too, one on an otherwise idle CPU 0 is not.
Peak RSS = the largest VmHWM after a run (nginx: master + worker); KiB per connection = (peak RSS - VmRSS before the warm-up) / $CONNS.
EOF
  log "raw results: $RESULTS (results.tsv, summary.md, raw/*.wrk, configs/, logs/, env.txt)"
}

main "$@"
