#!/usr/bin/env bash
# Throughput against this machine's own limits and baselines, in one run (see docs/performance.md).
# Uses the same cargo profile as the tests (dependencies — BLAKE3, FastCDC, RocksDB — are
# compiled with full optimisation there), so it needs no second build of RocksDB.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
fms_need_packages
cargo build --quiet -p fms-bench -p fms
# `scripts/bench.sh auth ...` measures token verification and login, `scripts/bench.sh
# permission ...` the permission service, `scripts/bench.sh picker ...` HTTP uploads and
# downloads, `scripts/bench.sh tus [--rustus PATH] ...` resumable uploads (tus, gRPC) against
# rustus, `scripts/bench.sh import [--size-mib N] [--runs N]` imports from a loopback HTTP
# server against curl of the same URL (needs curl), `scripts/bench.sh transform [--images N]
# [--pages N]` thumbnails against vipsthumbnail and OCR against the tesseract command,
# `scripts/bench.sh loadtest [--seconds N] [--connections N]` fms-loadtest against wrk and k6,
# `scripts/bench.sh capacity [SCENARIO] [--out DIR]` a scenario against a fresh fms serve;
# anything else is the engine benchmark.
if [ "${1:-}" = permission ]; then
    # A throwaway PostgreSQL for the PostgreSQL backend (stopped when this script exits).
    shift
    source scripts/test-servers.sh
    fms_start_test_servers
    export FMS_BENCH_POSTGRES_URL="$FMS_TEST_POSTGRES_URL"
    "$CARGO_TARGET_DIR/debug/fms-bench-permission" "$@"
    exit
fi
if [ "${1:-}" = picker ]; then
    shift
    exec "$CARGO_TARGET_DIR/debug/fms-bench-picker" "$@"
fi
if [ "${1:-}" = tus ]; then
    shift
    exec "$CARGO_TARGET_DIR/debug/fms-bench-tus" "$@"
fi
if [ "${1:-}" = import ]; then
    shift
    exec "$CARGO_TARGET_DIR/debug/fms-bench-import" "$@"
fi
if [ "${1:-}" = ws ]; then
    # Server and client ends of the sockets live in separate processes: each needs about one
    # descriptor per socket (10,000 sockets fit a limit of 20,000; fewer are run below that).
    shift
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    exec "$CARGO_TARGET_DIR/debug/fms-bench-ws" "$@"
fi
if [ "${1:-}" = transform ]; then
    # Baselines: libvips' vipsthumbnail and the tesseract command; a font for the OCR page.
    shift
    command -v vipsthumbnail >/dev/null || fms_apt_install libvips-tools
    command -v tesseract >/dev/null || fms_apt_install tesseract-ocr
    [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || fms_apt_install fonts-dejavu-core
    # As `fms` sets it: one OpenMP thread per tesseract page (jobs run one per core).
    export OMP_THREAD_LIMIT="${OMP_THREAD_LIMIT:-1}"
    exec "$CARGO_TARGET_DIR/debug/fms-bench-transform" "$@"
fi
if [ "${1:-}" = loadtest ]; then
    # fms-loadtest against wrk and k6 on the same endpoint.
    shift
    exec loadtest/compare.sh "$@"
fi
if [ "${1:-}" = capacity ]; then
    # A scenario (default: the mixed-web capacity search) against a fresh fms serve.
    shift
    exec loadtest/capacity.sh "$@"
fi
if [ "${1:-}" = auth ]; then
    shift
    exec "$CARGO_TARGET_DIR/debug/fms-bench-auth" "$@"
fi
exec "$CARGO_TARGET_DIR/debug/fms-bench" "$@"
