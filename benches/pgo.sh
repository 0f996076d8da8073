#!/usr/bin/env bash
# A profile-guided (PGO) release build of geolb, trained on the load of the
# benches in this directory (run by hand, never in CI).
#
# 1. Builds geolb instrumented (rustc -Cprofile-generate) into
#    $TARGET_DIR/pgo-generate.
# 2. Runs it under the load of the HTTP, DNS and TCP benches, one short
#    round of each, so that each of those paths is in the profile, not only
#    the one measured next:
#      benches/http.sh: HTTP/1.1 with wrk's request and a browser's ("/",
#        "/1k", "/64k"), 1,000 connections, HTTP/2 clients over TLS, and
#        TLS and h2c backends;
#      benches/dns.sh:  its workloads over UDP (geo, geo-ecs, static, mix);
#      benches/tcp.sh:  a TCP listener (iperf3), when iperf3 is installed.
#    Each run starts geolb, loads it, and stops it with SIGTERM; geolb
#    exits cleanly and the instrumented binary writes its counts then.
# 3. Merges the counts with llvm-profdata, which must be the LLVM of rustc
#    (rustup's llvm-tools component: `rustup component add llvm-tools`).
# 4. Builds geolb again with the counts (-Cprofile-use) into
#    $TARGET_DIR/pgo-use/<host>/release/geolb and prints its path.
#
# The two builds are full release builds (fat LTO): several minutes each.
# Both go to their own target directories, so the ordinary build in
# target/release is left as it is. Build with --target so that RUSTFLAGS
# reach geolb and its libraries but not build scripts or proc macros (an
# instrumented proc macro would write its own counts while compiling).
#
# Environment (relative paths are taken from the directory the script is
# run from):
#   TARGET_DIR=target      where the two builds go (default: the
#                          repository's target/)
#   TRAIN_SECONDS=5        seconds per measured run while training
#   PROFDATA=              a merged profile to build with, skipping steps 1-3
#   LLVM_PROFDATA=         llvm-profdata to use (default: rustc's, from
#                          llvm-tools; else one on PATH of rustc's LLVM major)
#
# The counts and each training run's results stay in a new
# /tmp/geolb-pgo.XXXXXX (printed), for a look at what was trained.
#
# Requires what the benches it runs check for, though only geolb is
# trained (http.sh checks for HAProxy too; gdnsd and Knot are not needed):
# haproxy, nginx, wrk, h2load, openssl, dnsperf, dig, taskset, python3,
# curl; iperf3 for the TCP run (skipped without it).
#   apt-get install -y haproxy nginx-light wrk nghttp2-client dnsperf \
#     bind9-dnsutils iperf3
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # log, die
# absolute PATH : PATH taken from the caller's directory ("" stays "").
absolute() { if [[ -z $1 || $1 == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=$(absolute "${TARGET_DIR:-$ROOT/target}")
PROFDATA=$(absolute "${PROFDATA:-}")
LLVM_PROFDATA=$(absolute "${LLVM_PROFDATA:-}")
cd "$ROOT"
TRAIN_SECONDS=${TRAIN_SECONDS:-5}
HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

find_profdata() {
  if [[ -n ${LLVM_PROFDATA:-} ]]; then echo "$LLVM_PROFDATA"; return; fi
  local own
  own="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
  if [[ -x $own ]]; then echo "$own"; return; fi
  # `merge --version`: LLVM 14's llvm-profdata has no top-level --version.
  if command -v llvm-profdata >/dev/null &&
    llvm-profdata merge --version 2>&1 | grep -q "LLVM version $LLVM_MAJOR\."; then
    command -v llvm-profdata
    return
  fi
  die "no llvm-profdata of LLVM $LLVM_MAJOR (rustc's): rustup component add llvm-tools"
}

# run NAME SCRIPT VAR=VALUE... : one bench script against the instrumented
# geolb, its results kept in $runs/NAME (a failed run stops the build: a
# profile missing a path would make that path cold). The benches' own
# variables are cleared first, so that one exported in the caller's shell
# changes no run it was not meant for.
run() {
  local name=$1 script=$2
  shift 2
  log "training: $name"
  env -u PROXIES -u SERVERS -u BASELINE -u WORKLOADS -u CONNS -u CLIENT -u REQUEST \
    -u H2_STREAMS -u BACKEND_PROTO -u LISTENER -u PERF_SYSCALLS -u WAIT_QUIET \
    -u NOISY_RETRIES -u DNSSEC -u SPLICE -u RESULTS_DIR \
    "$@" GEOLB="$instrumented" ROUNDS=1 DURATION="$TRAIN_SECONDS" WARMUP=1 \
    RESULTS_DIR="$runs/$name" "benches/$script" >"$runs/$name.out" 2>&1 ||
    die "$script failed: $runs/$name.out"
}

train() {
  local http=(PROXIES=geolb BASELINE=0)
  run http1 http.sh "${http[@]}" WORKLOADS="tiny 1k 64k"
  run http1-browser http.sh "${http[@]}" REQUEST=browser WORKLOADS="tiny 1k"
  run http1-1000-connections http.sh "${http[@]}" CONNS=1000 REQUEST=browser WORKLOADS=tiny
  run http2-tls http.sh "${http[@]}" CLIENT=h2 WORKLOADS="tiny 1k"
  run http2-tls-browser http.sh "${http[@]}" CLIENT=h2 REQUEST=browser WORKLOADS=tiny
  run tls-backends http.sh "${http[@]}" BACKEND_PROTO=tls WORKLOADS=tiny
  run h2c-backends http.sh "${http[@]}" BACKEND_PROTO=h2c WORKLOADS=tiny
  run dns dns.sh SERVERS=geolb
  if command -v iperf3 >/dev/null; then
    run tcp tcp.sh PROXIES=geolb BASELINE=0
  else
    log "no iperf3: the TCP listener is not trained"
  fi
}

if [[ -z ${PROFDATA:-} ]]; then
  profdata_tool=$(find_profdata)
  work=$(mktemp -d /tmp/geolb-pgo.XXXXXX)
  counts=$work/counts runs=$work/runs
  mkdir -p "$counts" "$runs"
  log "counts and training runs: $work"
  log "building instrumented geolb (a full release build)"
  # CARGO_ENCODED_RUSTFLAGS: a path with a space stays one flag.
  CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$counts" cargo build --release --bin geolb \
    --target "$HOST" --target-dir "$TARGET_DIR/pgo-generate"
  instrumented="$TARGET_DIR/pgo-generate/$HOST/release/geolb"
  train
  compgen -G "$counts/*.profraw" >/dev/null || die "training wrote no counts in $counts"
  PROFDATA="$TARGET_DIR/geolb.profdata"
  "$profdata_tool" merge -o "$PROFDATA" "$counts"/*.profraw
  log "profile: $PROFDATA"
fi
[[ -f $PROFDATA ]] || die "no profile at $PROFDATA"
log "building geolb with the profile (a full release build)"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$PROFDATA" cargo build --release --bin geolb \
  --target "$HOST" --target-dir "$TARGET_DIR/pgo-use"
echo "$TARGET_DIR/pgo-use/$HOST/release/geolb"
