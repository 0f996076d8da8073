#!/usr/bin/env bash
# What clients get when a proxy answers an upload before reading it (a
# 413 to a body over the limit): geolb beside nginx and HAProxy, each with
# a 1 MiB limit on request bodies, in front of one backend that reads a
# whole body and answers 200 (`reading_backend.py`; run by hand, never
# in CI).
#
# Clients, each RUNS times against each proxy (an 8 MiB body):
#   python-length   Python's http.client, Content-Length: it writes the
#                   whole body before it reads (as `requests` does), so a
#                   proxy that closes at once resets it: "BrokenPipeError"
#   python-chunked  the same, chunked: no length to judge, geolb counts the
#                   bytes as they pass, nginx as it buffers them; HAProxy
#                   has no such limit (its rule reads Content-Length) and
#                   forwards the body: the backend's 200
#   curl-h2         curl --http2-prior-knowledge: the answer, then
#                   RST_STREAM(NO_ERROR), which curl 7.88 may take for an
#                   error ("000": exit 92, no status)
#   nghttp-h2       nghttp -d over h2c, the same frames (if installed)
# Each cell counts the outcomes, e.g. "413 x5" or "413 x2, BrokenPipeError x3".
#
# Environment: RUNS (5), GEOLB (/work/main/target/release/geolb).
# Requires: nginx, haproxy, curl, python3; nghttp (nghttp2-client) if present.
#   GEOLB=target/release/geolb benches/early_answer.sh
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${RUNS:-5}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
declare -a PIDS=()
WORK=$(mktemp -d /tmp/geolb-early-answer.XXXXXX)
trap cleanup EXIT
for tool in nginx haproxy curl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $GEOLB ]] || die "no geolb binary at $GEOLB (cargo build --release)"
read -r BACKEND GEOLB_PORT HYPER_PORT NGINX_PORT NGINX_H2 HAPROXY_PORT HAPROXY_H2 <<<"$(free_ports 7)"
head -c $((8 << 20)) /dev/zero | tr '\0' u >"$WORK/upload.bin"

start_bg 1 "$WORK/backend.log" python3 "$BENCHES_DIR/reading_backend.py" "$BACKEND"
wait_port "$BACKEND" "$STARTED_PID" || die "the backend did not start: $(cat "$WORK/backend.log")"

{
  geolb_one_pool_conf "$BACKEND" "$GEOLB_PORT" 'max_body = "1MiB"'
  # The same through hyper's HTTP/1 server (its HTTP/2 is geolb's column's).
  printf '[[listener]]\nname = "hyper"\nbind = "127.0.0.1:%s"\npool = "p"\n' "$HYPER_PORT"
  printf 'max_body = "1MiB"\nhttp1_server = "hyper"\n'
} >"$WORK/geolb.toml"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events {}
http {
  access_log off;
  client_max_body_size 1m;
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://127.0.0.1:$BACKEND; } }
  server { listen 127.0.0.1:$NGINX_H2 http2; location / { proxy_pass http://127.0.0.1:$BACKEND; } }
}
EOF
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout client 10s
  timeout server 10s
  timeout connect 1s
frontend web
  bind 127.0.0.1:$HAPROXY_PORT
  bind 127.0.0.1:$HAPROXY_H2 proto h2
  http-request deny deny_status 413 if { req.hdr_val(content-length) gt 1048576 }
  default_backend reader
backend reader
  server s 127.0.0.1:$BACKEND
EOF

start_bg 0 "$WORK/geolb.log" "$GEOLB" run --config "$WORK/geolb.toml"
wait_port "$GEOLB_PORT" "$STARTED_PID" || die "geolb did not start: $(cat "$WORK/geolb.log")"
start_bg 0 "$WORK/nginx.log" nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_port "$NGINX_PORT" "$STARTED_PID" || die "nginx did not start: $(cat "$WORK/nginx.log")"
start_bg 0 "$WORK/haproxy.log" haproxy -f "$WORK/haproxy.cfg"
wait_port "$HAPROXY_PORT" "$STARTED_PID" || die "HAProxy did not start: $(cat "$WORK/haproxy.log")"

# python_upload PORT chunked|length : one upload; prints the status or the error.
python_upload() {
  python3 - "$1" "$2" <<'EOF'
import http.client, sys
port, how = int(sys.argv[1]), sys.argv[2]
body = b"u" * (8 << 20)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
try:
    if how == "chunked":
        pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
        conn.request("POST", "/up", body=pieces, encode_chunked=True)
    else:
        conn.request("POST", "/up", body=body)
    print(conn.getresponse().status)
except Exception as e:
    print(type(e).__name__)
EOF
}

# one CLIENT H1_PORT H2_PORT : one try of CLIENT; prints its outcome.
one() {
  case $1 in
    python-length) python_upload "$2" length ;;
    python-chunked) python_upload "$2" chunked ;;
    curl-h2) curl -s -o /dev/null -w '%{http_code}\n' --http2-prior-knowledge -H 'Expect:' \
      --data-binary "@$WORK/upload.bin" "http://127.0.0.1:$3/up" ;;
    nghttp-h2) nghttp -d "$WORK/upload.bin" "http://127.0.0.1:$3/up" 2>&1 \
      | grep -oE '413 (Payload|Request Entity)|exceeds the maximum' | head -1 \
      | sed -E 's/.+/413/' | grep . || echo "no answer" ;;
  esac
}

CLIENTS="python-length python-chunked curl-h2"
command -v nghttp >/dev/null && CLIENTS+=" nghttp-h2"
printf '| client | geolb | geolb, http1_server = "hyper" | nginx | HAProxy |\n|---|---|---|---|---|\n'
for client in $CLIENTS; do
  row="| $client"
  for ports in "$GEOLB_PORT $GEOLB_PORT" "$HYPER_PORT $HYPER_PORT" "$NGINX_PORT $NGINX_H2" \
    "$HAPROXY_PORT $HAPROXY_H2"; do
    # shellcheck disable=SC2086  # two ports
    cell=$(for ((i = 0; i < RUNS; i++)); do one "$client" $ports; done \
      | sort | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }')
    row+=" | $cell"
  done
  echo "$row |"
done
log "versions: $("$GEOLB" --version 2>&1 | head -1); $(nginx -v 2>&1); $(haproxy -v | head -1); $(curl --version | head -1 | cut -d' ' -f1-2)"
