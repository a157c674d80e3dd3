# Sourced by capacity.sh and compare.sh: build, then a fresh `fms serve` pinned to CPU 0 on
# a random loopback port, stopped (and its data removed) when the sourcing script exits.
# Sets WORK, PORT, URL (HTTP) and GRPC_URL.
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
URL="http://127.0.0.1:$PORT"
GRPC_URL="http://127.0.0.1:$((PORT + 1))"
taskset -c 0 "$CARGO_TARGET_DIR/debug/fms" serve --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$((PORT + 1))" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -sf "$URL/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -sf "$URL/healthz" >/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
