#!/usr/bin/env bash
# Compression throughput per core: geolb's `compress` beside nginx's
# `gzip on`, same gzip level, same backend (run by hand, never in CI).
#
# Layout (2-core machine):
#   CPU 0: the proxy under test, one worker (geolb worker_threads=1,
#          nginx worker_processes 1), compressing with gzip at LEVEL
#   CPU 1: wrk (-t1 -cCONNS, Accept-Encoding: gzip) and one nginx backend
#          serving English prose (text/plain) of each size, uncompressed
# Per body size, each proxy runs DURATION seconds (after WARMUP); the table
# gives req/s, MB/s of uncompressed input (req/s x body size), the ratio
# geolb/nginx, and the compressed size each proxy sent.
#
# Environment:
#   SIZES="16K 256K"   body sizes (head -c units)
#   LEVEL=1            gzip level for both (nginx's gzip_comp_level default)
#   GEOLB_LEVEL=LEVEL  geolb's level alone (zlib-rs's level 1 is zlib-ng's
#                      deflate_quick: faster than zlib's, larger output; a
#                      higher one compares at equal output size)
#   DURATION=8         seconds per measured run
#   WARMUP=2           seconds of warm-up per proxy and size
#   CONNS=16           wrk connections
#   GEOLB=/work/main/target/release/geolb
#
# Requires: nginx, wrk, taskset, curl, python3.
#   GEOLB=target/release/geolb benches/compression.sh
set -uo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES=${SIZES:-"16K 256K"}
LEVEL=${LEVEL:-1}
GEOLB_LEVEL=${GEOLB_LEVEL:-$LEVEL}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-16}
GEOLB=${GEOLB:-/work/main/target/release/geolb}
PROXY_CPU=0
LOAD_CPU=1
declare -a PIDS=()
declare -A TARGET_PID=()
WORK=$(mktemp -d /tmp/geolb-compression.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS/logs" "$RESULTS/raw" "$WORK/www"
trap cleanup EXIT
read -r BACKEND GEOLB_PORT NGINX_PORT <<<"$(free_ports 3)"

for size in $SIZES; do text_file "$WORK/www/$size.txt" "$size"; done

{
  nginx_common backend
  echo "http {"
  echo "    access_log off;"
  nginx_http_common backend
  echo "    default_type text/plain;"
  echo "    server { listen 127.0.0.1:$BACKEND; root $WORK/www; }"
  echo "}"
} >"$WORK/backend.conf"

write_geolb_conf() {
  geolb_one_pool_conf "$BACKEND" "$GEOLB_PORT" \
    "compress = { algorithms = [\"gzip\"], level = { gzip = $GEOLB_LEVEL } }" >"$WORK/geolb.toml"
}

write_nginx_proxy_conf() {
  {
    nginx_common proxy
    echo "http {"
    echo "    access_log off;"
    nginx_http_common proxy
    cat <<EOF
    upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
    gzip on;
    gzip_comp_level $LEVEL;
    gzip_types text/plain;
    gzip_min_length 1024;
    gzip_proxied any;
    gzip_vary on;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  } >"$WORK/nginx.conf"
}

start_bg "$LOAD_CPU" "$RESULTS/logs/backend.log" nginx -e "$WORK/backend-error.log" -p "$WORK" -c "$WORK/backend.conf"
wait_port "$BACKEND" "$STARTED_PID" || die "the backend nginx did not start"
start_proxy geolb "$GEOLB_PORT" || die "geolb did not start"
start_proxy nginx "$NGINX_PORT" || die "nginx did not start"
declare -A PORT=([geolb]=$GEOLB_PORT [nginx]=$NGINX_PORT)

# Both must answer gzip, and decode to the backend's bytes.
for p in geolb nginx; do
  for size in $SIZES; do
    curl -s --compressed -o "$WORK/check" "http://127.0.0.1:${PORT[$p]}/$size.txt"
    cmp -s "$WORK/check" "$WORK/www/$size.txt" || die "$p: /$size.txt does not decode to the original"
    curl -s -D "$WORK/head" -o "$WORK/gz-$p-$size" -H 'Accept-Encoding: gzip' "http://127.0.0.1:${PORT[$p]}/$size.txt"
    grep -qi '^content-encoding: gzip' "$WORK/head" || die "$p: /$size.txt not gzip-encoded"
  done
done

printf 'size\tproxy\treq/s\tinput_MB/s\tsent_bytes\tratio_geolb/nginx\n'
for size in $SIZES; do
  bytes=$(stat -c %s "$WORK/www/$size.txt")
  declare -A RPS=()
  for p in geolb nginx; do
    url="http://127.0.0.1:${PORT[$p]}/$size.txt"
    run_wrk "$WARMUP" /dev/null -c"$CONNS" -H 'Accept-Encoding: gzip' "$url"
    run_wrk "$DURATION" "$RESULTS/raw/$p-$size.txt" -c"$CONNS" -H 'Accept-Encoding: gzip' "$url"
    read -r rps errors < <(parse_wrk "$RESULTS/raw/$p-$size.txt" rps errors)
    [[ $errors == 0 ]] || log "$p $size: $errors errors"
    RPS[$p]=$rps
  done
  for p in geolb nginx; do
    python3 - "$size" "$p" "${RPS[$p]}" "$bytes" "$(stat -c %s "$WORK/gz-$p-$size")" "${RPS[geolb]}" "${RPS[nginx]}" <<'EOF'
import sys
size, proxy, rps, body, sent, g, n = sys.argv[1:]
rps, body = float(rps), int(body)
ratio = f"{float(g) / float(n):.2f}" if proxy == "geolb" else ""
print(f"{size}\t{proxy}\t{rps:.0f}\t{rps * body / 1e6:.1f}\t{sent}\t{ratio}")
EOF
  done
done
