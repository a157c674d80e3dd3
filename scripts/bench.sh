#!/usr/bin/env bash
# Throughput against this machine's own limits and baselines, in one run (see docs/performance.md).
# Uses the same cargo profile as the tests (dependencies — BLAKE3, FastCDC, RocksDB — are
# compiled with full optimisation there), so it needs no second build of RocksDB.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
fms_need_packages
cargo build --quiet -p fms-bench
# `scripts/bench.sh auth ...` measures token verification and login; anything else is the
# engine benchmark.
if [ "${1:-}" = auth ]; then
    shift
    exec "$CARGO_TARGET_DIR/debug/fms-bench-auth" "$@"
fi
exec "$CARGO_TARGET_DIR/debug/fms-bench" "$@"
