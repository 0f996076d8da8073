#!/usr/bin/env bash
# TLS termination benchmark: geolb's https listener beside HAProxy (and
# nginx) with the same certificate (run by hand, never in CI).
#
# Layout (2-core machine):
#   CPU 0: the proxy under test, one worker (geolb worker_threads=1,
#          haproxy nbthread 1, nginx worker_processes 1)
#   CPU 1: wrk -t1 and one nginx backend (plain HTTP, tiny body)
# One self-signed ECDSA P-256 certificate for every proxy; TLS 1.3 only
# (geolb offers 1.2 and 1.3, wrk's OpenSSL picks 1.3). Each proxy keeps
# its connections to the backend alive.
# Workloads:
#   full       wrk -t1 -c32 -H "Connection: close": a new TCP connection and
#              a full TLS 1.3 handshake per request. wrk on its own resumes
#              the previous session on every reconnect (it ends a connection
#              with SSL_shutdown + SSL_clear, which keeps the session), so
#              for this workload wrk runs with a small LD_PRELOAD shim that
#              drops the session in SSL_clear (built here with cc).
#   resumed    the same without the shim: wrk's own behaviour, a TLS 1.3
#              resumption (PSK with (EC)DHE: no certificate, no signature)
#              per request.
#   keepalive  wrk -t1 -c64, kept-alive TLS connections, small requests.
# Before measuring, the script checks what wrk does on this machine (an
# nginx probe logs $ssl_session_reused) and what every proxy negotiates
# (openssl s_client: protocol, cipher, group, resumption).
# Rounds are interleaved: every round runs every target once per workload.
#
# Environment:
#   PROXIES="geolb haproxy nginx"  proxies to measure (any subset, any order)
#   WORKLOADS="full resumed keepalive"
#   ROUNDS=3        interleaved rounds (the table shows the median)
#   DURATION=10     seconds per measured run
#   WARMUP=2        seconds of warm-up per target and workload, before round 1
#   HS_CONNS=32     wrk connections for full and resumed
#   KA_CONNS=64     wrk connections for keepalive
#   WAIT_QUIET=0    before each run, wait up to this many seconds for other
#                   processes to use < 10% of a core (0 = don't wait)
#   NOISY_RETRIES=0 measure a run again (up to this many times) when other
#                   processes used > 5% of a core during it; the noisy
#                   attempts go to discarded.tsv
#   GEOLB=/work/main/target/release/geolb
#   RESULTS_DIR=    where raw results go (default: a new /tmp/geolb-tls-bench.XXXXXX)
#
# Requires: haproxy, nginx (nginx-light is enough), wrk, openssl, cc (for
# the full-handshake shim; without it "full" is skipped), taskset, python3, curl.
#   apt-get install -y haproxy nginx-light wrk openssl gcc
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROXIES=${PROXIES:-"geolb haproxy nginx"}
read -ra WORKLOADS <<<"${WORKLOADS:-full resumed keepalive}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
HS_CONNS=${HS_CONNS:-32}
KA_CONNS=${KA_CONNS:-64}
WAIT_QUIET=${WAIT_QUIET:-0}
NOISY_RETRIES=${NOISY_RETRIES:-0}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
PROXY_CPU=0
LOAD_CPU=1

declare -a PIDS=()          # every long-running process this script started
declare -A TARGET_PID=()    # target -> pid of the proxy
declare -A TARGET_PORT=()   # target -> TLS port wrk connects to
declare -A TARGET_TLS=()    # target -> what s_client negotiated
declare -a TARGETS=()       # targets that started and passed the sanity check
BACKEND_PID=""
SHIM=""

# ---------------------------------------------------------------- certificate and shim

log_cert() {
  log "certificate: $(openssl x509 -in "$WORK/cert.pem" -noout -subject -ext subjectAltName 2>/dev/null | tr -s '\n ' ' ')$(openssl x509 -in "$WORK/cert.pem" -noout -text | grep -m1 -o 'ASN1 OID: [a-z0-9]*')"
}

# The LD_PRELOAD shim for full handshakes: wrk closes a connection with
# SSL_shutdown + SSL_clear and SSL_clear keeps the session, so the next
# SSL_connect would resume it. Dropping the session in SSL_clear makes every
# connection a full handshake; nothing else in wrk changes.
build_shim() {
  command -v cc >/dev/null || { log "no cc: cannot build the full-handshake shim"; return 1; }
  cat >"$WORK/nosession.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_clear(SSL *s) {
    static int (*real_clear)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    if (!real_clear) {
        set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    }
    set_session(s, NULL);
    return real_clear(s);
}
EOF
  cc -shared -fPIC -O2 -o "$WORK/nosession.so" "$WORK/nosession.c" -ldl >"$RESULTS/logs/shim-cc.log" 2>&1 \
    || { log "cc failed to build the shim: $(tail -3 "$RESULTS/logs/shim-cc.log")"; return 1; }
  cp "$WORK/nosession.c" "$RESULTS/configs/"
  SHIM=$WORK/nosession.so
}

# ---------------------------------------------------------------- configs

write_backend_conf() {
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

write_probe_conf() {   # TLS nginx that logs whether each handshake resumed
  {
    nginx_common probe
    echo "http {"
    nginx_http_common probe
    cat <<EOF
    log_format reuse "\$ssl_session_reused \$ssl_protocol";
    access_log $WORK/probe-access.log reuse;
    default_type text/plain;
    server {
        listen 127.0.0.1:$PROBE_PORT ssl;
$(nginx_tls)
        location / { return 200 "ok\n"; }
    }
}
EOF
  } >"$WORK/probe.conf"
}

write_nginx_proxy_conf() {
  {
    nginx_common nginx
    echo "http {"
    echo "    access_log off;"
    nginx_http_common nginx
    nginx_upstream "$BACKEND_PORT"
    cat <<EOF
    server {
        listen 127.0.0.1:${TARGET_PORT[nginx]} ssl http2 backlog=4096;
$(nginx_tls)
$(nginx_pass_location http)
    }
}
EOF
  } >"$WORK/nginx.conf"
}

write_haproxy_conf() {
  {
    haproxy_http_head 8000 "$(haproxy_tls_global)"
    cat <<EOF

frontend fe
    bind 127.0.0.1:${TARGET_PORT[haproxy]}$(haproxy_tls_bind)
    default_backend be

backend be
    server b1 127.0.0.1:$BACKEND_PORT
EOF
  } >"$WORK/haproxy.cfg"
}

write_geolb_conf() {
  cat >"$WORK/geolb.toml" <<EOF
[runtime]
worker_threads = 1
# Not the machine's /var/lib/geolb, whose overrides would apply.
state_dir = "$WORK/geolb-state"
shutdown_grace = "1s"

[[pool]]
name = "bench"
backends = [{ addr = "127.0.0.1:$BACKEND_PORT" }]

[[listener]]
name = "tls"
bind = "127.0.0.1:${TARGET_PORT[geolb]}"
$(geolb_tls_listener)
pool = "bench"
EOF
}

# ---------------------------------------------------------------- processes

start_backend() {
  write_backend_conf
  nginx -t -q -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf" \
    || die "backend nginx config rejected (see $WORK/backend.conf)"
  start_bg "$LOAD_CPU" "$RESULTS/logs/backend.log" \
    nginx -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf"
  BACKEND_PID=$STARTED_PID
  wait_port "$BACKEND_PORT" "$BACKEND_PID" || die "backend nginx did not listen on $BACKEND_PORT ($(tail -3 "$WORK/backend-error.log" 2>/dev/null))"
  log "backend: nginx pid $BACKEND_PID on CPU $LOAD_CPU, port $BACKEND_PORT"
}

# wrk against a TLS nginx that logs $ssl_session_reused: how many handshakes
# wrk resumes with and without the shim. Started on CPU 1 and stopped again.
probe_wrk() {
  local pid full res
  write_probe_conf
  cp "$WORK/probe.conf" "$RESULTS/configs/"
  nginx -t -q -e "$WORK/probe-error.log" -p "$WORK" -c "$WORK/probe.conf" >"$RESULTS/logs/probe.log" 2>&1 \
    || { log "probe nginx config rejected; wrk's resumption not checked"; return 0; }
  start_bg "$LOAD_CPU" "$RESULTS/logs/probe.log" nginx -e "$WORK/probe-error.log" -p "$WORK" -c "$WORK/probe.conf"
  pid=$STARTED_PID
  if wait_port "$PROBE_PORT" "$pid"; then
    : >"$WORK/probe-access.log"
    timeout -k 2 10 taskset -c "$LOAD_CPU" wrk -t1 -c4 -d1s -H "Connection: close" "https://127.0.0.1:$PROBE_PORT/" >"$RESULTS/raw/probe-resumed.wrk" 2>&1
    sleep 0.2
    res=$(awk '{ n++; if ($1 == "r") r++ } END { printf "%d of %d handshakes resumed (%s)", r, n, $2 }' "$WORK/probe-access.log")
    PROBE_RESUMED=$(awk '$1 == "r" { r++ } END { print r + 0 }' "$WORK/probe-access.log")
    if [[ -n $SHIM ]]; then
      : >"$WORK/probe-access.log"
      timeout -k 2 10 taskset -c "$LOAD_CPU" env LD_PRELOAD="$SHIM" wrk -t1 -c4 -d1s -H "Connection: close" "https://127.0.0.1:$PROBE_PORT/" >"$RESULTS/raw/probe-full.wrk" 2>&1
      sleep 0.2
      full=$(awk '{ n++; if ($1 == "r") r++ } END { printf "%d of %d handshakes resumed (%s)", r, n, $2 }' "$WORK/probe-access.log")
      PROBE_FULL_RESUMED=$(awk '$1 == "r" { r++ } END { print r + 0 }' "$WORK/probe-access.log")
    fi
    res="wrk -H 'Connection: close' against a TLS 1.3 nginx probe: plain wrk: $res; with the shim: ${full:-not built}"
    log "$res"; echo "$res" >>"$RESULTS/env.txt"
  else
    log "probe nginx did not start; wrk's resumption not checked"
  fi
  stop_pids "$pid"
  forget_pid "$pid"
}


# s_client PORT ARGS... : one HTTP/1.1 request over TLS, output of openssl s_client.
s_client() {
  local port=$1; shift
  printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' \
    | timeout -k 2 5 openssl s_client -connect "127.0.0.1:$port" -ign_eof "$@" 2>&1
}

# sanity_check NAME : the backend body over TLS (curl and wrk's SNI, an IP
# address), TLS 1.3 negotiated, and whether a session resumes.
sanity_check() {
  local name=$1 port=${TARGET_PORT[$1]} out first second proto cipher group reused
  out=$(curl -sk -m 3 --http1.1 "https://127.0.0.1:$port/") || { log "SKIP $name: GET / over TLS failed"; return 1; }
  [[ $out == ok ]] || { log "SKIP $name: GET / answered '${out:0:60}'"; return 1; }
  first=$(s_client "$port" -servername localhost -sess_out "$WORK/sess-$name.pem")
  second=$(s_client "$port" -servername localhost -sess_in "$WORK/sess-$name.pem")
  printf '%s\n---- second connection (-sess_in) ----\n%s\n' "$first" "$second" >"$RESULTS/logs/s_client-$name.log"
  proto=$(grep -m1 -oE '^(New|Reused), TLSv[0-9.]+' <<<"$first" | awk '{ print $2 }')
  cipher=$(grep -m1 -oE 'Cipher is [A-Z0-9_-]+' <<<"$first" | awk '{ print $3 }')
  group=$(grep -m1 -oE 'Server Temp Key: [A-Za-z0-9-]+' <<<"$first" | awk '{ print $4 }')
  reused=$(grep -qE '^Reused, TLSv' <<<"$second" && echo yes || echo no)
  [[ $proto == TLSv1.3 ]] || { log "SKIP $name: negotiated '${proto:-nothing}', want TLSv1.3 (see logs/s_client-$name.log)"; return 1; }
  TARGET_TLS[$name]="$proto $cipher $group, resumption $reused"
  echo "$name: ${TARGET_TLS[$name]}" >>"$RESULTS/env.txt"
  [[ $reused == yes ]] || log "WARNING $name: a second s_client connection did not resume; 'resumed' measures full handshakes for it"
  # wrk sends the IP address as SNI; one short run must get 200s.
  timeout -k 2 10 taskset -c "$LOAD_CPU" wrk -t1 -c2 -d1s -H "Connection: close" "https://127.0.0.1:$port/" >"$RESULTS/raw/sanity-$name.wrk" 2>&1
  out=$(parse_wrk "$RESULTS/raw/sanity-$name.wrk" rps requests p50 p99 errors)
  [[ $out != NA* && $(cut -f2 <<<"$out") -gt 0 && $(cut -f5 <<<"$out") -eq 0 ]] \
    || { log "SKIP $name: wrk over TLS failed: $(grep -m3 -iE 'error|requests in' "$RESULTS/raw/sanity-$name.wrk" | tr '\n' ' ')"; return 1; }
  log "$name: sanity ok: ${TARGET_TLS[$name]}"
}

# ---------------------------------------------------------------- measuring





tls_wrk() {   # tls_wrk SECONDS TARGET WORKLOAD OUTFILE : wrk as the workload asks
  local url="https://127.0.0.1:${TARGET_PORT[$2]}/"
  case $3 in
    full)      WRK_PRELOAD=$SHIM run_wrk "$1" "$4" -c"$HS_CONNS" -H "Connection: close" "$url" ;;
    resumed)   run_wrk "$1" "$4" -c"$HS_CONNS" -H "Connection: close" "$url" ;;
    keepalive) run_wrk "$1" "$4" -c"$KA_CONNS" "$url" ;;
  esac
}

# measure ROUND TARGET WORKLOAD : one run, one row appended to results.tsv.
measure() {
  local round=$1 target=$2 wl=$3
  local out="$RESULTS/raw/r${round}-${target}-${wl}.wrk"
  local ppids=() bpids=() p0 p1 b0 b1 c0 c1 f0 f1 t0 t1 row

  ((WAIT_QUIET > 0)) && wait_quiet
  ppids=("${TARGET_PID[$target]}" $(children_of "${TARGET_PID[$target]}"))
  bpids=("$BACKEND_PID" $(children_of "$BACKEND_PID"))

  f0=$(foreign_ticks); p0=$(ticks_of "${ppids[@]}"); b0=$(ticks_of "${bpids[@]}"); c0=$(cpu_snapshot); t0=$(date +%s.%N)
  tls_wrk "$DURATION" "$target" "$wl" "$out"
  p1=$(ticks_of "${ppids[@]}"); b1=$(ticks_of "${bpids[@]}"); c1=$(cpu_snapshot); t1=$(date +%s.%N); f1=$(foreign_ticks)

  row=$(awk -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v b0="$b0" -v b1="$b1" \
            -v c0="$c0" -v c1="$c1" -v f0="$f0" -v f1="$f1" 'BEGIN {
      el = t1 - t0
      split(c0, a, " "); split(c1, b, " ")
      cpu0 = (b[2] - a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
      cpu1 = (b[4] - a[4]) ? 100 * (b[3] - a[3]) / (b[4] - a[4]) : 0
      foreign = 100 * (f1 - f0) / hz / el; if (foreign < 0) foreign = 0
      printf "%.1f\t%.2f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f", 100 * (p1 - p0) / hz / el, (p1 - p0) / hz,
        100 * (b1 - b0) / hz / el, cpu0, cpu1, foreign, el
    }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$wl" "$(parse_wrk "$out" rps requests p50 p99 errors)" "$row" >>"$RESULTS/results.tsv"
  tail -1 "$RESULTS/results.tsv" | awk -F'\t' '{
    printf "  round %s %-8s %-9s %10s req/s  p50 %7s ms  p99 %7s ms  errs %s  proxy %5s%%  backend %5s%%  cpu0 %5s%%  cpu1 %5s%%  foreign %5s%%%s\n",
      $1, $2, $3, $4, $6, $7, $8, $9, $11, $12, $13, $14, ($14 > 5 ? "  << NOISY" : "") }' >&2
}

# ---------------------------------------------------------------- summary

summarize() {
  summary_python "$RESULTS/results.tsv" <<'EOF'
import sys
from summary import fmt, med, num, read_rows, warn_skewed
rows = read_rows(sys.argv[1])
for r in rows:   # proxy CPU-milliseconds per 1000 requests (= µs per request / handshake)
    cpu_s, reqs = num(r["proxy_cpu_s"]), num(r["requests"])
    r["per_1k"] = cpu_s * 1e3 / (reqs / 1e3) if cpu_s is not None and reqs else None
groups = {}
for r in rows:
    groups.setdefault((r["target"], r["workload"]), []).append(r)
order = ["geolb", "haproxy", "nginx"]
targets = sorted({t for t, _ in groups}, key=lambda t: order.index(t) if t in order else 99)
workloads = [w for w in ("full", "resumed", "keepalive") if any(w == k[1] for k in groups)]
label = {"full": "full handshake / conn", "resumed": "resumed handshake / conn", "keepalive": "kept-alive"}
summary = {}
for key, rs in groups.items():
    s = {f: med(num(r[f]) for r in rs) for f in ("rps", "p50_ms", "p99_ms", "proxy_cpu", "cpu0", "cpu1", "foreign_cpu")}
    s["per_1k"] = med(r["per_1k"] for r in rs)
    s["errors"] = sum(int(num(r["errors"]) or 0) for r in rs)
    s["n"] = sum(1 for r in rs if num(r["rps"]) is not None)
    summary[key] = s
print("| target | workload | runs | req/s (median) | vs haproxy | vs nginx | p50 ms | p99 ms | errors | proxy CPU % | proxy CPU-ms per 1k req | CPU0 busy % | CPU1 busy % | foreign CPU % |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in workloads:
    for t in targets:
        s = summary.get((t, w))
        if not s: continue
        def ratio(ref):
            r = summary.get((ref, w))
            return s["rps"] / r["rps"] if r and r["rps"] and s["rps"] is not None else None
        print(f"| {t} | {w} ({label[w]}) | {s['n']} | {fmt(s['rps'], ',.0f')} | {fmt(ratio('haproxy'), '.2f')} | "
              f"{fmt(ratio('nginx'), '.2f')} | {fmt(s['p50_ms'], '.3f')} | {fmt(s['p99_ms'], '.3f')} | {s['errors']} | "
              f"{fmt(s['proxy_cpu'], '.0f')} | {fmt(s['per_1k'], '.1f')} | {fmt(s['cpu0'], '.0f')} | {fmt(s['cpu1'], '.0f')} | {fmt(s['foreign_cpu'], '.0f')} |")
warn_skewed(rows, sys.argv[1])
EOF
}

# ---------------------------------------------------------------- main

preflight() {
  local c w
  for c in haproxy nginx wrk openssl taskset python3 curl ps; do
    command -v "$c" >/dev/null || die "$c not found (apt-get install -y haproxy nginx-light wrk openssl)"
  done
  (($(nproc --all) >= 2)) || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
  ((ROUNDS >= 1 && DURATION >= 1 && WARMUP >= 0 && WAIT_QUIET >= 0 && NOISY_RETRIES >= 0)) \
    || die "bad ROUNDS/DURATION/WARMUP/WAIT_QUIET/NOISY_RETRIES"
  for w in "${WORKLOADS[@]}"; do
    [[ $w == full || $w == resumed || $w == keepalive ]] || die "unknown workload $w (known: full resumed keepalive)"
  done
  HZ=$(getconf CLK_TCK)
}


write_env() {
  {
    echo "date: $(date -Is)"
    echo "command: PROXIES='$PROXIES' WORKLOADS='${WORKLOADS[*]}' ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP HS_CONNS=$HS_CONNS KA_CONNS=$KA_CONNS WAIT_QUIET=$WAIT_QUIET NOISY_RETRIES=$NOISY_RETRIES GEOLB=$GEOLB $0"
    echo "kernel: $(uname -r)  cpus: $(nproc --all)  model: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "haproxy: $(haproxy -vv 2>&1 | grep -E '^HAProxy version|Running on OpenSSL' | tr '\n' ' ')"
    echo "nginx: $(nginx -V 2>&1 | grep -E 'version|OpenSSL' | tr '\n' ' ')"
    echo "wrk: $(wrk --version 2>&1 | head -1); openssl: $(openssl version)"
    [[ -x $GEOLB ]] && echo "geolb: $GEOLB ($(stat -c '%y' "$GEOLB")), rustls with the ring provider"
    echo "loadavg: $(cat /proc/loadavg)"
  } >"$RESULTS/env.txt"
}

main() {
  preflight
  RESULTS=${RESULTS_DIR:-$(mktemp -d /tmp/geolb-tls-bench.XXXXXX)}
  mkdir -p "$RESULTS/raw" "$RESULTS/logs" "$RESULTS/configs"
  WORK=$(mktemp -d /tmp/geolb-bench-work.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  log "results: $RESULTS"
  write_env
  idle_check

  local ports
  read -ra ports <<<"$(free_ports 5)"
  BACKEND_PORT=${ports[0]}; PROBE_PORT=${ports[1]}
  TARGET_PORT[geolb]=${ports[2]}; TARGET_PORT[haproxy]=${ports[3]}; TARGET_PORT[nginx]=${ports[4]}

  make_cert
  log_cert
  if [[ " ${WORKLOADS[*]} " == *" full "* ]] && ! build_shim; then
    log "SKIP workload full (no shim: wrk would resume sessions)"
    read -ra WORKLOADS <<<"$(printf '%s ' "${WORKLOADS[@]}" | sed 's/\bfull\b//')"
  fi
  PROBE_RESUMED=""; PROBE_FULL_RESUMED=""
  probe_wrk
  if [[ -n $SHIM && -n $PROBE_FULL_RESUMED && $PROBE_FULL_RESUMED != 0 ]]; then
    log "SKIP workload full: wrk still resumed sessions with the shim"
    read -ra WORKLOADS <<<"$(printf '%s ' "${WORKLOADS[@]}" | sed 's/\bfull\b//')"
  fi
  [[ $PROBE_RESUMED == 0 ]] && log "WARNING: plain wrk did not resume any session: 'resumed' measures full handshakes here"
  ((${#WORKLOADS[@]})) || die "no workload left"

  start_backend
  local name
  for name in $PROXIES; do
    # :- so that a name start_proxy does not know is skipped there, with a reason.
    if start_proxy "$name" "${TARGET_PORT[$name]:-}" && sanity_check "$name"; then
      TARGETS+=("$name")
    elif [[ -n ${TARGET_PID[$name]:-} ]]; then
      stop_pids "${TARGET_PID[$name]}"; forget_pid "${TARGET_PID[$name]}"   # skipped: free CPU 0
    fi
  done
  cp "$WORK"/*.conf "$WORK"/*.cfg "$WORK"/*.toml "$RESULTS/configs/" 2>/dev/null
  ((${#TARGETS[@]})) || die "nothing to measure"
  log "targets: ${TARGETS[*]}; workloads: ${WORKLOADS[*]}; ${ROUNDS} rounds x ${DURATION}s" \
      "(~$(( (ROUNDS * DURATION + WARMUP) * ${#TARGETS[@]} * ${#WORKLOADS[@]} ))s)"

  local t wl round i n=${#TARGETS[@]}
  if ((WARMUP > 0)); then
    for t in "${TARGETS[@]}"; do
      for wl in "${WORKLOADS[@]}"; do
        tls_wrk "$WARMUP" "$t" "$wl" "$RESULTS/raw/warmup-$t-$wl.wrk"
      done
    done
    log "warm-up done"
  fi

  printf 'round\ttarget\tworkload\trps\trequests\tp50_ms\tp99_ms\terrors\tproxy_cpu\tproxy_cpu_s\tbackend_cpu\tcpu0\tcpu1\tforeign_cpu\telapsed_s\n' >"$RESULTS/results.tsv"
  head -1 "$RESULTS/results.tsv" >"$RESULTS/discarded.tsv"
  for ((round = 1; round <= ROUNDS; round++)); do
    for wl in "${WORKLOADS[@]}"; do
      for ((i = 0; i < n; i++)); do            # rotate the order each round
        t=${TARGETS[(i + round - 1) % n]}
        measure_retrying "$round" "$t" "$wl"
      done
    done
  done

  {
    summarize
    echo
    echo "Negotiated (openssl s_client): $(for t in "${TARGETS[@]}"; do printf '%s: %s; ' "$t" "${TARGET_TLS[$t]}"; done)"
  } | tee "$RESULTS/summary.md"
  cat >>"$RESULTS/summary.md" <<EOF

Median over $ROUNDS round(s) of ${DURATION}s; proxy on CPU $PROXY_CPU; wrk -t1 and the nginx backend on CPU $LOAD_CPU.
full = wrk -c$HS_CONNS -H "Connection: close" with the no-session shim (a full TLS 1.3 handshake per request);
resumed = the same without the shim (wrk resumes the last session: a PSK + ECDHE handshake per request);
keepalive = wrk -c$KA_CONNS over kept-alive TLS connections. Errors = non-2xx/3xx + socket errors, summed over rounds.
Proxy CPU % = utime+stime of the proxy processes (softirq time may be counted only in CPU0 busy %).
Proxy CPU-ms per 1k req = proxy CPU-milliseconds per 1000 requests (= per 1000 handshakes for full and resumed).
Foreign CPU % = CPU used by processes this script did not start (any CPU); above 5 the run is skewed.
EOF
  log "raw results: $RESULTS (results.tsv, summary.md, raw/*.wrk, configs/, logs/, env.txt)"
}

main "$@"
