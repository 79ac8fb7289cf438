#!/usr/bin/env bash
# The contract test: schemathesis, with all its checks, against a real `piculet serve` on the
# embedded SQLite database, once without API tokens and once with one. Every failure fails the
# run. Called by scripts/test.sh; runs alone too.
#
# Settings (environment):
#   CONTRACT_EXAMPLES  test cases per operation and phase (default 50)
#   CONTRACT_SEED      schemathesis' seed (default fixed, so that CI runs are reproducible)
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${CONTRACT_EXAMPLES:-50}
SEED=${CONTRACT_SEED:-20261206}
WORK=target/contract
VENV=target/contract-venv
TOKEN=contract-test-token
# Where cargo puts the binary: CARGO_TARGET_DIR when it is set, as cargo itself reads it.
BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug

# The venv lives under target/ and is reused while it holds the pinned version.
if [[ "$("$VENV/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --quiet --bin piculet
rm -rf "$WORK"
mkdir -p "$WORK"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# serve NAME [TOKENS]: starts a server on a fresh data directory; sets URL.
serve() {
    local name=$1 tokens=${2:-} port
    port=$(free_port)
    mkdir -p "$WORK/$name"
    PICULET_API_TOKENS=$tokens PICULET_LISTEN=127.0.0.1:$port PICULET_DATA_DIR=$WORK/$name/data \
        "$BIN/piculet" serve >"$WORK/$name/server.log" 2>&1 &
    PIDS+=($!)
    URL=http://127.0.0.1:$port
    for _ in $(seq 100); do
        curl -fsS "$URL/api/v1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "contract: the $name server did not start within 10 s; its log:" >&2
    cat "$WORK/$name/server.log" >&2
    return 1
}

# check NAME [ARGS...]: runs schemathesis against the server at URL.
check() {
    local name=$1
    shift
    echo "contract: schemathesis against the $name server ($EXAMPLES examples per operation)"
    SCHEMATHESIS_HOOKS=hooks PYTHONPATH=scripts/contract \
        "$VENV/bin/st" --config-file scripts/contract/schemathesis.toml run "$URL/api/v1/openapi.json" \
        --checks all --max-examples "$EXAMPLES" --seed "$SEED" \
        --request-timeout 10 --generation-database none --no-color \
        --report junit --report-junit-path "$WORK/$name/junit.xml" "$@"
}

serve tokenless
check tokenless

serve token "$TOKEN"
check token --header "Authorization: Bearer $TOKEN"

echo "contract: 0 failures"
