#!/usr/bin/env bash
# DNS benchmark: geolb beside gdnsd and Knot DNS (run by hand, never in CI).
#
# Layout (2-core machine):
#   CPU 0: the server under test, one thread (geolb worker_threads=1,
#          gdnsd udp_threads/tcp_threads 1, knotd udp/tcp/background workers 1)
#   CPU 1: dnsperf (-T 1 -c CLIENTS) over UDP
# Workloads:
#   geo     "api.mysite.com A": geolb [[dns.geo]], gdnsd geoip plugin (DYNA
#           geoip!api, same three data centers and coordinates, the MaxMind
#           test database), Knot a static A (Knot has no geo; reference only)
#   geo-ecs "api.mysite.com A" with Client Subnet 81.2.69.160/32 (London):
#           a database hit per query (geolb and gdnsd answer eu-west)
#   static  "ns1.mysite.com A": a plain zone record on all three
#   mix     what users send, not A alone: per ten queries, four geo A
#           (api), one geo AAAA (no IPv6 address: NODATA), one MX and one
#           TXT at the apex, one A for a plain name (ns1), and two names
#           that do not exist (NXDOMAIN, A and AAAA); dnsperf cycles
#           through them in order
# Queries come from 127.0.0.1, which has no location in the test database:
# geolb and gdnsd both fall back to their configured data-center order, so
# per query they do the same work as for a located client minus the hit.
# The table's "qps per core" is qps x 100 / server CPU % (utime+stime of the
# server from /proc/PID/stat over the run), so it stays meaningful when
# dnsperf, not the server, is the limit.
#
# DNSSEC=1: the same workloads signed, every query with DO set (dnsperf
# -D): geolb signing online with one ECDSA P-256 CSK (dnssec = { keys }),
# Knot with automatic signing (dnssec-signing: on, a P-256 CSK policy),
# which signs the zone when it loads and serves stored signatures. gdnsd
# has no DNSSEC and is skipped.
#
# Environment:
#   SERVERS="geolb gdnsd knot"  servers to measure (any subset, any order;
#                   default "geolb knot" with DNSSEC=1)
#   DNSSEC=0        1: signed zone, DO=1 queries (see above)
#   WORKLOADS="geo geo-ecs static mix"  workloads to run (any subset)
#   ROUNDS=3        interleaved rounds (the table shows the median)
#   DURATION=10     seconds per measured run
#   WARMUP=2        seconds of warm-up per server and workload, before round 1
#   CLIENTS=4       dnsperf -c (UDP sockets)
#   OUTSTANDING=200 dnsperf -q (max queries in flight)
#   MAX_QPS=0       dnsperf -Q (0 = unlimited)
#   GEOLB=/work/main/target/release/geolb
#   GEOIP_DB=/work/main/geoip/GeoIP2-City-Test.mmdb
#   WAIT_QUIET=0    before each run, wait up to this many seconds for other
#                   processes to use < 10% of a core (0 = don't wait)
#   NOISY_RETRIES=0 re-measure a run up to this many times when other processes
#                   used > 5% of a core during it (the noisy row goes to discarded.tsv)
#   RESULTS_DIR=    where raw results go (default: a new /tmp/geolb-dns-bench.XXXXXX)
#
# Requires: dnsperf, gdnsd (3.x), knot (knotd 3.x), dig, taskset, python3.
#   apt-get install -y dnsperf gdnsd knot bind9-dnsutils
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DNSSEC=${DNSSEC:-0}
if ((DNSSEC)); then SERVERS=${SERVERS:-"geolb knot"}; else SERVERS=${SERVERS:-"geolb gdnsd knot"}; fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
MAX_QPS=${MAX_QPS:-0}
WAIT_QUIET=${WAIT_QUIET:-0}
NOISY_RETRIES=${NOISY_RETRIES:-0}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
GEOIP_DB=${GEOIP_DB:-/work/main/geoip/GeoIP2-City-Test.mmdb}
SERVER_CPU=0
LOAD_CPU=1
read -r -a WORKLOADS <<<"${WORKLOADS:-geo geo-ecs static mix}"
declare -A WL_QUERY=([geo]="api.mysite.com A" [geo-ecs]="api.mysite.com A" [static]="ns1.mysite.com A"
  [mix]=$'api.mysite.com A\nmysite.com MX\napi.mysite.com A\nnope.mysite.com A\napi.mysite.com AAAA\nmysite.com TXT\napi.mysite.com A\nns1.mysite.com A\nwww2.mysite.com AAAA\napi.mysite.com A')
# geo-ecs: every query carries Client Subnet 81.2.69.160/32 (London in the
# test database), so the server does a real database hit per query.
declare -A WL_ARGS=([geo-ecs]="-E 8:00012000510245a0")

declare -a PIDS=()          # every long-running process this script started
declare -A SERVER_PID=()
declare -A SERVER_PORT=()
declare -A GEO_MODE=()      # server -> how it answers the geo workload
declare -a TARGETS=()       # servers that started and answered

# ---------------------------------------------------------------- lifecycle

# ask PORT NAME : the A answer (dig +short), one line.
ask() { dig @127.0.0.1 -p "$1" "$2" A "${@:3}" +short +time=1 +tries=2 2>/dev/null | grep -E '^[0-9.]+$' | tr '\n' ' ' | sed 's/ $//'; }

# answers PORT : ns1.mysite.com has an A answer on PORT.
answers() { [[ -n $(ask "$1" ns1.mysite.com) ]]; }

# wait_dns PORT PID : until ns1.mysite.com answers (50 tries 0.2 s apart), or PID dies.
wait_dns() { wait_until "$2" 50 0.2 answers "$1"; }

# free_udp_tcp_ports N : N distinct loopback ports free for both UDP and TCP.
free_udp_tcp_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks, ports = [], []
while len(ports) < int(sys.argv[1]):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try: u.bind(("127.0.0.1", p))
    except OSError: t.close(); continue
    socks += [t, u]; ports.append(p)
print(" ".join(map(str, ports)))
EOF
}

# ---------------------------------------------------------------- configs

write_geolb_conf() {
  cat >"$WORK/geolb.toml" <<EOF
[runtime]
worker_threads = 1
shutdown_grace = "1s"

[geoip]
database = "$GEOIP_DB"

[dns]
listen = ["127.0.0.1:${SERVER_PORT[geolb]}"]

# RRL stays on, so its cost is measured, at a rate dnsperf's one address
# never reaches (the default, 1000 a second, would limit the benchmark).
[dns.rrl]
responses_per_second = 1000000

[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
records = [
  { name = "ns1", type = "A", value = "192.0.2.53" },
  { name = "@", type = "MX", value = "10 mail.mysite.com." },
  { name = "@", type = "TXT", value = "v=spf1 -all" },
  { name = "mail", type = "A", value = "192.0.2.25" },
]
$( ((DNSSEC)) && echo "dnssec = { keys = [{ file = \"$WORK/csk.pem\", role = \"csk\" }] }")

[[dns.geo]]
name = "api.mysite.com"

[[datacenter]]
name = "us-east"
location = { lat = 39.04, lon = -77.49 }
addresses = ["203.0.113.10"]
always_up = true

[[datacenter]]
name = "eu-west"
location = { lat = 53.35, lon = -6.26 }
addresses = ["198.51.100.10"]
always_up = true

[[datacenter]]
name = "ap-southeast"
location = { lat = 1.35, lon = 103.82 }
addresses = ["192.0.2.10"]
always_up = true
EOF
}

# zone_file API_LINE : the mysite.com zone in RFC 1035 form, with API_LINE for "api".
zone_file() {
  cat <<EOF
\$ORIGIN mysite.com.
\$TTL 300
@    IN SOA ns1.mysite.com. hostmaster.mysite.com. 1 3600 600 1209600 60
@    IN NS  ns1.mysite.com.
@    IN MX  10 mail.mysite.com.
@    IN TXT "v=spf1 -all"
ns1  IN A   192.0.2.53
mail IN A   192.0.2.25
$1
EOF
}

# write_gdnsd_conf geoip|static : gdnsd config dir; "static" = plain A for api.
write_gdnsd_conf() {
  local d=$WORK/gdnsd
  rm -rf "$d"; mkdir -p "$d/zones" "$d/geoip" "$d/run" "$d/state"
  ln -s "$GEOIP_DB" "$d/geoip/City.mmdb"
  {
    cat <<EOF
options => {
  listen => [ 127.0.0.1:${SERVER_PORT[gdnsd]} ]
  udp_threads => 1
  tcp_threads => 1
  run_dir => $d/run
  state_dir => $d/state
}
EOF
    [[ $1 == geoip ]] && cat <<'EOF'
plugins => {
  geoip => {
    maps => {
      bench => {
        geoip2_db => City.mmdb
        datacenters => [ us-east, eu-west, ap-southeast ]
        auto_dc_coords => {
          us-east => [ 39.04, -77.49 ]
          eu-west => [ 53.35, -6.26 ]
          ap-southeast => [ 1.35, 103.82 ]
        }
      }
    }
    resources => {
      api => {
        map => bench
        dcmap => {
          us-east => 203.0.113.10
          eu-west => 198.51.100.10
          ap-southeast => 192.0.2.10
        }
      }
    }
  }
}
EOF
  } >"$d/config"
  if [[ $1 == geoip ]]; then
    zone_file "api  30 DYNA geoip!api" >"$d/zones/mysite.com"
  else
    zone_file "api  30 IN A 203.0.113.10" >"$d/zones/mysite.com"
  fi
}

write_knot_conf() {
  local d=$WORK/knot
  mkdir -p "$d"
  zone_file "api  30 IN A 203.0.113.10" >"$d/mysite.com.zone"
  cat >"$d/knot.conf" <<EOF
server:
    listen: 127.0.0.1@${SERVER_PORT[knot]}
    rundir: $d
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: warning

database:
    storage: $d

template:
  - id: default
    storage: $d
    journal-content: none
    zonefile-sync: -1

$( ((DNSSEC)) && cat <<POLICY
# One P-256 CSK, as geolb's; Knot signs the zone when it loads it and
# answers from the stored signatures. (A policy is defined before use.)
policy:
  - id: csk
    algorithm: ecdsap256sha256
    single-type-signing: on

POLICY
)
zone:
  - domain: mysite.com
    file: $d/mysite.com.zone
$( ((DNSSEC)) && printf '    dnssec-signing: on\n    dnssec-policy: csk\n')
EOF
}

# ---------------------------------------------------------------- processes

# start_server NAME : start one server on CPU 0; returns non-zero (and says why) to skip it.
start_server() {
  local name=$1 logf="$RESULTS/logs/$1.log"
  case $name in
    geolb)
      [[ -x $GEOLB ]] || { log "SKIP geolb: binary $GEOLB not found (set GEOLB=)"; return 1; }
      if ((DNSSEC)); then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/csk.pem" 2>>"$logf" ||
          { log "SKIP geolb: openssl genpkey failed"; return 1; }
      fi
      write_geolb_conf
      "$GEOLB" check --config "$WORK/geolb.toml" >"$logf" 2>&1 || { log "SKIP geolb: config rejected: $(tail -3 "$logf")"; return 1; }
      GEO_MODE[geolb]="geo ([[dns.geo]])"
      start_bg "$SERVER_CPU" "$logf" env RUST_LOG="${RUST_LOG:-warn}" "$GEOLB" run --config "$WORK/geolb.toml"
      ;;
    gdnsd)
      ((DNSSEC)) && { log "SKIP gdnsd: it has no DNSSEC"; return 1; }
      write_gdnsd_conf geoip
      GEO_MODE[gdnsd]="geo (geoip plugin)"
      if ! gdnsd -c "$WORK/gdnsd" checkconf >"$logf" 2>&1; then
        log "gdnsd: geoip config rejected, FALLING BACK to a static A for api: $(grep -m2 -i error "$logf")"
        write_gdnsd_conf static
        GEO_MODE[gdnsd]="STATIC A (geoip fallback)"
        gdnsd -c "$WORK/gdnsd" checkconf >"$logf" 2>&1 || { log "SKIP gdnsd: config rejected: $(tail -3 "$logf")"; return 1; }
      fi
      start_bg "$SERVER_CPU" "$logf" gdnsd -c "$WORK/gdnsd" start
      ;;
    knot)
      write_knot_conf
      GEO_MODE[knot]="static A (no geo)"
      start_bg "$SERVER_CPU" "$logf" knotd -c "$WORK/knot/knot.conf" -s "$WORK/knot/knot.sock"
      ;;
    *) log "SKIP $name: unknown server (known: geolb gdnsd knot)"; return 1 ;;
  esac
  SERVER_PID[$name]=$STARTED_PID
  if ! wait_dns "${SERVER_PORT[$name]}" "$STARTED_PID"; then
    log "SKIP $name: no answer for ns1.mysite.com on port ${SERVER_PORT[$name]} within 10 s; log tail:"
    tail -5 "$logf" >&2
    return 1
  fi
  log "$name: pid $STARTED_PID on CPU $SERVER_CPU, port ${SERVER_PORT[$name]};" \
      "api -> $(ask "${SERVER_PORT[$name]}" api.mysite.com) [${GEO_MODE[$name]}]," \
      "api from London by ECS -> $(ask "${SERVER_PORT[$name]}" api.mysite.com +subnet=81.2.69.160/32)," \
      "ns1 -> $(ask "${SERVER_PORT[$name]}" ns1.mysite.com)"
  [[ -n $(ask "${SERVER_PORT[$name]}" api.mysite.com) ]] || { log "SKIP $name: no A answer for api.mysite.com"; return 1; }
}

# ---------------------------------------------------------------- measuring





run_dnsperf() {   # run_dnsperf SECONDS PORT WORKLOAD OUTFILE
  run_load "$1" "$4" \
    dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/$3.queries" -l "$1" -T 1 -c "$CLIENTS" -q "$OUTSTANDING" -t 1 \
      ${WL_ARGS[$3]:-} $( ((MAX_QPS > 0)) && echo "-Q $MAX_QPS") $( ((DNSSEC)) && echo "-D")
}

# Parse dnsperf output: qps sent completed lost noerror avg_latency_ms
parse_dnsperf() {
  awk '
    /Queries sent:/        { sent = $3 }
    /Queries completed:/   { done = $3 }
    /Queries lost:/        { lost = $3 }
    /Response codes:/      { noerr = ($3 == "NOERROR") ? $4 : 0 }
    /Queries per second:/  { qps = $4 }
    /Average Latency/      { lat = $4 * 1000 }
    END {
      if (qps == "") { print "NA\tNA\tNA\tNA\tNA\tNA"; exit }
      printf "%s\t%d\t%d\t%d\t%d\t%.3f\n", qps, sent, done, lost, noerr, lat
    }' "$1"
}

# measure ROUND SERVER WORKLOAD : one run, one row appended to results.tsv
measure() {
  local round=$1 t=$2 wl=$3 pid=${SERVER_PID[$2]}
  local out="$RESULTS/raw/r${round}-${t}-${wl}.dnsperf" p0 p1 c0 c1 t0 t1 f0 f1 row
  ((WAIT_QUIET > 0)) && wait_quiet
  f0=$(foreign_ticks); p0=$(ticks_of "$pid"); c0=$(cpu_snapshot); t0=$(date +%s.%N)
  run_dnsperf "$DURATION" "${SERVER_PORT[$t]}" "$wl" "$out"
  p1=$(ticks_of "$pid"); c1=$(cpu_snapshot); t1=$(date +%s.%N); f1=$(foreign_ticks)
  row=$(awk -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v c0="$c0" -v c1="$c1" \
            -v f0="$f0" -v f1="$f1" 'BEGIN {
      el = t1 - t0; split(c0, a, " "); split(c1, b, " ")
      foreign = 100 * (f1 - f0) / hz / el; if (foreign < 0) foreign = 0
      printf "%.1f\t%.1f\t%.1f\t%.1f\t%.2f", 100 * (p1 - p0) / hz / el,
        100 * (b[1] - a[1]) / (b[2] - a[2]), 100 * (b[3] - a[3]) / (b[4] - a[4]), foreign, el }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$wl" "$(parse_dnsperf "$out")" "$row" >>"$RESULTS/results.tsv"
  tail -1 "$RESULTS/results.tsv" | awk -F'\t' '{
    printf "  round %s %-6s %-6s %10s qps  lost %s  server %5s%%  cpu0 %5s%%  cpu1 %5s%%  foreign %5s%%%s\n",
      $1, $2, $3, $4, $7, $10, $11, $12, $13, ($13 > 5 ? "  << NOISY" : "") }' >&2
}

# ---------------------------------------------------------------- summary

summarize() {
  summary_python "$RESULTS/results.tsv" "$RESULTS/geo_modes.tsv" <<'EOF'
import sys
from summary import fmt, med, num, read_rows, warn_skewed
rows = read_rows(sys.argv[1])
modes = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]))
S = {}
for r in rows:
    S.setdefault((r["server"], r["workload"]), []).append(r)
summary = {}
for k, rs in S.items():
    s = {f: med(num(r[f]) for r in rs) for f in ("qps", "server_cpu", "cpu0", "cpu1", "foreign_cpu", "lat_ms")}
    s["noerror_pct"] = med(num(r["noerror"]) * 100 / num(r["completed"]) if num(r["completed"]) else None for r in rs)
    s["per_core"] = med(num(r["qps"]) * 100 / num(r["server_cpu"]) if num(r["qps"]) and num(r["server_cpu"]) else None for r in rs)
    s["lost"] = sum(int(num(r["lost"]) or 0) for r in rs)
    s["n"] = len(rs)
    summary[k] = s
order = ["geolb", "gdnsd", "knot"]
servers = sorted({k[0] for k in S}, key=lambda t: order.index(t) if t in order else 99)
print("| server | workload | answers with | runs | qps (median) | server CPU % | qps per core | per core vs gdnsd | per core vs knot | avg latency ms | lost | NOERROR % | CPU0 busy % | CPU1 busy % | foreign CPU % |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in ("geo", "geo-ecs", "static", "mix"):
    for t in servers:
        s = summary.get((t, w))
        if not s: continue
        def ratio(ref):
            r = summary.get((ref, w))
            return s["per_core"] / r["per_core"] if r and r["per_core"] and s["per_core"] else None
        geo = modes.get(t, "")
        how = {"static": "static A", "mix": geo + ", MX, TXT, NXDOMAIN"}.get(w, geo)
        print(f"| {t} | {w} | {how} | {s['n']} | {fmt(s['qps'], ',.0f')} | {fmt(s['server_cpu'], '.0f')} | "
              f"{fmt(s['per_core'], ',.0f')} | {fmt(ratio('gdnsd'), '.2f')} | {fmt(ratio('knot'), '.2f')} | "
              f"{fmt(s['lat_ms'], '.3f')} | {s['lost']} | {fmt(s['noerror_pct'], '.0f')} | {fmt(s['cpu0'], '.0f')} | {fmt(s['cpu1'], '.0f')} | {fmt(s['foreign_cpu'], '.0f')} |")
warn_skewed(rows, sys.argv[1])
EOF
}

# ---------------------------------------------------------------- main

preflight() {
  local c
  for c in dnsperf gdnsd knotd dig taskset python3; do
    command -v "$c" >/dev/null || log "warning: $c not found (apt-get install -y dnsperf gdnsd knot bind9-dnsutils)"
  done
  command -v dnsperf >/dev/null && command -v dig >/dev/null || die "dnsperf and dig are required"
  (($(nproc --all) >= 2)) || die "needs at least 2 CPUs (server on CPU 0, dnsperf on CPU 1)"
  ((ROUNDS >= 1 && DURATION >= 1 && WARMUP >= 0)) || die "bad ROUNDS/DURATION/WARMUP"
  [[ -r $GEOIP_DB ]] || die "GeoIP database $GEOIP_DB not readable"
  HZ=$(getconf CLK_TCK)
}

write_env() {
  {
    echo "date: $(date -Is)"
    echo "command: DNSSEC=$DNSSEC SERVERS='$SERVERS' ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING MAX_QPS=$MAX_QPS WAIT_QUIET=$WAIT_QUIET NOISY_RETRIES=$NOISY_RETRIES GEOLB=$GEOLB $0"
    echo "kernel: $(uname -r)  cpus: $(nproc --all)  model: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "dnsperf: $(dnsperf -h 2>&1 | grep -m1 -i version)"
    echo "gdnsd: $(gdnsd 2>&1 | grep -m1 version)"
    echo "knotd: $(knotd -V 2>&1 | head -1)"
    [[ -x $GEOLB ]] && echo "geolb: $GEOLB ($(stat -c '%y' "$GEOLB"))"
    echo "loadavg: $(cat /proc/loadavg)"
  } >"$RESULTS/env.txt"
}

main() {
  preflight
  RESULTS=${RESULTS_DIR:-$(mktemp -d /tmp/geolb-dns-bench.XXXXXX)}
  mkdir -p "$RESULTS/raw" "$RESULTS/logs" "$RESULTS/configs"
  WORK=$(mktemp -d /tmp/geolb-dns-work.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  log "results: $RESULTS"
  write_env

  local ports wl name
  read -ra ports <<<"$(free_udp_tcp_ports 3)"
  SERVER_PORT[geolb]=${ports[0]}; SERVER_PORT[gdnsd]=${ports[1]}; SERVER_PORT[knot]=${ports[2]}
  for wl in "${WORKLOADS[@]}"; do echo "${WL_QUERY[$wl]}" >"$WORK/$wl.queries"; done

  : >"$RESULTS/geo_modes.tsv"
  for name in $SERVERS; do
    if start_server "$name"; then
      TARGETS+=("$name")
      printf '%s\t%s\n' "$name" "${GEO_MODE[$name]}" >>"$RESULTS/geo_modes.tsv"
    elif [[ -n ${SERVER_PID[$name]:-} ]]; then
      stop_pids "${SERVER_PID[$name]}"; forget_pid "${SERVER_PID[$name]}"   # skipped: free CPU 0
    fi
  done
  cp -r "$WORK"/geolb.toml "$WORK"/gdnsd "$WORK"/knot "$RESULTS/configs/" 2>/dev/null
  ((${#TARGETS[@]})) || die "nothing to measure"
  log "targets: ${TARGETS[*]}; ${ROUNDS} rounds x ${#WORKLOADS[@]} workloads x ${DURATION}s"

  local t round i n=${#TARGETS[@]}
  if ((WARMUP > 0)); then
    for t in "${TARGETS[@]}"; do
      for wl in "${WORKLOADS[@]}"; do
        run_dnsperf "$WARMUP" "${SERVER_PORT[$t]}" "$wl" "$RESULTS/raw/warmup-$t-$wl.dnsperf"
      done
    done
    log "warm-up done"
  fi

  printf 'round\tserver\tworkload\tqps\tsent\tcompleted\tlost\tnoerror\tlat_ms\tserver_cpu\tcpu0\tcpu1\tforeign_cpu\telapsed_s\n' >"$RESULTS/results.tsv"
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

Median over $ROUNDS round(s) of ${DURATION}s; dnsperf -T 1 -c $CLIENTS -q $OUTSTANDING on CPU $LOAD_CPU, server on CPU $SERVER_CPU.
qps per core = qps x 100 / server CPU % (utime+stime of the server process; softirq time shows only in CPU0 busy %).
Knot has no geo: its "geo" row answers api.mysite.com from a static A, as a reference.
mix: per ten queries four geo A, one geo AAAA (NODATA), one MX, one TXT, one plain A and two NXDOMAIN: NOERROR % is 80 when a server answers it as the others do.
Queries come from 127.0.0.1 (no location in the test database): geolb and gdnsd answer in configured data-center order.
EOF
  ((DNSSEC)) && cat >>"$RESULTS/summary.md" <<EOF
DNSSEC=1: every query has DO=1 (dnsperf -D); geolb signs online (one P-256 CSK, signatures cached per RRset), Knot serves the signatures it made at load (dnssec-signing: on).
EOF
  log "raw results: $RESULTS (results.tsv, summary.md, raw/*.dnsperf, configs/, logs/, env.txt)"
}

main "$@"
