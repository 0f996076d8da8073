#!/usr/bin/env bash
# Instructions per DNS query over UDP, counted by callgrind: geolb answers
# QUERIES geo queries (one geo name, three data centers, the MaxMind test
# database) sent by dnsperf, with ECS when ECS=1. Start-up is subtracted:
# a run answering one query measures it. Run by hand (never in CI).
#
# Requires: valgrind (callgrind_annotate), dnsperf, dig.
#   GEOLB=target/release/geolb QUERIES=50000 ECS=1 benches/instructions-dns.sh
set -u
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GEOLB=${GEOLB:-$ROOT/target/release/geolb}
GEOIP_DB=${GEOIP_DB:-$ROOT/geoip/GeoIP2-City-Test.mmdb}
QUERIES=${QUERIES:-50000}
WORK=$(mktemp -d /tmp/geolb-instructions-dns.XXXXXX)
PIDS=()
trap cleanup EXIT
read -r PORT <<<"$(free_ports 1)"
cat >"$WORK/geolb.toml" <<CONF
[runtime]
worker_threads = 1
shutdown_grace = "1s"
[geoip]
database = "$GEOIP_DB"
[dns]
listen = ["127.0.0.1:$PORT"]
udp_threads = 1
[[dns.zone]]
origin = "mysite.com"
soa = { mname = "ns1.mysite.com.", rname = "hostmaster.mysite.com.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }
ns = ["ns1.mysite.com."]
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
CONF
echo "api.mysite.com A" >"$WORK/queries"
# London in the test database: a database hit per query.
ECS_ARGS=()
[[ ${ECS:-0} == 1 ]] && ECS_ARGS=(-E 8:00012000510245a0)

# callgrind_run N : instructions of a run asked N queries (dig's one, then
# dnsperf's). Per query divides by dnsperf's completed count: a lost query
# was dropped by the kernel while geolb under valgrind lagged, never
# reaching geolb.
callgrind_run() {
  local out=$WORK/cg.$1 vg
  valgrind --tool=callgrind --callgrind-out-file="$out" "$GEOLB" run --config "$WORK/geolb.toml" >"$WORK/vg.log" 2>&1 &
  vg=$!
  PIDS+=("$vg")
  wait_until "$vg" 300 0.2 sh -c "dig @127.0.0.1 -p $PORT api.mysite.com A +short +time=1 +tries=1 | grep -q ." || die "geolb did not answer"
  if (($1 > 1)); then
    dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries" -n "$(($1 - 1))" -q 10 -t 30 "${ECS_ARGS[@]}" >"$WORK/dnsperf.$1" 2>&1
  fi
  kill -TERM "$vg"; forget_pid "$vg"   # callgrind writes its output at exit
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'
}
BASE=$(callgrind_run 1)
IR=$(callgrind_run "$QUERIES")
COMPLETED=$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf.$QUERIES")
echo "queries=$QUERIES completed=$COMPLETED ecs=${ECS:-0} instructions=$((IR - BASE)) per_query=$(((IR - BASE) / COMPLETED))"
