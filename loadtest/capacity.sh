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
source loadtest/serve.sh
mkdir -p "$OUT"
taskset -c 1 "$CARGO_TARGET_DIR/debug/fms-loadtest" "$SCENARIO" \
    --target "$URL" --grpc "$GRPC_URL" \
    --json "$OUT/report.json" --markdown "$OUT/report.md" --charts "$OUT"
