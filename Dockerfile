# The tally binary in a slim runtime image. Build from the repository root:
#   docker build -t tally .
# Every role runs from this one image (`tally up|ingest|speed|serve|archive|batch …`);
# infra/compose.yaml and infra/k8s/ start each with its own command.

# --- build: the pinned toolchain, nothing else: librdkafka and OpenSSL build from the crates'
# bundled sources. The dashboard's assets are in the sources (its chart library vendored in
# serving/dashboard/vendor/): no npm needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tally \
 && cp target/release/tally /usr/local/bin/tally

# --- runtime: the binary (librdkafka and OpenSSL linked in), CA certificates for TLS, and
# curl for the health check.
FROM debian:bookworm-slim
# Debian stable's packages take security fixes under one version string per release: pinning
# them would only break the build when a fix lands.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tally --create-home tally
COPY --from=build /usr/local/bin/tally /usr/local/bin/tally
USER 10001
WORKDIR /var/lib/tally
VOLUME /var/lib/tally
# The collector and the API (8080), `tally speed` (8081), `tally batch schedule` (8082).
EXPOSE 8080 8081 8082
ENV TALLY_DATA_DIR=/var/lib/tally TALLY_INGEST_LISTEN=0.0.0.0:8080
# Each role answers /healthz on its own port: HEALTH_PORT says which (8080 by default).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${HEALTH_PORT:-8080}/healthz || exit 1"]
ENTRYPOINT ["tally"]
CMD ["up"]
