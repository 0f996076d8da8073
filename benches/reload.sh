#!/usr/bin/env bash
# Reload and failover benchmark (run by hand, never in CI).
#
#   1. reload time (POST /reload until the new config serves, as geolb
#      reports it in "took_ms") for configs with 10, 1,000 and 10,000
#      backends, median of RELOADS_PER_SIZE reloads;
#   2. failed requests during 100 reloads under wrk load (two configs
#      alternating, adding and removing a backend and a pool);
#   3. memory after the first reload and after 1,000 reloads: heap bytes
#      from the allocator (geolb_allocated_bytes, in a binary built with
#      `cargo build --release --features alloc-stats`) and RSS/VmHWM;
#   4. time from a data center's only backend dying to DNS answers moving,
#      with 200 ms checks (fall = 2), polled with dig every 10 ms.
#
# Requires: nginx, wrk, dig (dnsutils), curl, python3, taskset.
# geolb on CPU 0, everything else on CPU 1. Every loop is bounded.
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GEOLB=${GEOLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/geolb}
RELOADS_PER_SIZE=${RELOADS_PER_SIZE:-5}
SIZES=${SIZES:-"10 1000 10000"}
PARTS=${PARTS:-"1 2 3 4"}   # which of the four measurements to run
WORK=$(mktemp -d /tmp/geolb-reload-bench.XXXXXX)
PIDS=()
trap cleanup EXIT
LOAD_CPU=1

read -r B1 B2 ADMIN WEB DNS <<<"$(free_ports 5)"

# One nginx with two ports serves as the live backends.
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; location / { return 200 "ok\n"; } }
}
EOF
start_bg "$LOAD_CPU" /dev/null nginx -c "$WORK/nginx.conf" -p "$WORK"

start_geolb() { # config file
  start_bg 0 "$WORK/geolb.log" "$GEOLB" run --config "$1"
  GEOLB_PID=$STARTED_PID
  wait_until "$GEOLB_PID" 200 0.05 curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && return 0
  log "geolb did not start:"; cat "$WORK/geolb.log" >&2; exit 1
}
stop_geolb() { stop_pids "$GEOLB_PID"; forget_pid "$GEOLB_PID"; }

head_config() {
  # Its own state directory: overrides left in /var/lib/geolb would apply.
  printf '[admin]\nlisten = "127.0.0.1:%s"\n[runtime]\nworker_threads = 1\nshutdown_grace = "1s"\nstate_dir = "%s"\n' "$ADMIN" "$WORK/state"
}

# ---- 1. reload time by size
sized_config() { # n
  head_config
  python3 - "$1" "$B1" <<'PY'
import sys
n, port = int(sys.argv[1]), sys.argv[2]
print('[[pool]]\nname = "big"\nbackends = [')
for i in range(n):
    # Distinct addresses; only the first is live (no checks here: the
    # reload itself is measured, not health).
    print(f'  {{ addr = "127.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}:{port if i == 0 else 10000 + (i % 50000)}" }},')
print(']')
PY
  printf '[[listener]]\nname = "web"\nbind = "127.0.0.1:%s"\npool = "big"\n' "$WEB"
}
part() { [[ " $PARTS " == *" $1 "* ]]; }
if part 1; then
echo "| backends | reload took (median of $RELOADS_PER_SIZE, ms) |"
echo "|---:|---:|"
for n in $SIZES; do
  sized_config "$n" > "$WORK/sized.toml"
  start_geolb "$WORK/sized.toml"
  times=()
  for _ in $(seq 1 "$RELOADS_PER_SIZE"); do
    t=$(curl -s -X POST "http://127.0.0.1:$ADMIN/reload" | python3 -c 'import json,sys; print(json.load(sys.stdin)["took_ms"])')
    times+=("$t")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "| $n | $median |"
  stop_geolb
done
fi

# ---- 2. failed requests during 100 reloads under wrk
alt_config() { # extra (0/1)
  head_config
  if [ "$1" = 1 ]; then
    printf '[[pool]]\nname = "p"\nbackends = [{ addr = "127.0.0.1:%s" }, { addr = "127.0.0.1:%s" }]\n' "$B1" "$B2"
    printf '[[pool]]\nname = "extra"\nbackends = [{ addr = "127.0.0.1:%s" }]\n' "$B2"
    printf '[[listener]]\nname = "web"\nbind = "127.0.0.1:%s"\npool = "p"\nroutes = [{ path_prefix = "/extra/", pool = "extra" }]\n' "$WEB"
  else
    printf '[[pool]]\nname = "p"\nbackends = [{ addr = "127.0.0.1:%s" }]\n' "$B1"
    printf '[[listener]]\nname = "web"\nbind = "127.0.0.1:%s"\npool = "p"\n' "$WEB"
  fi
}
if part 2 || part 3; then
alt_config 0 > "$WORK/alt.toml"
start_geolb "$WORK/alt.toml"
taskset -c 1 wrk -t1 -c32 -d25s "http://127.0.0.1:$WEB/" > "$WORK/wrk.txt" 2>&1 &
WRK=$!
sleep 1
for i in $(seq 1 100); do
  alt_config $((i % 2)) > "$WORK/alt.toml"
  curl -s -o /dev/null -X POST "http://127.0.0.1:$ADMIN/reload"
  sleep 0.2
done
wait $WRK
requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
errors=$(awk '/Socket errors|Non-2xx/ {print}' "$WORK/wrk.txt")
echo
echo "100 reloads under wrk -c32: $requests requests, failures: ${errors:-none}"

# ---- 3. memory after 1 and 1,000 reloads
rss() {
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^geolb_allocated_bytes/ {printf "heap %s bytes  ", $2}'
  awk '/^(VmRSS|VmHWM)/ {printf "%s %s kB  ", $1, $2}' "/proc/$GEOLB_PID/status"
}
curl -s -o /dev/null -X POST "http://127.0.0.1:$ADMIN/reload"
after_one=$(rss)
for i in $(seq 1 1000); do
  alt_config $((i % 2)) > "$WORK/alt.toml"
  curl -s -o /dev/null -X POST "http://127.0.0.1:$ADMIN/reload"
done
echo "memory after 1 more reload:   $after_one"
echo "memory after 1,000 reloads:   $(rss)"
stop_geolb
fi

# ---- 4. data-center death to DNS move, 200 ms checks
part 4 || exit 0
cat > "$WORK/dc.toml" <<EOF
$(head_config)
[dns]
listen = ["127.0.0.1:$DNS"]
[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
[[dns.geo]]
name = "api.mysite.com"
[[datacenter]]
name = "one"
location = { lat = 0, lon = 0 }
addresses = ["192.0.2.1"]
pools = ["one"]
[[datacenter]]
name = "two"
location = { lat = 0, lon = 1 }
addresses = ["192.0.2.2"]
always_up = true
[[pool]]
name = "one"
check = { kind = "http", path = "/", interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }
backends = [{ addr = "127.0.0.1:$B1" }]
EOF
start_geolb "$WORK/dc.toml"
before=$(dig +short -p "$DNS" @127.0.0.1 api.mysite.com)
kill "$(cat "$WORK/nginx.pid")"
t0=$(date +%s%N)
moved=""
for _ in $(seq 1 500); do
  a=$(dig +short +tries=1 +time=1 -p "$DNS" @127.0.0.1 api.mysite.com)
  if [ -n "$a" ] && [ "$a" != "$before" ]; then moved=$a; break; fi
  sleep 0.01
done
t1=$(date +%s%N)
echo "data center death -> DNS answer $before -> ${moved:-unchanged}: $(( (t1 - t0) / 1000000 )) ms (interval 200ms, fall 2)"
stop_geolb
