# syntax=docker/dockerfile:1
#
# warren's container image: `docker build -t warren .`, then e.g.
#   docker run --rm warren topology export
#   docker run -p 8597:8597 -e WARREN_AMQP__URL=amqp://user:pass@broker:5672/%2f warren run
# docker-compose.yml builds it and runs `warren run --handler webhook`.

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Dependencies first, in their own layer: build them against placeholder
# sources, so editing src/ does not rebuild every crate. The layer changes
# only with Cargo.toml or Cargo.lock.
# The workspace's other member, the load generator, is not built: only its
# manifest (and a placeholder) so that cargo can read the workspace.
COPY Cargo.toml Cargo.lock ./
COPY warren-bench/Cargo.toml warren-bench/
RUN mkdir -p src/bin/warren warren-bench/src \
    && echo 'fn main() {}' > src/bin/warren/main.rs \
    && echo 'fn main() {}' > warren-bench/src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked -p warren \
    && rm -rf src

# Then warren itself. `touch` makes cargo see the real sources as newer than
# the placeholders it just built, whatever mtimes COPY gave them.
COPY src ./src
RUN touch src/bin/warren/main.rs src/lib.rs \
    && cargo build --release --locked -p warren --bin warren

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: amqps:// brokers and https:// webhook receivers are
# verified against the system roots. curl: the compose healthcheck
# (GET /readyz); warren has no probe subcommand of its own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 warren \
    && useradd --system --uid 10001 --gid warren --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin warren

COPY --from=builder /src/target/release/warren /usr/local/bin/warren

# warren reads ./warren.toml and ./.env when present: mount them here.
WORKDIR /etc/warren
USER warren:warren

# Inside a container the ingress must listen on every interface to be
# reachable at all (warren's own default is 127.0.0.1:8597).
ENV WARREN_INGRESS__LISTEN=0.0.0.0:8597
EXPOSE 8597

# No HEALTHCHECK here: the image also runs one-shot commands (publish,
# topology export); docker-compose.yml probes /readyz for `warren run`.
ENTRYPOINT ["warren"]
CMD ["run"]
