# geolb container image.
#
# Build:  docker build -t geolb .
#         (--build-arg GEOLB_TARGET_CPU=x86-64-v3: for CPUs with AVX2)
# Run:    docker run -d --name geolb \
#           -p 80:80 -p 53:53/udp -p 53:53/tcp -p 127.0.0.1:9100:9100 \
#           -v /srv/geolb/geolb.toml:/etc/geolb/geolb.toml:ro \
#           -v geolb-state:/var/lib/geolb geolb
# Reload: docker kill -s HUP geolb
#
# The bundled config (config/docker.toml) is an example: mount your own at
# /etc/geolb/geolb.toml. tests/container.rs checks this file against the
# repository (every COPY source exists, the shipped config passes
# `geolb check` laid out as in the image, EXPOSE covers its ports, the base
# images are pinned, the HEALTHCHECK command works).
#
# Base images are pinned by version tag and by digest (the tag is for
# humans; a tag can be pushed again, a digest cannot). To move to newer
# ones, change both: `docker buildx imagetools inspect <tag>` prints the
# digest. rust:1.88 is the crate's rust-version.

FROM rust:1.88-slim-bookworm@sha256:38bc5a86d998772d4aec2348656ed21438d20fcdce2795b56ca434cf21430d89 AS build
WORKDIR /src
# protoc: the etcd client ([cluster]) compiles etcd's .proto files.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock build.rs ./
# benches: Cargo.toml names a bench target, which must exist to build at
# all; geoip: `geolb demo` carries the test database in the binary.
COPY src src
COPY benches benches
COPY geoip geoip
# Stripped for the image only: the repository's release profile keeps line
# tables for readable backtraces.
# No .git in the context: the commit in geolb_build_info comes from
# `--build-arg GEOLB_COMMIT=$(git rev-parse --short HEAD)`, else "unknown".
ARG GEOLB_COMMIT=
# The CPU to build for (rustc's -C target-cpu), e.g. x86-64-v3 for the
# x86-64 CPUs with AVX2 (Intel since Haswell, AMD since Zen): about 6 % fewer
# instructions a proxied request, and an image that refuses to start, saying
# why, on a CPU without them. Empty: the toolchain's default, which runs on
# every CPU of the architecture (README "Building for the CPU").
ARG GEOLB_TARGET_CPU=
RUN if [ -n "$GEOLB_TARGET_CPU" ]; then export RUSTFLAGS="-C target-cpu=$GEOLB_TARGET_CPU"; fi \
 && GEOLB_COMMIT=$GEOLB_COMMIT cargo build --release --locked --bin geolb --config profile.release.strip=true

FROM debian:bookworm-20251229-slim@sha256:d5d3f9c23164ea16f31852f95bd5959aad1c5e854332fe00f7b3a20fcc9f635c
COPY --from=build /src/target/release/geolb /usr/local/bin/geolb
# cap_net_bind_service lets the non-root user bind 53 and 80. File
# capabilities do not survive COPY, so they are set here, with setcap
# installed and removed in the same layer. A container started with
# `--cap-drop ALL` must add it back (`--cap-add NET_BIND_SERVICE`), or the
# kernel refuses to execute the binary.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep /usr/local/bin/geolb \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 geolb \
 && useradd --system --uid 10001 --gid geolb --home-dir /var/lib/geolb \
      --no-create-home --shell /usr/sbin/nologin geolb \
 && install -d -o geolb -g geolb -m 0750 /var/lib/geolb
COPY config/docker.toml /etc/geolb/geolb.toml
# MaxMind's test database with its license notice (Apache-2.0 OR MIT).
COPY geoip/GeoIP2-City-Test.mmdb geoip/README.md /usr/share/geolb/geoip/
# Numeric, so that a runtime can verify the user is not root.
USER 10001:10001
EXPOSE 80 443 53/udp 53/tcp 9100
# bash (essential in Debian) speaks to the admin listener through
# /dev/tcp: no curl or wget in the image just for this. A config whose
# admin listener is not on port 9100 needs its own HEALTHCHECK (or
# `--no-healthcheck`).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == 'HTTP/1.'[01]' 200 '* ]]"]
ENTRYPOINT ["geolb", "run", "--config", "/etc/geolb/geolb.toml"]
