#!/usr/bin/env bash
# Instructions per proxied HTTP request, counted by callgrind: unlike req/s
# it does not move with machine noise, so it is the number to track while
# working on the hot path (run by hand, never in CI).
#
# Requires: valgrind (callgrind_annotate), nginx, wrk, curl.
#   GEOLB=target/release/geolb benches/instructions.sh
# LISTENER: more lines for the listener (a rule's cost: run with and
# without), e.g. LISTENER='request_id = false'; URL_PATH: the path wrk asks
# for (default /), e.g.:
#   LISTENER='routes = [{ path_prefix = "/api/", pool = "p", strip_prefix = true, methods = ["GET"], allow = ["127.0.0.0/8"] }]' \
#   URL_PATH=/api/x GEOLB=target/release/geolb benches/instructions.sh
# BODY=16k: the backend answers a 16 KiB text file (text/plain) instead of
# "hello\n" (any size head -c takes, up to ~300 KB). COMPRESS=gzip (or br,
# zstd): geolb's listener has compress = { algorithms = [COMPRESS] } and
# wrk sends Accept-Encoding: COMPRESS.
#   BODY=16k COMPRESS=gzip GEOLB=target/release/geolb benches/instructions.sh
set -u
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GEOLB=${GEOLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/geolb}
DURATION=${DURATION:-10}
LISTENER=${LISTENER:-}
URL_PATH=${URL_PATH:-/}
WORK=$(mktemp -d /tmp/geolb-instructions.XXXXXX)
PIDS=()
trap cleanup EXIT
read -r BACKEND WEB <<<"$(free_ports 2)"
BODY=${BODY:-}
COMPRESS=${COMPRESS:-}
LOCATION='location / { return 200 "hello\n"; }'
if [[ -n $BODY ]]; then
  mkdir -p "$WORK/www"
  chmod 755 "$WORK"   # nginx's workers run as nobody: mktemp's 0700 would give 403
  text_file "$WORK/www/body.txt" "${BODY/k/K}"
  LOCATION="location / { root $WORK/www; default_type text/plain; }"
fi
[[ -z $BODY ]] || URL_PATH=/body.txt
COMPRESS_LINE=${COMPRESS:+"compress = { algorithms = [\"$COMPRESS\"] }"}
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; $LOCATION }
}
CONF
geolb_one_pool_conf "$BACKEND" "$WEB" "$LISTENER"$'\n'"$COMPRESS_LINE" >"$WORK/geolb.toml"
nginx -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$GEOLB" run --config "$WORK/geolb.toml" > "$WORK/vg.log" 2>&1 &
VG=$!
PIDS+=($VG)
wait_until "$VG" 200 0.1 curl -s -o /dev/null "127.0.0.1:$WEB/"
WRK_HEADER=()
[[ -n $COMPRESS ]] && WRK_HEADER=(-H "Accept-Encoding: $COMPRESS")
HEAD=$(curl -s -D - -o /dev/null "${WRK_HEADER[@]}" "127.0.0.1:$WEB$URL_PATH")
[[ $HEAD == "HTTP/1.1 200"* ]] || { echo "not 200: $HEAD" >&2; exit 1; }
[[ -z $COMPRESS || ${HEAD,,} == *"content-encoding: $COMPRESS"* ]] || { echo "not $COMPRESS: $HEAD" >&2; exit 1; }
# Start-up is a few million instructions: negligible against 10k+ requests.
N=$(wrk -t1 -c8 -d"${DURATION}s" "${WRK_HEADER[@]}" "http://127.0.0.1:$WEB$URL_PATH" | awk '/requests in/ {print $1}')
kill -TERM "$VG"; forget_pid "$VG"   # no SIGKILL: callgrind writes its output at exit
[[ -n ${KEEP:-} ]] && cp "$WORK/cg.out" "$KEEP"
IR=$(callgrind_annotate "$WORK/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "requests=$N instructions=$IR per_request=$((IR / N))"
