# saga-orchestrator: one image for every subcommand (serve, migrate, simulate, demo).
#
#   docker build -t saga-orchestrator .
#   docker run --rm -p 8000:8000 -e DATABASE_URL=… -e BROKER_URL=… saga-orchestrator
#   docker run --rm saga-orchestrator simulate --alianzas-addr 0.0.0.0:8002 --integraciones-addr 0.0.0.0:8001
#
# Lint with `make lint-deploy` (hadolint, failure threshold: warning).

# ---------------------------------------------------------------------------
# Builder. The toolchain is pinned: the locked dependencies need Rust 1.89 or
# newer (uuid 1.29 sets rust-version 1.89), and a moving tag would change the
# binary under us. Bookworm, to link against the runtime image's glibc.
FROM rust:1.95-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# protoc: the `pulsar` crate's build script generates its protocol types with
# prost-build, which runs protoc. The Debian release is pinned by the base
# image's tag; exact package versions are not pinned because Debian drops
# superseded versions from its mirrors, which would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependency layer: only the manifests, the lockfile and stub sources, so
# that editing our code does not rebuild the ~300 crates below it. Every
# workspace member's manifest must be here for `--locked` to accept the
# lockfile; each member needs a stub target for cargo to load it (a member
# added to the workspace needs its manifest and stubs added here too).
# xtask (the repository's tooling) is never built here: its stub stays.
COPY Cargo.toml Cargo.lock ./
# Vendored crates (vendor/README.md) are dependencies: the layer builds them.
COPY vendor vendor
COPY tools/pulsar-lite-proxy/Cargo.toml tools/pulsar-lite-proxy/Cargo.toml
COPY xtask/Cargo.toml xtask/Cargo.toml
RUN for member in . tools/pulsar-lite-proxy xtask; do \
        mkdir -p "$member/src" \
        && echo 'fn main() {}' > "$member/src/main.rs" \
        && touch "$member/src/lib.rs"; \
    done \
    && cargo build --release --locked -p saga-orchestrator \
    && rm -rf src tools/pulsar-lite-proxy/src

# The real sources. Two directories are compiled into the binary and must be
# here: migrations/ (sqlx::migrate!) and assets/ (the /docs page, include_bytes!).
# COPY keeps the files' own mtimes, which can be older than the stub build:
# touch the crate roots so cargo rebuilds our crate instead of keeping the
# stub binary.
COPY src src
COPY migrations migrations
COPY assets assets
COPY tools tools
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p saga-orchestrator \
    && install -D -m 0755 target/release/saga-orchestrator /out/saga-orchestrator

# ---------------------------------------------------------------------------
# Runtime: glibc, CA roots for rediss:// / https participants, curl for the
# health check (the binary has no probe subcommand), nothing else.
FROM debian:bookworm-slim AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 saga \
    && useradd --system --uid 10001 --gid saga --home-dir /var/lib/saga-orchestrator \
        --shell /usr/sbin/nologin saga \
    && install -d -o saga -g saga -m 0750 /var/lib/saga-orchestrator

COPY --from=builder /out/saga-orchestrator /usr/local/bin/saga-orchestrator

# The working directory is the user's own: `demo` writes its SQLite store under
# ./.dev, and a `.env` here (none is shipped) would be read at start-up.
WORKDIR /var/lib/saga-orchestrator
USER 10001:10001

# API_ADDR defaults to 0.0.0.0:8000 (docs/contract.md §6).
EXPOSE 8000

# Liveness only (/ready would mark the container unhealthy during a broker or
# database outage, and restart loops do not fix those). Follows API_ADDR's port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "port=\"${API_ADDR:-0.0.0.0:8000}\"; curl -fsS -o /dev/null \"http://127.0.0.1:${port##*:}/health\" || exit 1"]

# SIGTERM (what `docker stop` sends) starts a graceful shutdown that waits up
# to SHUTDOWN_GRACE_SECS (30) for sagas in flight: give `docker stop` / compose
# a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["saga-orchestrator"]
CMD ["serve"]
