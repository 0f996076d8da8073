#!/usr/bin/env bash
# Memory per idle client connection (run by hand, never in CI): geolb beside
# HAProxy and nginx, each holding COUNT idle connections of one kind.
#
# Layout (2-core machine):
#   CPU 0: the proxy under test, one worker (geolb worker_threads=1,
#          haproxy nbthread 1, nginx worker_processes 1)
#   CPU 1: the clients and the backends (benches/idle_memory.py)
# Each proxy listens four times: http, https (one self-signed ECDSA P-256
# certificate, as benches/tls.sh makes it), h2 (the same, ALPN h2) and tcp. Timeouts are 10 min, so
# nothing closes while measuring. For each proxy and kind, the proxy is
# started afresh, warmed up (10 connections of the kind, one request each,
# then closed: lazy state such as TLS and backend pools in place), its
# memory read, then COUNT connections of the kind opened and held, and its
# memory read again:
#   http   one keep-alive request answered, then idle
#   https  the TLS 1.3 handshake and one request answered, then idle
#   h2     the same with ALPN h2: HTTP/2's preface and SETTINGS, one
#          request (stream 1) answered, then idle
#   tcp    connected through to the backend (its greeting byte arrived),
#          then idle; the backend holds its side open
# Memory is the sum over the proxy's processes (nginx: master and worker)
# of VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup); per
# connection is the increase divided by the connections held. For tcp that
# includes the proxy's backend connection.
# Descriptors: a tcp connection takes two in the proxy, and HAProxy
# reserves two per connection of any kind (maxconn), so where the
# open-file hard limit is low (20,000 in some containers, without
# CAP_SYS_RESOURCE to raise it) those hold (limit - 1000) / 2 instead of
# COUNT; the table says how many each row held.
#
# Environment:
#   PROXIES="geolb haproxy nginx"  proxies to measure (any subset, any order)
#   COUNT=10000     connections of each kind
#   KINDS="http https h2 tcp"  the kinds measured (every proxy still listens for all four)
#   SETTLE=2        seconds after the last connection before reading memory
#   GEOLB=/work/main/target/release/geolb
#   SPLICE=         true / false: geolb's tcp listener gets `splice =` that
#                   (empty: the binary's default)
#   HUGE_PAGES=     true / false: geolb's `[runtime] huge_pages` (empty: its
#                   default, true): on huge pages, all of a buffer the heap
#                   gave is resident, touched or not
#   RESULTS_DIR=    where results go (default: a new /tmp/geolb-idle-bench.XXXXXX)
#
# Requires: haproxy, nginx (with the stream module, Debian
# libnginx-mod-stream, for its tcp row), openssl, python3, taskset; an
# open-file hard limit of 2 * COUNT + 1000 for every row to hold COUNT.
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROXIES=${PROXIES:-"geolb haproxy nginx"}
COUNT=${COUNT:-10000}
SETTLE=${SETTLE:-2}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
SPLICE=${SPLICE:-}
HUGE_PAGES=${HUGE_PAGES:-}
CLIENT=$(dirname "${BASH_SOURCE[0]}")/idle_memory.py
PROXY_CPU=0
LOAD_CPU=1
read -ra MEASURED_KINDS <<<"${KINDS:-http https h2 tcp}"
KINDS=(http https h2 tcp)

declare -a PIDS=()          # every long-running process this script started
declare -A TARGET_PID=()    # proxy -> pid
declare -A TARGET_PORT=()   # "proxy kind" -> port

# As many descriptors as allowed: 10,000 TCP connections need 20,000 in
# the proxy, more than some containers' hard limit (then fewer are held).
ulimit -n "$(ulimit -Hn)" || die "cannot raise the open-file limit"
FD_LIMIT=$(ulimit -n)
[[ $FD_LIMIT == unlimited ]] && FD_LIMIT=1048576
WORK=$(mktemp -d /tmp/geolb-idle-work.XXXXXX)
RESULTS=${RESULTS_DIR:-$(mktemp -d /tmp/geolb-idle-bench.XXXXXX)}
mkdir -p "$RESULTS/logs" "$RESULTS/configs"
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- configs

write_geolb_conf() {
  local kind
  {
    cat <<EOF
[runtime]
worker_threads = 1
${HUGE_PAGES:+huge_pages = $HUGE_PAGES}
# Not the machine's /var/lib/geolb, whose overrides would apply.
state_dir = "$WORK/geolb-state"
shutdown_grace = "1s"

[[pool]]
name = "http"
backends = [{ addr = "127.0.0.1:$BACKEND_HTTP" }]

[[pool]]
name = "tcp"
backends = [{ addr = "127.0.0.1:$BACKEND_TCP" }]
EOF
    for kind in "${KINDS[@]}"; do
      cat <<EOF

[[listener]]
name = "$kind"
bind = "127.0.0.1:${TARGET_PORT[geolb $kind]}"
protocol = "$([[ $kind == h2 ]] && echo https || echo "$kind")"
pool = "$([[ $kind == tcp ]] && echo tcp || echo http)"
timeouts = { idle = "600s" }
EOF
      [[ $kind == https || $kind == h2 ]] && echo "tls = [{ cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }]"
      [[ $kind == tcp && -n $SPLICE ]] && echo "splice = $SPLICE"
    done
  } >"$WORK/geolb.toml"
  cp "$WORK/geolb.toml" "$RESULTS/configs/"
}

write_haproxy_conf() {
  cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN

defaults
    no log
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s

frontend http
    mode http
    option http-keep-alive
    bind 127.0.0.1:${TARGET_PORT[haproxy http]}
    default_backend http

frontend https
    mode http
    option http-keep-alive
    bind 127.0.0.1:${TARGET_PORT[haproxy https]} ssl crt $WORK/cert-key.pem alpn http/1.1
    default_backend http

frontend h2
    mode http
    option http-keep-alive
    bind 127.0.0.1:${TARGET_PORT[haproxy h2]} ssl crt $WORK/cert-key.pem alpn h2,http/1.1
    default_backend http

frontend tcp
    mode tcp
    bind 127.0.0.1:${TARGET_PORT[haproxy tcp]}
    default_backend tcp

backend http
    mode http
    http-reuse always
    server b1 127.0.0.1:$BACKEND_HTTP

backend tcp
    mode tcp
    server b1 127.0.0.1:$BACKEND_TCP
EOF
  cp "$WORK/haproxy.cfg" "$RESULTS/configs/"
}

NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so

write_nginx_proxy_conf() {
  {
    [[ -f $NGINX_STREAM ]] && echo "load_module $NGINX_STREAM;"
    NGINX_WORKER_CONNECTIONS=$((2 * COUNT + 100)) nginx_common nginx
    echo "worker_rlimit_nofile $FD_LIMIT;"
    echo "http {"
    echo "    access_log off;"
    nginx_http_common nginx | sed 's/keepalive_timeout 65s/keepalive_timeout 600s/'
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$BACKEND_HTTP;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:${TARGET_PORT[nginx http]} backlog=4096;
        listen 127.0.0.1:${TARGET_PORT[nginx https]} ssl backlog=4096;
        listen 127.0.0.1:${TARGET_PORT[nginx h2]} ssl http2 backlog=4096;
        http2_idle_timeout 600s;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    if [[ -f $NGINX_STREAM ]]; then
      cat <<EOF
stream {
    server {
        listen 127.0.0.1:${TARGET_PORT[nginx tcp]} backlog=4096;
        proxy_pass 127.0.0.1:$BACKEND_TCP;
        proxy_timeout 600s;
    }
}
EOF
    fi
  } >"$WORK/nginx.conf"
  cp "$WORK/nginx.conf" "$RESULTS/configs/"
}

# ---------------------------------------------------------------- measuring

# mem_of PID : "RSS_KIB PSS_KIB" summed over PID and its children.
mem_of() {
  local p
  # shellcheck disable=SC2046  # one pid per word
  for p in "$1" $(children_of "$1"); do
    awk '/^VmRSS:/ { print "rss", $2 }' "/proc/$p/status"
    awk '/^Pss:/ { print "pss", $2 }' "/proc/$p/smaps_rollup"
  done | awk '{ s[$1] += $2 } END { print s["rss"] + 0, s["pss"] + 0 }'
}

# hold KIND PORT N : a client holding N idle connections, on LOAD_CPU; sets
# HOLD_PID once all are open (deadline 180 s), fails otherwise.
hold() {
  local kind=$1 port=$2 n=$3 out="$WORK/hold-$1-$2-$3.out" i
  start_bg "$LOAD_CPU" "$out" python3 "$CLIENT" hold "$kind" "$port" "$n"
  HOLD_PID=$STARTED_PID
  for ((i = 0; i < 1800; i++)); do
    grep -qs '^ready' "$out" && return 0
    grep -qs '^failed' "$out" && break
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "  $kind: $(tail -2 "$out" | tr '\n' ' ')"
  return 1
}

# count_for NAME KIND : how many connections to hold. Each needs one
# descriptor in the proxy, two for tcp (the backend's) and two in HAProxy
# whatever the kind (it reserves a backend's for each of its maxconn), and
# the open-file limit caps them all.
count_for() {
  local n=$COUNT
  if [[ $2 == tcp || $1 == haproxy ]]; then
    ((n > (FD_LIMIT - 1000) / 2)) && n=$(((FD_LIMIT - 1000) / 2))
  fi
  ((n > FD_LIMIT - 1000)) && n=$((FD_LIMIT - 1000))
  echo "$n"
}

# measure NAME KIND : one row of results.tsv: NAME started afresh, warmed
# up (10 connections of KIND, one request each, closed), then holding
# count_for connections of KIND.
measure() {
  local name=$1 kind=$2 port=${TARGET_PORT[$1 $2]} pid before after n holder="" start
  n=$(count_for "$name" "$kind")
  HAPROXY_MAXCONN=$((n + 100))
  start_proxy "$name" "$port" || return 0
  pid=${TARGET_PID[$name]}
  if hold "$kind" "$port" 10; then
    stop_pids "$HOLD_PID"; forget_pid "$HOLD_PID"
    sleep "$SETTLE"
    before=$(mem_of "$pid")
    start=$SECONDS
    if hold "$kind" "$port" "$n"; then
      holder=$HOLD_PID
      sleep "$SETTLE"
      after=$(mem_of "$pid")
      printf '%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\n' "$name" "$kind" "$n" \
        "${before% *}" "${after% *}" "${before#* }" "${after#* }" \
        $(((${after% *} - ${before% *}) * 1024 / n)) \
        $(((${after#* } - ${before#* }) * 1024 / n)) >>"$RESULTS/results.tsv"
      log "  $name $kind: $n open in $((SECONDS - start)) s: RSS ${before% *} -> ${after% *} KiB, $(tail -1 "$RESULTS/results.tsv" | cut -f8) B per connection"
    else
      log "  $name $kind: could not hold $n connections"
    fi
  else
    log "SKIP $name $kind: warm-up failed"
  fi
  [[ -n $holder ]] && { stop_pids "$holder"; forget_pid "$holder"; }
  stop_pids "$pid"; forget_pid "$pid"
}

# ---------------------------------------------------------------- main

log "results in $RESULTS"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -r), $(nproc) CPUs"
  echo "geolb: $GEOLB${SPLICE:+ (splice = $SPLICE)}${HUGE_PAGES:+ (huge_pages = $HUGE_PAGES)}"
  echo "haproxy: $(haproxy -v 2>/dev/null | head -1)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "COUNT=$COUNT SETTLE=$SETTLE open-file limit $FD_LIMIT"
} >"$RESULTS/env.txt"
make_cert
read -r BACKEND_HTTP BACKEND_TCP p1 p2 p3 p4 p5 p6 p7 p8 p9 p10 p11 p12 <<<"$(free_ports 14)"
TARGET_PORT=(["geolb http"]=$p1 ["geolb https"]=$p2 ["geolb tcp"]=$p3 ["geolb h2"]=$p10
  ["haproxy http"]=$p4 ["haproxy https"]=$p5 ["haproxy tcp"]=$p6 ["haproxy h2"]=$p11
  ["nginx http"]=$p7 ["nginx https"]=$p8 ["nginx tcp"]=$p9 ["nginx h2"]=$p12)
start_bg "$LOAD_CPU" "$RESULTS/logs/backend.log" python3 "$CLIENT" backend "$BACKEND_HTTP" "$BACKEND_TCP"
BACKEND_PID=$STARTED_PID
wait_port "$BACKEND_TCP" "$BACKEND_PID" || die "the backend did not start: $(tail -3 "$RESULTS/logs/backend.log")"

printf 'proxy\tkind\tconnections\trss_before_kib\trss_after_kib\tpss_before_kib\tpss_after_kib\trss_bytes_per_conn\tpss_bytes_per_conn\n' >"$RESULTS/results.tsv"
for name in $PROXIES; do
  for kind in "${MEASURED_KINDS[@]}"; do
    if [[ $name == nginx && $kind == tcp && ! -f $NGINX_STREAM ]]; then
      log "SKIP nginx tcp: no stream module ($NGINX_STREAM)"
      continue
    fi
    measure "$name" "$kind"
  done
done

echo
column -t -s $'\t' "$RESULTS/results.tsv"
# Ratios against geolb, per kind (Pss per connection).
awk -F'\t' 'NR > 1 { pss[$1 " " $2] = $9; kinds[$2] = 1; names[$1] = 1 }
  END {
    for (k in kinds) for (n in names) if (n != "geolb" && pss["geolb " k] > 0 && pss[n " " k] > 0)
      printf "%s: geolb / %s = %.2f\n", k, n, pss["geolb " k] / pss[n " " k]
  }' "$RESULTS/results.tsv" | sort
