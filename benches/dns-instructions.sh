#!/usr/bin/env bash
# Instructions per DNS query in geolb's UDP thread, counted by callgrind:
# a cost measure that the load of a shared machine does not blur (unlike
# qps). Starts BINARY under valgrind, warms up with 2,000 queries, zeroes
# the counters, sends COUNT queries with dnsperf (-c 1 -q 20), dumps, and
# prints the UDP thread's instructions / COUNT (user space only: the
# kernel's share of a query is not counted). The same query is sent COUNT
# times: one the fast path leaves is, after the warm-up, answered from the
# UDP thread's packet cache when its reply is the same for every client
# (NXDOMAIN, NODATA, MX, TXT...); the general path itself is counted only
# for replies the cache does not keep (geo answers with ECS, cookies, DO on
# a signed zone).
#
#   benches/dns-instructions.sh BINARY 'DNS KEYS' 'QUERY' [DNSPERF ARGS...]
#   e.g. benches/dns-instructions.sh target/release/geolb \
#          $'[dns.rrl]\nresponses_per_second = 1000000' 'api.mysite.com A'
#        ... 'api.mysite.com A' -E 10:0102030405060708   # with a COOKIE
#
# ZONE_KEYS: more keys of the zone, e.g. a signed one with DO queries:
#   ZONE_KEYS='dnssec = { keys = [{ file = "/tmp/csk.pem", role = "csk" }] }' \
#     benches/dns-instructions.sh target/release/geolb ... 'api.mysite.com A' -D
#
# Requires valgrind, dnsperf, dig. COUNT=20000 by default.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=$1 KEYS=$2 QUERY=$3
shift 3
COUNT=${COUNT:-20000}
GEOIP_DB=${GEOIP_DB:-$(dirname "$0")/../geoip/GeoIP2-City-Test.mmdb}
D=$(mktemp -d /tmp/geolb-dns-instructions.XXXXXX)
read -r PORT <<<"$(free_ports 1)"
cat >"$D/geolb.toml" <<CONF
[runtime]
worker_threads = 1
# Not the machine's /var/lib/geolb, whose overrides would apply.
state_dir = "$D/geolb-state"
[geoip]
database = "$(realpath "$GEOIP_DB")"
[dns]
listen = ["127.0.0.1:$PORT"]
$KEYS
[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
records = [{ name = "ns1", type = "A", value = "192.0.2.53" }]
${ZONE_KEYS:-}
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
CONF
echo "$QUERY" >"$D/queries.txt"
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$D/cg.out" \
  "$BIN" run --config "$D/geolb.toml" >"$D/log" 2>&1 &
VG=$!
for _ in $(seq 1 100); do
  dig +short +tries=1 +time=1 -p "$PORT" @127.0.0.1 ns1.mysite.com >/dev/null 2>&1 && break
  sleep 0.5
done
dnsperf -s 127.0.0.1 -p "$PORT" -d "$D/queries.txt" -n 2000 -c 1 -q 20 "$@" >"$D/warmup.txt" 2>&1
callgrind_control -z "$VG" >/dev/null
dnsperf -s 127.0.0.1 -p "$PORT" -d "$D/queries.txt" -n "$COUNT" -c 1 -q 20 "$@" >"$D/dnsperf.txt" 2>&1
callgrind_control -d "$VG" >/dev/null
sleep 1
kill -TERM "$VG"
wait "$VG" || true
# The dump's busiest thread is the UDP thread.
MAX=$(for f in "$D"/cg.out.1-*; do grep -m1 '^totals:' "$f" | awk '{print $2}'; done | sort -n | tail -1)
LOST=$(awk '/Queries lost/ {print $3}' "$D/dnsperf.txt")
echo "$(python3 -c "print(round($MAX / $COUNT))") instructions per query (queries lost: $LOST)"
rm -rf "$D"
