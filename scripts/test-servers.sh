# Sourced by ./test: starts a throwaway PostgreSQL and Redis (temporary data directory,
# free loopback ports, no persistence) from the machine's installed binaries, installing
# the Debian packages first when they are missing, and removes them on exit. Exports
#   FMS_TEST_POSTGRES_URL  a superuser URL (tests create their own databases)
#   FMS_TEST_REDIS_URL
# Tests never use a server someone started by hand.
# shellcheck shell=bash

fms_free_port() {
    # Below the kernel's ephemeral range (32768+ by default): a port some outgoing
    # connection holds there cannot be bound, and a connect probe does not see it.
    local p low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$low" -gt 21000 ] || low=32768
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % (low - 20000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port" >&2
    return 1
}

fms_start_test_servers() {
    local missing=()
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v redis-server >/dev/null || missing+=(redis-server)
    if [ "${#missing[@]}" -gt 0 ]; then
        fms_apt_install "${missing[@]}"
    fi
    local pgbin
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    FMS_TEST_DIR=$(mktemp -d /tmp/fms-test-servers.XXXXXX)
    chmod 755 "$FMS_TEST_DIR"
    trap fms_stop_test_servers EXIT

    # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
    local as=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        as=(runuser -u postgres --)
    fi
    mkdir -p "$FMS_TEST_DIR/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$FMS_TEST_DIR/pg"
    local pgport started=
    "${as[@]}" "$pgbin/initdb" -D "$FMS_TEST_DIR/pg/data" -U fms --auth=trust -E UTF8 --no-sync >"$FMS_TEST_DIR/initdb.log" 2>&1 \
        || { cat "$FMS_TEST_DIR/initdb.log" >&2; exit 1; }
    for _ in 1 2 3; do
        pgport=$(fms_free_port)
        if "${as[@]}" "$pgbin/pg_ctl" -D "$FMS_TEST_DIR/pg/data" -l "$FMS_TEST_DIR/pg/log" -w -t 60 \
            -o "-p $pgport -k $FMS_TEST_DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null; then
            started=1
            break
        fi
    done
    [ -n "$started" ] || { cat "$FMS_TEST_DIR/pg/log" >&2; exit 1; }
    FMS_TEST_PG_STOP=("${as[@]}" "$pgbin/pg_ctl" -D "$FMS_TEST_DIR/pg/data" -m immediate stop)
    export FMS_TEST_POSTGRES_URL="postgres://fms@127.0.0.1:$pgport/postgres"

    local rport
    for _ in 1 2 3 4 5; do
        rport=$(fms_free_port)
        redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
            --dir "$FMS_TEST_DIR" --pidfile "$FMS_TEST_DIR/redis.pid" --logfile "$FMS_TEST_DIR/redis.log" >/dev/null
        for _ in $(seq 100); do
            [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] && break
            sleep 0.1
        done
        [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] && break
    done
    [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] || { cat "$FMS_TEST_DIR/redis.log" >&2; exit 1; }
    FMS_TEST_REDIS_PORT=$rport
    export FMS_TEST_REDIS_URL="redis://127.0.0.1:$rport/"
    echo "test servers: PostgreSQL on 127.0.0.1:$pgport, Redis on 127.0.0.1:$rport" >&2
}

fms_stop_test_servers() {
    [ -n "${FMS_TEST_PG_STOP[*]:-}" ] && "${FMS_TEST_PG_STOP[@]}" >/dev/null 2>&1 || true
    [ -n "${FMS_TEST_REDIS_PORT:-}" ] && redis-cli -p "$FMS_TEST_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    [ -n "${FMS_TEST_DIR:-}" ] && rm -rf "$FMS_TEST_DIR"
}
