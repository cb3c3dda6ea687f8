# Multi-stage build: compile with the Rust toolchain, run on a slim base as a
# numeric non-root user (10001) with the store on a volume.
#   docker build -t gapless .
#   docker run --stop-timeout 30 -v gapless-data:/var/lib/gapless \
#     -v ./gapless.toml:/etc/gapless/gapless.toml:ro -e VCD_PASSWORD gapless
# Stop grace: SIGTERM drains within shutdown_timeout (default 15 s); give
# docker stop at least that plus a margin (--stop-timeout 30, or compose's
# stop_grace_period: 30s), or the drain is killed (the default is 10 s).
# Health: the binary asks its own admin endpoint (admin.listen, default
# 127.0.0.1:9464 inside the container), so the image needs no curl.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY examples examples
RUN cargo build --release --locked --bin gapless

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gapless \
 && useradd --system --uid 10001 --gid 10001 --home /var/lib/gapless --shell /usr/sbin/nologin gapless \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/gapless \
 && install -d -m 0755 /etc/gapless
COPY --from=build /src/target/release/gapless /usr/local/bin/gapless
COPY config/gapless.example.toml /etc/gapless/gapless.example.toml
USER 10001:10001
WORKDIR /var/lib/gapless
VOLUME ["/var/lib/gapless"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/gapless", "health", "--admin", "http://127.0.0.1:9464"]
ENTRYPOINT ["/usr/local/bin/gapless"]
CMD ["run", "--config", "/etc/gapless/gapless.toml"]
