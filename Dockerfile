# syntax=docker/dockerfile:1
#
# notify-relay container image.
#
#   docker build -t ghcr.io/example/notify-relay:0.1.0 .
#
# The build stage needs BuildKit (the default builder since Docker 23) for the cache mounts.

# Cargo.lock needs Rust >= 1.89 (actix-web 4.18, actix-http 3.20, uuid 1.29; Cargo.toml says
# rust-version 1.89). Pin e.g. --build-arg RUST_VERSION=1.89 for reproducible builds; the default
# follows the latest stable 1.x.
ARG RUST_VERSION=1

# ---- build -------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# migrations/ (refinery embed_migrations!) and config/default.toml (include_str!) are compiled
# into the binary, so they must be in the build context, not only in the runtime image.
COPY Cargo.toml Cargo.lock rustfmt.toml build.rs ./
COPY actors/ actors/
# The emulators crate: a workspace member, and linked for `mock-providers` and `loadgen`.
COPY emulators/ emulators/
COPY src/ src/
COPY migrations/ migrations/
COPY config/ config/

# The registry and target/ live in cache mounts so rebuilds only recompile what changed. The
# binary is copied out in the same step because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin notify-relay \
 && install -D -m 0755 target/release/notify-relay /out/notify-relay

# ---- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim

# Postgres TLS uses the compiled-in webpki roots; the system store is for anything else that
# speaks TLS (rediss://, provider endpoints, debugging from a shell).
# DL3008 (pin apt versions) does not fit here: bookworm replaces a package version when it
# ships an update, so a pinned ca-certificates would break the build at Debian's next CA-bundle
# update, and the newest CA bundle is the one wanted. The base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 notify \
 && useradd --system --uid 10001 --gid notify --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin notify

COPY --from=build /out/notify-relay /usr/local/bin/notify-relay
# Reference copy only: these defaults are already compiled in. To override them, mount a file
# and pass --config FILE (or NOTIFY_CONFIG), or set NOTIFY__<SECTION>__<KEY> variables.
COPY config/default.toml /app/config/default.toml

WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["notify-relay"]
CMD ["run"]
