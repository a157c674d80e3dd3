#!/usr/bin/env bash
# Engine throughput against this machine's own limits, in one run (see docs/performance.md).
# Uses the same cargo profile as the tests (dependencies — BLAKE3, FastCDC, RocksDB — are
# compiled with full optimisation there), so it needs no second build of RocksDB.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
fms_need_packages
cargo build --quiet -p fms-bench
exec "$CARGO_TARGET_DIR/debug/fms-bench" "$@"
