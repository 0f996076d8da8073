#!/usr/bin/env bash
# TCP (L4) proxy benchmark: geolb's tcp listener beside HAProxy `mode tcp`
# and nginx `stream` (run by hand, never in CI).
#
# Layout (2-core machine):
#   CPU 0: the proxy under test, one worker (geolb worker_threads=1,
#          haproxy nbthread 1, nginx worker_processes 1)
#   CPU 1: the load generators (iperf3 -c, wrk -t1) and the backends
#          (iperf3 -s, one nginx returning a tiny body)
# Every proxy has two TCP listeners: one forwarding to the iperf3 server,
# one forwarding to the nginx backend.
# Workloads:
#   iperf  bulk throughput: iperf3 -c (one stream, client -> server) for
#          DURATION s, Gbit/s sender/receiver
#   conn   new-connection rate: wrk -t1 -c32 -H "Connection: close", every
#          request on a new TCP connection through the proxy (and a new
#          proxy -> backend connection), connections/s = requests/s
# Rounds are interleaved: every round runs every target once per workload,
# the order of the targets rotating from round to round.
#
# Environment:
#   PROXIES="geolb haproxy nginx"  proxies to measure (any subset, any order);
#                   geolb-b is a second geolb (GEOLB_B, SPLICE_B) in the same
#                   rounds, e.g. splicing against copying on one machine
#                   at one time: PROXIES="geolb geolb-b haproxy nginx"
#                   SPLICE=true SPLICE_B=false
#   BASELINE=1      also measure without a proxy ("direct")
#   WORKLOADS="iperf conn"
#   ROUNDS=3        interleaved rounds (the tables show the median; the last,
#                   each round's ratios and their interval: 6 or more)
#   DURATION=10     seconds per measured run
#   WARMUP=2        seconds of warm-up per target and workload, before round 1
#   CONNS=32        wrk connections for the conn workload
#   WAIT_QUIET=0    before each run, wait up to this many seconds for other
#                   processes to use < 10% of a core (0 = don't wait)
#   NOISY_RETRIES=0 measure a run again (up to this many times) when other
#                   processes used > 5% of a core during it; the noisy
#                   attempts go to discarded.tsv
#   GEOLB=/work/main/target/release/geolb
#   SPLICE=         true / false: geolb's tcp listeners get `splice =` that
#                   (empty: the binary's default; builds before the key
#                   existed refuse it)
#   GEOLB_B=        geolb-b's binary (default: GEOLB)
#   SPLICE_B=       geolb-b's `splice =` (default: SPLICE)
#   PERF_LOAD=0     1: perf record -C 1 (cpu-clock) through the middle of each
#                   iperf run; the share of CPU 1's samples in _copy_to_iter
#                   (iperf3 -s copying what it receives to user space) goes
#                   in results.tsv and the table, per Gbit/s received: how
#                   dear the proxy makes the receiver's copy
#   RESULTS_DIR=    where raw results go (default: a new /tmp/geolb-tcp-bench.XXXXXX)
#
# Requires: iperf3, haproxy, nginx with the stream module (Debian:
# libnginx-mod-stream), wrk, taskset, python3, curl.
#   apt-get install -y iperf3 haproxy nginx-light libnginx-mod-stream wrk
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROXIES=${PROXIES:-"geolb haproxy nginx"}
BASELINE=${BASELINE:-1}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
WAIT_QUIET=${WAIT_QUIET:-0}
NOISY_RETRIES=${NOISY_RETRIES:-0}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
SPLICE=${SPLICE:-}
GEOLB_B=${GEOLB_B:-$GEOLB}
SPLICE_B=${SPLICE_B:-$SPLICE}
SECOND_GEOLB=1   # lib.sh's start_proxy: geolb-b runs here
PERF_LOAD=${PERF_LOAD:-0}
read -ra WORKLOADS <<<"${WORKLOADS:-iperf conn}"
PROXY_CPU=0
LOAD_CPU=1

declare -a PIDS=()          # every long-running process this script started
declare -A TARGET_PID=()    # target -> pid of the proxy (empty for direct)
declare -A IPERF_PORT=()    # target -> port iperf3 -c connects to
declare -A HTTP_PORT=()     # target -> port wrk connects to
declare -a TARGETS=()       # targets that started and passed the sanity check
BACKEND_PID=""
IPERF_PID=""
PROXY_WAIT=wait_listen   # start_proxy: never connect to the iperf3 port

# ---------------------------------------------------------------- lifecycle

# listening PORT : something listens on 127.0.0.1:PORT (from /proc/net/tcp,
# without connecting: a stray connection would upset the iperf3 server).
listening() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p="0100007F:$hex" '$2 == p && $4 == "0A" { f = 1 } END { exit !f }' /proc/net/tcp
}

# wait_listen PORT PID : until PORT is listening (deadline 10 s), or PID dies.
wait_listen() { wait_until "$2" 100 0.1 listening "$1"; }


# ---------------------------------------------------------------- configs

write_backend_conf() {   # tiny body; Connection: close from the client closes
  {
    nginx_common backend
    echo "http {"
    echo "    access_log off;"
    nginx_http_common backend
    cat <<EOF
    default_type text/plain;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        location = / { return 200 "ok\n"; }
        location /   { return 404; }
    }
}
EOF
  } >"$WORK/backend.conf"
}

# The stream module: built in, or a dynamic module to load (Debian's
# libnginx-mod-stream). Sets STREAM_LOAD to the load_module line (or empty);
# returns non-zero when nginx has no stream module at all.
find_stream_module() {
  local v dir f
  v=$(nginx -V 2>&1)
  STREAM_LOAD=""
  if grep -q -- '--with-stream=dynamic' <<<"$v"; then
    dir=$(grep -o -- '--modules-path=[^ ]*' <<<"$v" | cut -d= -f2)
    for f in "${dir:-/usr/lib/nginx/modules}/ngx_stream_module.so" /usr/lib/nginx/modules/ngx_stream_module.so; do
      [[ -f $f ]] && { STREAM_LOAD="load_module $f;"; return 0; }
    done
    return 1
  fi
  grep -q -- '--with-stream\b' <<<"$v"
}

write_nginx_proxy_conf() {   # nginx stream: default proxy_buffer_size 16k
  {
    echo "$STREAM_LOAD"
    nginx_common nginx
    cat <<EOF
stream {
    server {
        listen 127.0.0.1:${IPERF_PORT[nginx]} backlog=4096;
        proxy_pass 127.0.0.1:$IPERF_SERVER_PORT;
    }
    server {
        listen 127.0.0.1:${HTTP_PORT[nginx]} backlog=4096;
        proxy_pass 127.0.0.1:$BACKEND_PORT;
    }
}
EOF
  } >"$WORK/nginx.conf"
}

write_haproxy_conf() {   # mode tcp, default buffers (16k), no splicing
  cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000

defaults
    mode tcp
    no log
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend iperf
    bind 127.0.0.1:${IPERF_PORT[haproxy]}
    default_backend iperf

backend iperf
    server s1 127.0.0.1:$IPERF_SERVER_PORT

frontend http
    bind 127.0.0.1:${HTTP_PORT[haproxy]}
    default_backend http

backend http
    server b1 127.0.0.1:$BACKEND_PORT
EOF
}

write_geolb_conf() {   # NAME: geolb or geolb-b, each on its own ports
  local name=$1 splice=$SPLICE
  [[ $name == geolb-b ]] && splice=$SPLICE_B
  cat >"$WORK/$name.toml" <<EOF
[runtime]
worker_threads = 1
# Not the machine's /var/lib/geolb, whose overrides would apply.
state_dir = "$WORK/$name-state"
shutdown_grace = "1s"

[[pool]]
name = "iperf"
backends = [{ addr = "127.0.0.1:$IPERF_SERVER_PORT" }]

[[pool]]
name = "http"
backends = [{ addr = "127.0.0.1:$BACKEND_PORT" }]

[[listener]]
name = "iperf"
bind = "127.0.0.1:${IPERF_PORT[$name]}"
protocol = "tcp"
pool = "iperf"
${splice:+splice = $splice}

[[listener]]
name = "http"
bind = "127.0.0.1:${HTTP_PORT[$name]}"
protocol = "tcp"
pool = "http"
${splice:+splice = $splice}
EOF
}

# ---------------------------------------------------------------- processes

start_backends() {
  write_backend_conf
  nginx -t -q -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf" \
    || die "backend nginx config rejected (see $WORK/backend.conf)"
  start_bg "$LOAD_CPU" "$RESULTS/logs/backend.log" \
    nginx -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf"
  BACKEND_PID=$STARTED_PID
  wait_listen "$BACKEND_PORT" "$BACKEND_PID" || die "backend nginx did not listen on $BACKEND_PORT ($(tail -3 "$WORK/backend-error.log" 2>/dev/null))"
  log "backend: nginx pid $BACKEND_PID on CPU $LOAD_CPU, port $BACKEND_PORT"

  start_bg "$LOAD_CPU" "$RESULTS/logs/iperf3-server.log" \
    iperf3 -s -B 127.0.0.1 -p "$IPERF_SERVER_PORT" --rcv-timeout 10000
  IPERF_PID=$STARTED_PID
  wait_listen "$IPERF_SERVER_PORT" "$IPERF_PID" || die "iperf3 -s did not listen on $IPERF_SERVER_PORT ($(tail -3 "$RESULTS/logs/iperf3-server.log"))"
  log "backend: iperf3 -s pid $IPERF_PID on CPU $LOAD_CPU, port $IPERF_SERVER_PORT"
}

# nginx_usable : nginx has the stream module (sets STREAM_LOAD).
nginx_usable() {
  find_stream_module || { log "SKIP nginx: no stream module (Debian: apt-get install -y libnginx-mod-stream)"; return 1; }
}

# sanity_check NAME : the http port answers the backend's body over a new
# connection, and a one-second iperf3 run gets data through.
sanity_check() {
  local name=$1 out res
  out=$(curl -s -m 2 -H 'Connection: close' "http://127.0.0.1:${HTTP_PORT[$name]}/") || { log "SKIP $name: GET / failed"; return 1; }
  [[ $out == ok ]] || { log "SKIP $name: GET / answered '${out:0:60}'"; return 1; }
  run_iperf 1 "${IPERF_PORT[$name]}" "$RESULTS/raw/sanity-$name.json"
  res=$(parse_iperf "$RESULTS/raw/sanity-$name.json")
  [[ $res != NA* ]] || { log "SKIP $name: iperf3 through it failed: $(grep -m1 '"error"' "$RESULTS/raw/sanity-$name.json")"; return 1; }
  log "$name: sanity ok (GET / = ok; iperf3 1 s: $(cut -f1 <<<"$res") Gbit/s received)"
}

# ---------------------------------------------------------------- measuring





# Parse iperf3 -J output:
#   recv_gbps  sent_gbps  bytes_received  NA  NA  errors(0)  retransmits
parse_iperf() {
  python3 - "$1" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    if j.get("error"):
        raise ValueError(j["error"])
    s, r = j["end"]["sum_sent"], j["end"]["sum_received"]
    if not r.get("bytes"):
        raise ValueError("nothing received")
    print(f'{r["bits_per_second"] / 1e9:.3f}\t{s["bits_per_second"] / 1e9:.3f}\t{r["bytes"]}\tNA\tNA\t0\t{s.get("retransmits", "NA")}')
except Exception:
    print("NA\tNA\tNA\tNA\tNA\tNA\tNA")
EOF
}

conn_wrk() {   # conn_wrk SECONDS PORT OUTFILE : wrk, a new connection per request
  run_wrk "$1" "$3" -c"$CONNS" -H "Connection: close" "http://127.0.0.1:$2/"
}

run_iperf() {   # run_iperf SECONDS PORT OUTFILE
  run_load "$1" "$3" iperf3 -c 127.0.0.1 -p "$2" -t "$1" -J --connect-timeout 3000
}

# sample_recvq PORT OUTFILE : until killed, every 0.5 s, the largest
# receive queue (bytes) among the sockets on local port PORT (the proxy's
# side of iperf3 -c's connections, or iperf3 -s's for direct): how much
# the sender has put ahead of the proxy, which the window lets grow.
sample_recvq() {
  while kill -0 $$ 2>/dev/null; do   # never outlives the script
    ss -tnH state established "( sport = :$1 )" | awk '{ if ($1 > m) m = $1 } END { print m + 0 }' >>"$2"
    sleep 0.5
  done
}

# load_copy_share PERFDATA : percent of the samples in _copy_to_iter, or NA.
load_copy_share() {
  perf report -i "$1" --no-children --sort sym --stdio 2>/dev/null \
    | awk '/\] _copy_to_iter$/ && !f { sub("%", "", $1); print $1; f = 1 } END { if (!f) print "NA" }'
}

# measure ROUND TARGET WORKLOAD : one run, one row appended to results.tsv.
measure() {
  local round=$1 target=$2 wl=$3 out parsed
  local ppids=() bpids=() p0 p1 b0 b1 c0 c1 f0 f1 t0 t1 row

  ((WAIT_QUIET > 0)) && wait_quiet
  [[ -n ${TARGET_PID[$target]:-} ]] && ppids=("${TARGET_PID[$target]}" $(children_of "${TARGET_PID[$target]}"))
  if [[ $wl == iperf ]]; then
    out="$RESULTS/raw/r${round}-${target}-${wl}.json"; bpids=("$IPERF_PID")
  else
    out="$RESULTS/raw/r${round}-${target}-${wl}.wrk"; bpids=("$BACKEND_PID" $(children_of "$BACKEND_PID"))
  fi

  f0=$(foreign_ticks); p0=$(ticks_of "${ppids[@]}"); b0=$(ticks_of "${bpids[@]}"); c0=$(cpu_snapshot); t0=$(date +%s.%N)
  if [[ $wl == iperf ]]; then
    local sampler perf_pid="" recvq="$out.recvq" perfdata="${out%.json}.perf"
    : >"$recvq"   # a retried run starts its own samples
    sample_recvq "${IPERF_PORT[$target]}" "$recvq" & sampler=$!
    if ((PERF_LOAD && DURATION > 2)); then
      (sleep 1; exec perf record -q -C "$LOAD_CPU" -e cpu-clock -o "$perfdata" -- sleep $((DURATION - 2))) >/dev/null 2>&1 &
      perf_pid=$!
    fi
    run_iperf "$DURATION" "${IPERF_PORT[$target]}" "$out"
    [[ -n $perf_pid ]] && wait "$perf_pid"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  else
    conn_wrk "$DURATION" "${HTTP_PORT[$target]}" "$out"
  fi
  p1=$(ticks_of "${ppids[@]}"); b1=$(ticks_of "${bpids[@]}"); c1=$(cpu_snapshot); t1=$(date +%s.%N); f1=$(foreign_ticks)
  local recvq_mib=NA copy_pct=NA
  if [[ $wl == iperf ]]; then
    parsed=$(parse_iperf "$out")
    recvq_mib=$(awk '$1 > m { m = $1 } END { printf "%.1f", m / 1048576 }' "$recvq")
    ((PERF_LOAD)) && copy_pct=$(load_copy_share "$perfdata")
  else
    parsed=$(parse_wrk "$out" rps NA requests p50 p99 errors NA)
  fi

  row=$(awk -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v b0="$b0" -v b1="$b1" \
            -v has_proxy="${#ppids[@]}" -v c0="$c0" -v c1="$c1" -v f0="$f0" -v f1="$f1" 'BEGIN {
      el = t1 - t0
      split(c0, a, " "); split(c1, b, " ")
      cpu0 = (b[2] - a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
      cpu1 = (b[4] - a[4]) ? 100 * (b[3] - a[3]) / (b[4] - a[4]) : 0
      proxy = has_proxy ? sprintf("%.1f\t%.2f", 100 * (p1 - p0) / hz / el, (p1 - p0) / hz) : "NA\tNA"
      foreign = 100 * (f1 - f0) / hz / el; if (foreign < 0) foreign = 0
      printf "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f", proxy, 100 * (b1 - b0) / hz / el, cpu0, cpu1, foreign, el
    }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$wl" "$parsed" "$row" "$(stolen_and_softirq_percent "$c0" "$c1")" "$recvq_mib" "$copy_pct" >>"$RESULTS/results.tsv"
  tail -1 "$RESULTS/results.tsv" | awk -F'\t' '{
    if ($3 == "iperf") v = sprintf("%7s Gbit/s recv %7s sent  retrans %5s", $4, $5, $10)
    else v = sprintf("%9s conn/s  p50 %6s ms  p99 %6s ms  errs %s", $4, $7, $8, $9)
    printf "  round %s %-8s %-5s %s  proxy %5s%%  backend %5s%%  cpu0 %5s%%  cpu1 %5s%%  foreign %5s%%  stolen %4s%% %4s%%%s\n",
      $1, $2, $3, v, $11, $13, $14, $15, $16, $18, $19, ($16 > 5 || $18 > 5 || $19 > 5 ? "  << NOISY" : "") }' >&2
}

# ---------------------------------------------------------------- summary

summarize() {
  summary_python "$RESULTS/results.tsv" <<'EOF'
import sys
from summary import fmt, med, num, print_paired, read_rows, warn_skewed
rows = read_rows(sys.argv[1])
for r in rows:   # proxy CPU per unit of work, per run
    cpu_s, units = num(r["proxy_cpu_s"]), num(r["units"])
    r["per_unit"] = None
    if cpu_s is not None and units:
        # iperf: CPU-seconds per GB received; conn: CPU-ms per 1000 connections
        r["per_unit"] = cpu_s / (units / 1e9) if r["workload"] == "iperf" else cpu_s * 1e3 / (units / 1e3)
groups = {}
for r in rows:
    groups.setdefault((r["target"], r["workload"]), []).append(r)
order = ["direct", "geolb", "geolb-b", "haproxy", "nginx"]
targets = sorted({t for t, _ in groups}, key=lambda t: order.index(t) if t in order else 99)
summary = {}
for key, rs in groups.items():
    s = {f: med(num(r[f]) for r in rs) for f in ("rate", "sent_gbps", "p50_ms", "p99_ms", "retrans", "proxy_cpu", "cpu0", "cpu1", "foreign_cpu")}
    s["per_unit"] = med(r["per_unit"] for r in rs)
    s["recvq"] = med(num(r["recvq_max_mib"]) for r in rs)
    # CPU 1's share in the receiver's copy to user space, per Gbit/s moved
    s["copy_per_gbit"] = med(num(r["load_copy_pct"]) * num(r["cpu1"]) / 100 / num(r["rate"])
                             for r in rs if None not in (num(r["load_copy_pct"]), num(r["cpu1"])) and num(r["rate"]))
    s["errors"] = sum(int(num(r["errors"]) or 0) for r in rs)
    s["n"] = sum(1 for r in rs if num(r["rate"]) is not None)
    s["failed"] = len(rs) - s["n"]
    summary[key] = s
def ratio(s, ref, w):
    r = summary.get((ref, w))
    return s["rate"] / r["rate"] if r and r["rate"] and s["rate"] is not None else None
if any(w == "iperf" for _, w in groups):
    print("**Throughput** (iperf3, one TCP stream client -> server)\n")
    print("| target | runs | Gbit/s received (median) | Gbit/s sent | vs haproxy | vs nginx | retransmits | proxy CPU % | proxy CPU-s per GB | CPU0 busy % | CPU1 busy % | foreign CPU % | largest receive queue MiB | CPU1 % in the receiver's copy per Gbit/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        s = summary.get((t, "iperf"))
        if not s: continue
        print(f"| {t} | {s['n']}{' (+%d failed)' % s['failed'] if s['failed'] else ''} | {fmt(s['rate'], '.2f')} | {fmt(s['sent_gbps'], '.2f')} | "
              f"{fmt(ratio(s, 'haproxy', 'iperf'), '.2f')} | {fmt(ratio(s, 'nginx', 'iperf'), '.2f')} | {fmt(s['retrans'], '.0f')} | "
              f"{fmt(s['proxy_cpu'], '.0f')} | {fmt(s['per_unit'], '.3f')} | {fmt(s['cpu0'], '.0f')} | {fmt(s['cpu1'], '.0f')} | {fmt(s['foreign_cpu'], '.0f')} | "
              f"{fmt(s['recvq'], '.1f')} | {fmt(s['copy_per_gbit'], '.2f')} |")
    print()
if any(w == "conn" for _, w in groups):
    print("**New connections** (wrk -t1, `Connection: close`: one TCP connection per request)\n")
    print("| target | runs | connections/s (median) | vs haproxy | vs nginx | p50 ms | p99 ms | errors | proxy CPU % | proxy CPU-ms per 1k conns | CPU0 busy % | CPU1 busy % | foreign CPU % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        s = summary.get((t, "conn"))
        if not s: continue
        print(f"| {t} | {s['n']}{' (+%d failed)' % s['failed'] if s['failed'] else ''} | {fmt(s['rate'], ',.0f')} | "
              f"{fmt(ratio(s, 'haproxy', 'conn'), '.2f')} | {fmt(ratio(s, 'nginx', 'conn'), '.2f')} | {fmt(s['p50_ms'], '.3f')} | {fmt(s['p99_ms'], '.3f')} | "
              f"{s['errors']} | {fmt(s['proxy_cpu'], '.0f')} | {fmt(s['per_unit'], '.1f')} | {fmt(s['cpu0'], '.0f')} | {fmt(s['cpu1'], '.0f')} | {fmt(s['foreign_cpu'], '.0f')} |")
print_paired(rows, targets, [w for w in ("iperf", "conn") if any(w == k[1] for k in groups)], rate="rate")
warn_skewed(rows, sys.argv[1], "the proxy (CPU 0) or iperf3 and the backends (CPU 1) had less of a core")
EOF
}

# ---------------------------------------------------------------- main

preflight() {
  local c w
  for c in iperf3 haproxy nginx wrk taskset python3 curl ps ss; do
    command -v "$c" >/dev/null || die "$c not found (apt-get install -y iperf3 haproxy nginx-light libnginx-mod-stream wrk)"
  done
  [[ $PERF_LOAD == 0 ]] || { [[ $PERF_LOAD == 1 ]] && command -v perf >/dev/null; } \
    || die "PERF_LOAD=1 needs perf (apt-get install -y linux-perf); PERF_LOAD is 0 or 1"
  (($(nproc --all) >= 2)) || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
  ((ROUNDS >= 1 && DURATION >= 1 && WARMUP >= 0 && WAIT_QUIET >= 0 && NOISY_RETRIES >= 0)) \
    || die "bad ROUNDS/DURATION/WARMUP/WAIT_QUIET/NOISY_RETRIES"
  for w in "${WORKLOADS[@]}"; do [[ $w == iperf || $w == conn ]] || die "unknown workload $w (known: iperf conn)"; done
  HZ=$(getconf CLK_TCK)
}


write_env() {
  {
    echo "date: $(date -Is)"
    echo "command: PROXIES='$PROXIES' BASELINE=$BASELINE WORKLOADS='${WORKLOADS[*]}' ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS WAIT_QUIET=$WAIT_QUIET NOISY_RETRIES=$NOISY_RETRIES GEOLB=$GEOLB SPLICE=$SPLICE GEOLB_B=$GEOLB_B SPLICE_B=$SPLICE_B $0"
    echo "kernel: $(uname -r)  cpus: $(nproc --all)  model: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "haproxy: $(haproxy -v 2>&1 | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "iperf3: $(iperf3 --version 2>&1 | head -1)"
    echo "wrk: $(wrk --version 2>&1 | head -1)"
    echo "net.ipv4.tcp_tw_reuse: $(cat /proc/sys/net/ipv4/tcp_tw_reuse)  ip_local_port_range: $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)"
    [[ -x $GEOLB ]] && echo "geolb: $GEOLB ($(stat -c '%y' "$GEOLB")), splice: ${SPLICE:-default}"
    [[ " $PROXIES " == *" geolb-b "* && -x $GEOLB_B ]] && echo "geolb-b: $GEOLB_B ($(stat -c '%y' "$GEOLB_B")), splice: ${SPLICE_B:-default}"
    echo "loadavg: $(cat /proc/loadavg)"
  } >"$RESULTS/env.txt"
}

main() {
  preflight
  RESULTS=${RESULTS_DIR:-$(mktemp -d /tmp/geolb-tcp-bench.XXXXXX)}
  mkdir -p "$RESULTS/raw" "$RESULTS/logs" "$RESULTS/configs"
  WORK=$(mktemp -d /tmp/geolb-bench-work.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  log "results: $RESULTS"
  write_env
  idle_check

  local ports
  read -ra ports <<<"$(free_ports 10)"
  BACKEND_PORT=${ports[0]}; IPERF_SERVER_PORT=${ports[1]}
  IPERF_PORT[direct]=$IPERF_SERVER_PORT; HTTP_PORT[direct]=$BACKEND_PORT
  IPERF_PORT[geolb]=${ports[2]};   HTTP_PORT[geolb]=${ports[3]}
  IPERF_PORT[haproxy]=${ports[4]}; HTTP_PORT[haproxy]=${ports[5]}
  IPERF_PORT[nginx]=${ports[6]};   HTTP_PORT[nginx]=${ports[7]}
  IPERF_PORT[geolb-b]=${ports[8]}; HTTP_PORT[geolb-b]=${ports[9]}

  start_backends
  ((BASELINE)) && TARGETS+=(direct)
  local name
  for name in $PROXIES; do
    # :- so that a name start_proxy does not know is skipped there, with a reason.
    if start_proxy "$name" "${HTTP_PORT[$name]:-}" "${IPERF_PORT[$name]:-}" && sanity_check "$name"; then
      TARGETS+=("$name")
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
        if [[ $wl == iperf ]]; then
          run_iperf "$WARMUP" "${IPERF_PORT[$t]}" "$RESULTS/raw/warmup-$t-$wl.json"
        else
          conn_wrk "$WARMUP" "${HTTP_PORT[$t]}" "$RESULTS/raw/warmup-$t-$wl.wrk"
        fi
      done
    done
    log "warm-up done"
  fi

  printf 'round\ttarget\tworkload\trate\tsent_gbps\tunits\tp50_ms\tp99_ms\terrors\tretrans\tproxy_cpu\tproxy_cpu_s\tbackend_cpu\tcpu0\tcpu1\tforeign_cpu\telapsed_s\tstolen_cpu0\tstolen_cpu1\tsoftirq_cpu0\trecvq_max_mib\tload_copy_pct\n' >"$RESULTS/results.tsv"
  head -1 "$RESULTS/results.tsv" >"$RESULTS/discarded.tsv"
  for ((round = 1; round <= ROUNDS; round++)); do
    for wl in "${WORKLOADS[@]}"; do
      for ((i = 0; i < n; i++)); do            # rotate the order each round
        t=${TARGETS[(i + round - 1) % n]}
        measure_retrying "$round" "$t" "$wl"
      done
    done
  done

  summarize | tee "$RESULTS/summary.md"
  cat >>"$RESULTS/summary.md" <<EOF

Median over $ROUNDS round(s) of ${DURATION}s; proxy on CPU $PROXY_CPU; iperf3 -c/-s, wrk -t1 -c$CONNS and the nginx backend on CPU $LOAD_CPU.
"direct" = no proxy (iperf3 -c straight to iperf3 -s, wrk straight to the backend).
rate = iperf3 receiver Gbit/s, or wrk requests/s (= connections/s, each request uses a new connection).
Errors = non-2xx/3xx + wrk socket errors, summed over rounds. Proxy CPU % = utime+stime of the proxy processes
(softirq time may be counted only in CPU0 busy %). Per-unit CPU = proxy CPU-seconds / GB received, or
proxy CPU-milliseconds / 1000 connections (median of the per-run values).
Foreign CPU % = CPU used by processes this script did not start (any CPU); above 5 the run is skewed.
EOF
  log "raw results: $RESULTS (results.tsv, summary.md, raw/, configs/, logs/, env.txt)"
}

main "$@"
