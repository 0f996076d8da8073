#!/usr/bin/env bash
# The size of /metrics and the time to render it for a large config: 1,000
# backends (100 pools of 10, each with a tcp check every 60 s), 100 data
# centers (one pool each) answering one geo name, one http listener routing
# to every pool by host, DNS. Scrapes SCRAPES times with curl and prints
# the size, the number of samples and the median / max time per scrape.
# Run by hand (never in CI).
#
#   GEOLB=target/release/geolb SCRAPES=50 benches/metrics.sh
set -u
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GEOLB=${GEOLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/geolb}
SCRAPES=${SCRAPES:-50}
WORK=$(mktemp -d /tmp/geolb-metrics.XXXXXX)
PIDS=()
trap cleanup EXIT
read -r ADMIN WEB DNS <<<"$(free_ports 3)"
python3 - "$WORK/geolb.toml" "$ADMIN" "$WEB" "$DNS" <<'EOF'
import sys
path, admin, web, dns = sys.argv[1:]
out = [f'[admin]\nlisten = "127.0.0.1:{admin}"\n',
       f'[dns]\nlisten = ["127.0.0.1:{dns}"]\n',
       '[[dns.zone]]\norigin = "example.test"\n'
       'soa = { mname = "ns1.example.test.", rname = "hostmaster.example.test.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }\n'
       'ns = ["ns1.example.test."]\n',
       '[[dns.geo]]\nname = "www.example.test"\n']
for p in range(100):
    # Addresses nothing listens on: every check fails, as many would in a
    # bad hour, and the series are the same as for passing ones.
    backends = ", ".join(f'{{ addr = "127.0.{p + 1}.{b + 1}:9" }}' for b in range(10))
    out.append(f'[[pool]]\nname = "pool{p:03}"\n'
               f'check = {{ kind = "tcp", interval = "60s", timeout = "1s" }}\n'
               f'backends = [{backends}]\n')
    out.append(f'[[datacenter]]\nname = "dc{p:03}"\n'
               f'location = {{ lat = {p * 1.7 - 85:.1f}, lon = {p * 3.5 - 175:.1f} }}\n'
               f'addresses = ["198.51.{p // 250}.{p % 250 + 1}"]\npools = ["pool{p:03}"]\n')
routes = ", ".join(f'{{ host = "h{p:03}.example.test", pool = "pool{p:03}" }}' for p in range(1, 100))
out.append(f'[[listener]]\nname = "web"\nbind = "127.0.0.1:{web}"\npool = "pool000"\nroutes = [{routes}]\n')
open(path, "w").write("\n".join(out))
EOF
"$GEOLB" run --config "$WORK/geolb.toml" >"$WORK/geolb.log" 2>&1 &
PIDS+=($!)
wait_until "$!" 100 0.1 curl -sf -o /dev/null "127.0.0.1:$ADMIN/metrics" || die "geolb did not start: $(tail -5 "$WORK/geolb.log")"
# One DNS answer and one HTTP request, so the families have values.
dig @127.0.0.1 -p "$DNS" www.example.test A +short +time=1 +tries=1 >/dev/null 2>&1
curl -s -o /dev/null "127.0.0.1:$WEB/"
curl -s "127.0.0.1:$ADMIN/metrics" >"$WORK/metrics.txt"
BYTES=$(wc -c <"$WORK/metrics.txt")
SAMPLES=$(grep -vc '^#' "$WORK/metrics.txt")
GZIP=$(gzip -c "$WORK/metrics.txt" | wc -c)
for ((i = 0; i < SCRAPES; i++)); do
  curl -s -o /dev/null -w '%{time_total}\n' "127.0.0.1:$ADMIN/metrics"
done | sort -n | awk -v bytes="$BYTES" -v samples="$SAMPLES" -v gz="$GZIP" '
  { t[NR] = $1 } END {
    printf "bytes=%d gzip=%d samples=%d scrapes=%d median_ms=%.1f max_ms=%.1f\n",
      bytes, gz, samples, NR, t[int((NR + 1) / 2)] * 1000, t[NR] * 1000 }'
# The largest families, by samples.
grep -v '^#' "$WORK/metrics.txt" | sed -E 's/[{ ].*//; s/_(bucket|sum|count)$//' | sort | uniq -c | sort -rn | head -8
