# syntax=docker/dockerfile:1
# The mqtrace batch-inference worker (examples/batch_inference.rs) as a container image, for
# docker-compose.yml:  docker compose up --build
#
# Stage 1 builds the example in release mode. librdkafka is compiled from source by
# rdkafka-sys (./configure + make: a C toolchain, which the rust image has, plus zlib for
# the `libz` feature); no cmake, OpenSSL or protoc is needed with the features mqtrace uses.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --example batch_inference \
    && install -D target/release/examples/batch_inference /out/batch_inference

# Stage 2: a slim runtime with the binary and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/mqtrace mqtrace
COPY --from=build /out/batch_inference /usr/local/bin/batch_inference
USER mqtrace
WORKDIR /home/mqtrace
# Without OTEL_EXPORTER_OTLP_ENDPOINT telemetry goes to files in this directory.
ENV MQTRACE_TELEMETRY_DIR=/home/mqtrace/telemetry
ENTRYPOINT ["batch_inference"]
CMD ["--help"]
