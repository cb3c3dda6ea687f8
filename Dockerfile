# Multi-stage build: compile with the Rust toolchain, run on a slim base as a
# non-root user with the store on a volume.
#   docker build -t gapless .
#   docker run -v gapless-data:/var/lib/gapless -v ./gapless.toml:/etc/gapless/gapless.toml:ro \
#     -e VCD_PASSWORD gapless
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
 && useradd --system --home /var/lib/gapless --shell /usr/sbin/nologin gapless \
 && install -d -o gapless -g gapless /var/lib/gapless /etc/gapless
COPY --from=build /src/target/release/gapless /usr/local/bin/gapless
COPY config/gapless.example.toml /etc/gapless/gapless.example.toml
USER gapless
WORKDIR /var/lib/gapless
VOLUME ["/var/lib/gapless"]
ENTRYPOINT ["/usr/local/bin/gapless"]
CMD ["run", "--config", "/etc/gapless/gapless.toml"]
