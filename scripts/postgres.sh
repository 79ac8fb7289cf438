# Finds or starts the PostgreSQL the tests and benchmarks use, and exports its URL as
# PICULET_TEST_DATABASE_URL: DATABASE_URL when it is set; otherwise a throwaway server from the
# system's PostgreSQL binaries (installed with apt-get when missing and possible) on a free
# port, removed when the calling script exits. Sourced by scripts/test.sh and scripts/bench.sh.

say() { printf 'postgres.sh: %s\n' "$*" >&2; }

find_pg_bin() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/pgsql/bin; do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    say "no free port found"; exit 1
}

start_throwaway_postgres() {
    local bin
    bin=$(find_pg_bin)
    if [ -z "$bin" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "PostgreSQL is not installed; installing the postgresql package"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
                || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
            bin=$(find_pg_bin)
        fi
        [ -n "$bin" ] || { say "no PostgreSQL found: install it (e.g. apt-get install postgresql) or set DATABASE_URL"; exit 1; }
    fi
    PG_DIR=$(mktemp -d /tmp/piculet-pg.XXXXXX)
    local port as_user=()
    port=$(free_port)
    # initdb and postgres refuse to run as root.
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$PG_DIR"
        as_user=(runuser -u postgres --)
    fi
    "${as_user[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
    "${as_user[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null || { cat "$PG_DIR/server.log" >&2; exit 1; }
    trap 'stop_throwaway_postgres' EXIT
    PG_STOP=("${as_user[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -m immediate stop)
    export PICULET_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    say "started a throwaway PostgreSQL ($("$bin/postgres" --version)) on port $port"
}

stop_throwaway_postgres() {
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}

if [ -n "${DATABASE_URL:-}" ]; then
    export PICULET_TEST_DATABASE_URL="$DATABASE_URL"
    say "using the PostgreSQL of DATABASE_URL"
else
    start_throwaway_postgres
fi
