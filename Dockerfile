# syntax=docker/dockerfile:1
# One image for every service: `fms serve` (all in one process), or one service per container
# (`fms auth`, `fms picker`, `fms permission`, `fms notification`, `fms downloader`,
# `fms transformer`) as the Helm chart runs them. Build: `docker build -t fms .`
#
# Issue 11 (deployment) is in progress: this image is not built by CI (no container engine
# on the CI machines); the chart that uses it comes next.

FROM rust:1-bookworm AS build
# libclang for RocksDB's bindings, OpenSSL for https imports, tesseract/leptonica for OCR.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libclang-dev pkg-config libssl-dev libtesseract-dev libleptonica-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fms \
    && install -m 0755 target/release/fms /usr/local/bin/fms

FROM debian:bookworm-slim
# Runtime libraries only, and the English OCR data.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libssl3 libtesseract5 tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/fms --create-home fms
COPY --from=build /usr/local/bin/fms /usr/local/bin/fms
# Non-root; the data directory is the only place written (a volume in Kubernetes).
USER 10001:10001
WORKDIR /var/lib/fms
# JSON logs for the log shipper; one OpenMP thread per OCR page (transforms run one per core).
ENV FMS_LOG__FORMAT=json \
    OMP_THREAD_LIMIT=1 \
    FMS_LISTEN=0.0.0.0:8080 \
    FMS_GRPC_LISTEN=0.0.0.0:9090 \
    FMS_DATA_DIR=/var/lib/fms
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/fms"]
CMD ["serve"]
