#!/usr/bin/env bash
# Instructions per proxied HTTP request, counted by callgrind: unlike req/s
# it does not move with machine noise, so it is the number to track while
# working on the hot path (run by hand, never in CI).
#
# Requires: valgrind (callgrind_annotate), nginx, wrk, curl.
#   GEOLB=target/release/geolb benches/instructions.sh
set -u
GEOLB=${GEOLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/geolb}
DURATION=${DURATION:-10}
WORK=$(mktemp -d /tmp/geolb-instructions.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(free_port); WEB=$(free_port)
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello\n"; } }
}
CONF
cat > "$WORK/geolb.toml" <<CONF
[runtime]
worker_threads = 1
shutdown_grace = "1s"
[[pool]]
name = "p"
backends = [{ addr = "127.0.0.1:$BACKEND" }]
[[listener]]
name = "web"
bind = "127.0.0.1:$WEB"
pool = "p"
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$GEOLB" run --config "$WORK/geolb.toml" > "$WORK/vg.log" 2>&1 &
VG=$!
PIDS+=($VG)
for _ in $(seq 1 200); do curl -s -o /dev/null "127.0.0.1:$WEB/" && break; sleep 0.1; done
# Start-up is a few million instructions: negligible against 10k+ requests.
N=$(wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$WEB/" | awk '/requests in/ {print $1}')
kill -TERM $VG; wait $VG 2>/dev/null
[[ -n ${KEEP:-} ]] && cp "$WORK/cg.out" "$KEEP"
IR=$(callgrind_annotate "$WORK/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "requests=$N instructions=$IR per_request=$((IR / N))"
