# Build: docker build -t geolb .
# Run:   docker run --rm --network host -v /etc/geolb:/etc/geolb geolb
# (the bundled example binds 127.0.0.1; mount a config that binds what you need)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY tests tests
COPY config config
COPY geoip geoip
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/geolb /usr/local/bin/geolb
COPY config/geolb.toml /etc/geolb/geolb.toml
USER nobody
EXPOSE 8080 9100
ENTRYPOINT ["/usr/local/bin/geolb"]
CMD ["run", "--config", "/etc/geolb/geolb.toml"]
