#!/usr/bin/env bash
# Uploads through geolb to an HTTP/2 (h2c) nginx backend that closes each
# connection gracefully after KEEPALIVE_REQUESTS requests (a GOAWAY naming
# the last stream it took, as nginx does after `keepalive_requests`,
# 1,000 by default): how many of the POSTs fail (wrk's non-2xx count),
# and how many requests a second go through (run by hand, never in CI).
#
# Each stream past a GOAWAY was not acted on by nginx (RFC 9113 §6.8)
# and is sent again by geolb with its body, when the body is at most
# 64 KiB; a build before that turned each into a 502.
#
#   GEOLB=target/release/geolb benches/h2c_uploads.sh
#   KEEPALIVE_REQUESTS=1000 BODY_BYTES=2048 GEOLB=... benches/h2c_uploads.sh
#
# Environment: GEOLB, KEEPALIVE_REQUESTS (100), BODY_BYTES (2048), CONNS
# (64), DURATION (10 s). geolb on CPU 0 (worker_threads = 1), nginx and
# wrk on CPU 1. Requires: nginx, wrk, python3.
set -u
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GEOLB=${GEOLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/geolb}
KEEPALIVE_REQUESTS=${KEEPALIVE_REQUESTS:-100}
BODY_BYTES=${BODY_BYTES:-2048}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
[[ -x $GEOLB ]] || die "no geolb binary at $GEOLB"
command -v nginx >/dev/null || die "nginx not found"
command -v wrk >/dev/null || die "wrk not found"
WORK=$(mktemp -d /tmp/geolb-h2c-uploads.XXXXXX)
mkdir -p "$WORK/tmp"
chmod 755 "$WORK"
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM
read -r BACKEND PORT <<<"$(free_ports 2)"

cat >"$WORK/backend.conf" <<CONF
$([[ $EUID -eq 0 ]] && echo "user root;")
worker_processes 1;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp;
  keepalive_requests $KEEPALIVE_REQUESTS;
  server {
    listen 127.0.0.1:$BACKEND http2;
    location / { return 200 "ok\n"; }
  }
}
CONF
geolb_one_pool_conf "$BACKEND" "$PORT" | sed '/^backends = /a backend_protocol = "h2c"' >"$WORK/geolb.toml"
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("x", $BODY_BYTES)
LUA

start_bg 1 "$WORK/backend.log" nginx -c "$WORK/backend.conf" -p "$WORK"
wait_port "$BACKEND" "$STARTED_PID" || die "nginx did not start: $(tail -3 "$WORK/backend-error.log")"
start_bg 0 "$WORK/geolb.log" "$GEOLB" run --config "$WORK/geolb.toml"
wait_port "$PORT" "$STARTED_PID" || die "geolb did not start: $(tail -3 "$WORK/geolb.log")"
log "$($GEOLB --version 2>/dev/null | head -1): $CONNS connections, ${BODY_BYTES}-byte POSTs, nginx keepalive_requests $KEEPALIVE_REQUESTS, ${DURATION}s"
taskset -c 1 timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/post.lua" \
  "http://127.0.0.1:$PORT/" >"$WORK/wrk.out" 2>&1
requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
failed=$(awk '/Non-2xx or 3xx responses/ {print $NF}' "$WORK/wrk.out")
rate=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
printf 'requests\tfailed\treq/s\n%s\t%s\t%s\n' "${requests:-NA}" "${failed:-0}" "${rate:-NA}"
