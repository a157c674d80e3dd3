#!/usr/bin/env bash
# The measured example of docs/capacity-planning.md: a fresh `fms serve` on CPU 0, the
# harness on CPU 1 (so the two do not take each other's CPU), one scenario (by default the
# capacity search of mixed-web), its report, JSON and charts.
#
#   scripts/bench.sh capacity [SCENARIO] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
fms_need_packages
SCENARIO=loadtest/scenarios/capacity-mixed-web.toml
OUT="bench/results/$(date +%F)-capacity"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        *) SCENARIO="$1"; shift ;;
    esac
done
command -v curl >/dev/null || fms_apt_install curl
cargo build --quiet --workspace --all-targets  # the test suite's feature set: no second RocksDB build
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PORT=$((20000 + RANDOM % 20000))
taskset -c 0 "$CARGO_TARGET_DIR/debug/fms" serve --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$((PORT + 1))" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
mkdir -p "$OUT"
taskset -c 1 "$CARGO_TARGET_DIR/debug/fms-loadtest" "$SCENARIO" \
    --target "http://127.0.0.1:$PORT" --grpc "http://127.0.0.1:$((PORT + 1))" \
    --json "$OUT/report.json" --markdown "$OUT/report.md" --charts "$OUT"
