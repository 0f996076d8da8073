#!/usr/bin/env bash
# Helpers shared by the benchmark scripts (sourced, never run). They expect
# the sourcing script to set the PIDS array (every long-running process it
# started: start_bg adds to it, stop_all and cleanup stop it) and, where
# used: WORK (cleanup removes it), RESULTS (idle_check, measure_retrying),
# LOAD_CPU (run_load, run_wrk), WAIT_QUIET and HZ (wait_quiet), PROXY_CPU,
# GEOLB, the TARGET_PID map and the write_*_conf functions (start_proxy),
# NOISY_RETRIES and a measure function (measure_retrying),
# NGINX_WORKER_CONNECTIONS (nginx_common, default 8192). CPU numbers, ports
# and pids are passed in.

# Where benches/summary.py is, for summary_python.
BENCHES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# summary_python ARGS... : the Python program on stdin, with ARGS, able to
# `from summary import ...` (the summaries' shared parts).
summary_python() { PYTHONPATH="$BENCHES_DIR${PYTHONPATH:+:$PYTHONPATH}" python3 - "$@"; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes

# All direct children of a pid (nginx master -> worker).
children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }

# start_bg CPU LOGFILE CMD... : run CMD pinned to CPU in the background; sets STARTED_PID.
start_bg() {
  local cpu=$1 logf=$2; shift 2
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# stop_pids PID... : SIGTERM them and their children, SIGKILL after 5 s.
stop_pids() {
  local pid i all=()
  for pid in "$@"; do
    # shellcheck disable=SC2207  # one pid per word
    all+=("$pid" $(children_of "$pid"))
  done
  ((${#all[@]})) || return 0
  kill -TERM "${all[@]}" 2>/dev/null
  for ((i = 0; i < 50; i++)); do          # up to 5 s for a clean exit
    kill -0 "${all[@]}" 2>/dev/null || break
    sleep 0.1
  done
  for pid in "${all[@]}"; do
    kill -0 "$pid" 2>/dev/null && { log "pid $pid still running, SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
  done
}

# forget_pid PID : reap a process stopped early and drop it from PIDS, so that
# the final cleanup never signals a pid that may have been reused.
forget_pid() {
  local p keep=()
  wait "$1" 2>/dev/null
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# stop_all : stop every process in PIDS (and their children) and reap them.
stop_all() {
  stop_pids "${PIDS[@]}"
  wait 2>/dev/null
}

# cleanup : the EXIT trap: stop_all, then remove WORK.
cleanup() {
  stop_all
  [[ -n ${WORK:-} && -d $WORK ]] && rm -rf "$WORK"
}

# wait_until PID TRIES PAUSE CMD... : run CMD up to TRIES times, PAUSE s
# apart, until it succeeds (0); 1 when PID dies first or the tries run out.
wait_until() {
  local pid=$1 tries=$2 pause=$3 i
  shift 3
  for ((i = 0; i < tries; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    "$@" && return 0
    sleep "$pause"
  done
  return 1
}

# port_open PORT : 127.0.0.1:PORT accepts a TCP connection.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID : until PORT accepts a connection (deadline 10 s), or PID dies.
wait_port() { wait_until "$2" 100 0.1 port_open "$1"; }

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

# mem_kb PID... : "VmRSS<TAB>VmHWM" in kB, each summed over the pids.
mem_kb() {
  local p
  for p in "$@"; do cat "/proc/$p/status" 2>/dev/null; done \
    | awk '/^VmRSS:/ { r += $2 } /^VmHWM:/ { h += $2 } END { printf "%d\t%d", r, h }'
}

# stat_sum EXPR PID... : EXPR (an awk expression over /proc/PID/stat's
# fields, counted after the command's name) summed over the given pids.
stat_sum() {
  local expr=$1 p
  shift
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] && sed 's/^.*) //' "/proc/$p/stat"
  done | awk "{ t += $expr } END { print t + 0 }"
}

# Sum of utime+stime (clock ticks) over the given pids.
ticks_of() { stat_sum '$12 + $13' "$@"; }

# Sum of utime alone (clock ticks, user space) over the given pids.
user_ticks_of() { stat_sum '$12' "$@"; }

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

# "busy total" jiffies of CPU 0 and CPU 1 from /proc/stat, then the
# jiffies stolen from each (steal: the hypervisor ran something else on
# the physical CPU while this virtual one had work), then each one's
# softirq jiffies (the kernel's network work run off the back of an
# interrupt or a system call; a tick that lands there while a process
# runs is charged to that process's system time as well):
# "busy0 total0 busy1 total1 stolen0 stolen1 softirq0 softirq1".
cpu_snapshot() {
  awk '$1 == "cpu0" || $1 == "cpu1" {
         t = 0; for (i = 2; i <= 9; i++) t += $i   # user..steal
         printf "%d %d ", t - $5 - $6, t           # minus idle, iowait
         stolen = stolen sprintf("%d ", $9); softirq = softirq sprintf("%d ", $8) }
       END { printf "%s%s", stolen, softirq }' /proc/stat
}

# stolen_and_softirq_percent SNAPSHOT0 SNAPSHOT1 : of CPU 0's and CPU 1's time between
# two cpu_snapshots, the percent the hypervisor took, then CPU 0's percent
# in softirq ("stolen0\tstolen1\tsoftirq0"). Stolen time is time the
# proxy did not get: a round with CPU 0 stolen 15 % of the time gives it
# 15 % less of a core, whatever it does.
stolen_and_softirq_percent() {
  awk -v c0="$1" -v c1="$2" 'BEGIN { split(c0, a, " "); split(c1, b, " ")
    t0 = b[2] - a[2]; t1 = b[4] - a[4]
    printf "%.1f\t%.1f\t%.1f", t0 ? 100 * (b[5] - a[5]) / t0 : 0, t1 ? 100 * (b[6] - a[6]) / t1 : 0,
                                t0 ? 100 * (b[7] - a[7]) / t0 : 0 }'
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

# start_proxy NAME PORT... : start proxy NAME (geolb, haproxy or nginx; and
# geolb-b, a second geolb build, where the script sets SECOND_GEOLB=1) on
# PROXY_CPU with the config the script writes (write_geolb_conf NAME ->
# WORK/NAME.toml, write_haproxy_conf -> WORK/haproxy.cfg,
# write_nginx_proxy_conf -> WORK/nginx.conf), set TARGET_PID[NAME], and wait
# until every PORT listens (PROXY_WAIT PORT PID, default wait_port). Returns
# non-zero (and says why) to skip the proxy. A script whose nginx may be
# unable to do the job defines nginx_usable, which says why and fails.
start_proxy() {
  local name=$1 logf="$RESULTS/logs/$1.log" p
  shift
  case $name in
    geolb | geolb-b)
      # geolb-b: a second build (GEOLB_B) beside the first in the same
      # rounds, where the script writes a config per name and gives
      # geolb-b a port of its own (http.sh, tcp.sh).
      local bin=$GEOLB
      if [[ $name == geolb-b ]]; then
        if [[ ${SECOND_GEOLB:-0} != 1 ]]; then
          log "SKIP geolb-b: only http.sh and tcp.sh run a second geolb build"
          return 1
        fi
        bin=${GEOLB_B:-}
      fi
      if [[ ! -x $bin ]]; then
        log "SKIP $name: binary '$bin' not found (build it with cargo build --release, or set GEOLB= or GEOLB_B=)"
        return 1
      fi
      write_geolb_conf "$name"
      start_bg "$PROXY_CPU" "$logf" env RUST_LOG="${RUST_LOG:-warn}" "$bin" run --config "$WORK/$name.toml"
      ;;
    haproxy)
      write_haproxy_conf
      haproxy -c -q -f "$WORK/haproxy.cfg" >"$logf" 2>&1 || { log "SKIP haproxy: config rejected: $(tail -3 "$logf")"; return 1; }
      start_bg "$PROXY_CPU" "$logf" haproxy -db -f "$WORK/haproxy.cfg"
      ;;
    nginx)
      if declare -F nginx_usable >/dev/null; then nginx_usable || return 1; fi
      write_nginx_proxy_conf
      nginx -t -q -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" >"$logf" 2>&1 \
        || { log "SKIP nginx: config rejected: $(tail -3 "$logf")"; return 1; }
      start_bg "$PROXY_CPU" "$logf" nginx -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf"
      ;;
    *) log "SKIP $name: unknown proxy (known: geolb geolb-b haproxy nginx)"; return 1 ;;
  esac
  # shellcheck disable=SC2034,SC2004  # the sourcing script's associative array
  TARGET_PID[$name]=$STARTED_PID
  for p in "$@"; do
    if ! "${PROXY_WAIT:-wait_port}" "$p" "$STARTED_PID"; then
      if kill -0 "$STARTED_PID" 2>/dev/null; then
        log "SKIP $name: not listening on $p within 10 s; log tail:"
      else
        wait "$STARTED_PID"
        log "SKIP $name: exited with status $? before listening on $p; log tail:"
      fi
      tail -5 "$logf" >&2
      return 1
    fi
  done
  log "$name: pid $STARTED_PID on CPU $PROXY_CPU, port$( (($# > 1)) && echo s) $*"
}

# ---------------------------------------------------------------- load and results

# run_load SECONDS OUTFILE CMD... : CMD (a SECONDS-long load run) pinned to
# LOAD_CPU, output to OUTFILE; killed if it runs 30 s past SECONDS.
run_load() {
  local secs=$1 out=$2
  shift 2
  timeout -k 5 $((secs + 30)) taskset -c "$LOAD_CPU" "$@" >"$out" 2>&1
}

# run_wrk SECONDS OUTFILE WRK_ARGS... : wrk -t1 --latency for SECONDS on
# LOAD_CPU; WRK_PRELOAD, when set, is LD_PRELOADed into wrk (not into
# timeout and taskset).
# REQUEST=browser: the fields a browser sends with a page's request (as
# Chrome 120 sends them over HTTPS, in its order: an 800-byte head), as
# -H arguments for wrk and h2load; REQUEST=plain (the default): none, the
# load generator's own head (wrk: Host only). Users' requests carry such fields, and each costs
# a proxy its parsing, its rules and its copy to the backend.
request_fields() {
  REQUEST_FIELDS=()
  case ${REQUEST:-plain} in
    plain) ;;
    browser)
      REQUEST_FIELDS=(
        -H "Cache-Control: max-age=0"
        -H 'sec-ch-ua: "Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"'
        -H "sec-ch-ua-mobile: ?0"
        -H 'sec-ch-ua-platform: "Linux"'
        -H "Upgrade-Insecure-Requests: 1"
        -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
        -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
        -H "Sec-Fetch-Site: same-origin"
        -H "Sec-Fetch-Mode: navigate"
        -H "Sec-Fetch-User: ?1"
        -H "Sec-Fetch-Dest: document"
        -H "Referer: https://www.example.com/products/"
        -H "Accept-Encoding: gzip, deflate, br"
        -H "Accept-Language: en-US,en;q=0.9,de;q=0.8"
        -H "Cookie: _ga=GA1.1.1739461352.1701388800; session=8f14e45fceea167a5a36dedd4bea2543; theme=dark"
      ) ;;
    *) die "REQUEST=$REQUEST: plain or browser" ;;
  esac
}

run_wrk() {
  local secs=$1 out=$2 pre=()
  shift 2
  [[ -n ${WRK_PRELOAD:-} ]] && pre=(env LD_PRELOAD="$WRK_PRELOAD")
  request_fields
  run_load "$secs" "$out" "${pre[@]}" wrk -t1 -d"$secs"s --latency "${REQUEST_FIELDS[@]}" "$@"
}

# parse_wrk FILE FIELD... : one tab-separated line from wrk --latency output.
# FIELDs: rps (requests/s as wrk prints it), requests, p50 and p99 (ms, three
# decimals), non2xx, sock (socket errors), errors (non2xx + sock), NA (the
# literal NA). Every field is NA when wrk printed no result.
parse_wrk() {
  local file=$1
  shift
  awk -v fields="$*" '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
      return v + 0
    }
    /^Requests\/sec:/   { rps = $2 }
    / requests in /     { reqs = $1 }
    /^ +50%/            { p50 = ms($2) }
    /^ +99%/            { p99 = ms($2) }
    /Non-2xx or 3xx/    { non2xx = $NF }
    /Socket errors:/    { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
    END {
      n = split(fields, f, " ")
      for (i = 1; i <= n; i++) {
        if (rps == "" || f[i] == "NA") v = "NA"
        else if (f[i] == "rps")      v = rps
        else if (f[i] == "requests") v = sprintf("%d", reqs)
        else if (f[i] == "p50")      v = sprintf("%.3f", p50)
        else if (f[i] == "p99")      v = sprintf("%.3f", p99)
        else if (f[i] == "non2xx")   v = sprintf("%d", non2xx)
        else if (f[i] == "sock")     v = sprintf("%d", sock)
        else if (f[i] == "errors")   v = sprintf("%d", non2xx + sock)
        else                         v = "?" f[i]
        printf "%s%s", v, (i < n ? "\t" : "\n")
      }
    }' "$file"
}

# measure_retrying ROUND TARGET WORKLOAD : run the script's measure (one run,
# one row appended to $RESULTS/results.tsv). With NOISY_RETRIES=N, a run
# during which other processes used more than 5 % of a core (the row's
# foreign_cpu column) is moved to discarded.tsv, its raw output
# raw/rROUND-TARGET-WORKLOAD.* renamed *.noisyK, and measured again, up to N
# times; the last attempt is kept whatever it shows.
measure_retrying() {
  local try f
  measure "$@"
  for ((try = 1; try <= NOISY_RETRIES; try++)); do
    awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "foreign_cpu") c = i }
                END { exit !(c && $c > 5) }' "$RESULTS/results.tsv" || return 0
    tail -1 "$RESULTS/results.tsv" >>"$RESULTS/discarded.tsv"
    sed -i '$d' "$RESULTS/results.tsv"
    for f in "$RESULTS/raw/r$1-$2-$3".*; do
      [[ -f $f && $f != *.noisy* ]] && mv "$f" "$f.noisy$try"
    done
    log "  noisy run discarded, measuring again (retry $try of $NOISY_RETRIES)"
    measure "$@"
  done
}

# ---------------------------------------------------------------- TLS

# make_cert : one self-signed ECDSA P-256 certificate for localhost and
# 127.0.0.1 in WORK (cert.pem, key.pem, and cert-key.pem, both in one file
# as HAProxy wants them).
make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$RESULTS/logs/openssl-req.log" 2>&1 \
    || die "openssl could not make the certificate: $(tail -3 "$RESULTS/logs/openssl-req.log")"
  cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/cert-key.pem"
}

# nginx_tls : the TLS lines of an nginx server block with make_cert's
# certificate: TLS 1.3 only, sessions resumable as HAProxy and geolb do.
nginx_tls() {
  cat <<EOF
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
EOF
}

# The same certificate on HAProxy's and geolb's listeners, as nginx_tls
# puts it on nginx's: TLS 1.3 only, ALPN h2 then http/1.1.
# haproxy_tls_global : the line for HAProxy's global section.
haproxy_tls_global() { echo "ssl-default-bind-options ssl-min-ver TLSv1.3"; }
# haproxy_tls_bind : what follows a bind address.
haproxy_tls_bind() { echo " ssl crt $WORK/cert-key.pem alpn h2,http/1.1"; }
# geolb_tls_listener : the lines of a geolb [[listener]].
geolb_tls_listener() {
  printf 'protocol = "https"\ntls = [{ cert = "%s", key = "%s" }]\n' "$WORK/cert.pem" "$WORK/key.pem"
}

# ---------------------------------------------------------------- haproxy configs

# haproxy_http_head MAXCONN [GLOBAL_LINE...] : the global and defaults
# sections of an HTTP proxy config: one thread, no log, keep-alive on both
# sides with backend connections shared (http-reuse always), 60 s timeouts.
# By default HAProxy stops keeping idle backend connections once 20 % of
# its descriptors are in use (tune.pool-low-fd-ratio; maxconn 4096 gives
# about 8,200) and closes them from 25 %: at 1,000 clients it would open a
# backend connection for every other request, where geolb (and nginx with
# keepalive >= the clients) keep theirs.
haproxy_http_head() {
  local maxconn=$1
  shift
  cat <<EOF
global
    nbthread 1
    maxconn $maxconn
    tune.pool-low-fd-ratio 90
    tune.pool-high-fd-ratio 95
$(for l in "$@"; do [[ -n $l ]] && echo "    $l"; done)

defaults
    mode http
    no log
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
EOF
}

# ---------------------------------------------------------------- nginx configs

# nginx_common NAME : the top of an nginx config (one worker, foreground,
# pid and error log in WORK named after NAME); NGINX_WORKER_CONNECTIONS
# (default 8192) per worker.
nginx_common() {
  cat <<EOF
$([[ $EUID -eq 0 ]] && echo "user root;")
worker_processes 1;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-8192}; }
EOF
}

# nginx_http_common NAME : lines for an http {} block: temp paths under
# WORK/NAME-tmp (created here) and long-lived keep-alive. access_log is
# left to the caller.
nginx_http_common() {
  mkdir -p "$WORK/$1-tmp"
  cat <<EOF
    client_body_temp_path $WORK/$1-tmp/body;
    proxy_temp_path $WORK/$1-tmp/proxy;
    fastcgi_temp_path $WORK/$1-tmp/fastcgi;
    uwsgi_temp_path $WORK/$1-tmp/uwsgi;
    scgi_temp_path $WORK/$1-tmp/scgi;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
EOF
}

# nginx_upstream PORT... : an upstream "bench" over the loopback backends
# on PORTs, keeping up to NGINX_KEEPALIVE (64) idle connections to them.
nginx_upstream() {
  local p
  echo "    upstream bench {"
  for p in "$@"; do echo "        server 127.0.0.1:$p;"; done
  echo "        keepalive ${NGINX_KEEPALIVE:-64};"
  echo "        keepalive_requests 1000000;"
  echo "    }"
}

# BACKEND_PROTO's words for each proxy (http.sh and instructions.sh):
# HAProxy's server options, geolb's pool line, nginx's location lines.
haproxy_server_opts() {
  case $BACKEND_PROTO in
    tls) echo " ssl verify none" ;;
    h2c) echo " proto h2" ;;
  esac
}
geolb_backend_proto() {
  case $BACKEND_PROTO in
    tls) echo 'tls = { verify = false }' ;;
    h2c) echo 'backend_protocol = "h2c"' ;;
  esac
}
# nginx 1.22 offers TLS 1.2 at most to a backend unless told.
nginx_backend_tls_lines() {
  echo "            proxy_ssl_session_reuse on;"
  echo "            proxy_ssl_protocols TLSv1.2 TLSv1.3;"
}

# nginx_pass_location [SCHEME [LINES]] : "location /" proxying to the
# upstream "bench" (SCHEME http or https) over kept-alive HTTP/1.1, with
# LINES added to the location (and nginx_same_fields' lines).
nginx_pass_location() {
  cat <<EOF
        location / {
            proxy_pass ${1:-http}://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$(nginx_same_fields)
${2:-}
        }
EOF
}

# SAME_FIELDS=1: HAProxy and nginx do to each request what geolb does by
# default, in the lines their own users write for it: X-Forwarded-For
# (the client appended), X-Forwarded-Proto and X-Forwarded-Host added to
# the request forwarded, and a random X-Request-Id on both the request
# and its answer. SAME_FIELDS=forwarded: the three X-Forwarded-* fields
# only, and geolb's listener gets request_id = false. Unset (0), the
# anchors forward the request as they received it while geolb adds all
# four: the default comparison gives the anchors less work than geolb.
SAME_FIELDS=${SAME_FIELDS:-0}
case $SAME_FIELDS in
  0 | 1 | forwarded) ;;
  *) die "SAME_FIELDS=$SAME_FIELDS: 0, 1 or forwarded" ;;
esac

# nginx_same_fields : lines for nginx's location (none with SAME_FIELDS=0).
nginx_same_fields() {
  [[ $SAME_FIELDS == 0 ]] && return 0
  cat <<'EOF'
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
EOF
  [[ $SAME_FIELDS == 1 ]] || return 0
  cat <<'EOF'
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id always;
EOF
}

# haproxy_same_fields : lines for HAProxy's frontend (none with SAME_FIELDS=0).
haproxy_same_fields() {
  [[ $SAME_FIELDS == 0 ]] && return 0
  cat <<'EOF'
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
EOF
  [[ $SAME_FIELDS == 1 ]] || return 0
  cat <<'EOF'
    unique-id-format %[uuid()]
    unique-id-header X-Request-Id
    http-after-response set-header X-Request-Id %[unique-id]
EOF
}

# geolb_same_fields : a line for geolb's listener: without an X-Request-Id
# when the anchors add none (SAME_FIELDS=forwarded).
geolb_same_fields() {
  [[ $SAME_FIELDS == forwarded ]] && echo "request_id = false"
  return 0
}

# text_file PATH BYTES : BYTES of English prose (the licences Debian ships in
# /usr/share/common-licenses, about 300 KB), a body that compresses as pages do.
text_file() { cat /usr/share/common-licenses/* | head -c "$2" >"$1"; }

# geolb_one_pool_conf BACKEND_PORT LISTEN_PORT [LINES] : a geolb config on
# stdout: one worker thread, pool "p" of the backend on BACKEND_PORT, an
# http listener "web" on LISTEN_PORT, with LINES added to the listener.
# Its state directory is the caller's $WORK: an override left in the
# machine's /var/lib/geolb would otherwise apply to the run.
geolb_one_pool_conf() {
  cat <<EOF
[runtime]
worker_threads = 1
shutdown_grace = "1s"
state_dir = "$WORK/geolb-state"
[[pool]]
name = "p"
backends = [{ addr = "127.0.0.1:$1" }]
[[listener]]
name = "web"
bind = "127.0.0.1:$2"
pool = "p"
${3:-}
EOF
}
