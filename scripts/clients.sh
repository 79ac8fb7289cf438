#!/usr/bin/env bash
# The generated clients test: generates a Python client (openapi-python-client) and TypeScript
# types (openapi-typescript, used through openapi-fetch) from openapi/openapi.json, type-checks
# each with its example program (mypy --strict; tsc, strict), and runs both programs in
# examples/clients/ against a real `piculet serve` (embedded SQLite, local backend), once with
# an API token and once without.
# Each program checks every answer and exits 1 at the first that differs. Called by
# scripts/test.sh; runs alone too.
#
# The tools come from PyPI and npm, pinned by examples/clients/python/requirements.txt and
# examples/clients/typescript/package-lock.json, into target/clients-venv and the example's
# node_modules; both are reused while their pins are unchanged.
#
# Settings (environment):
#   CLIENTS_TIMEOUT  longest run of each example program, in seconds (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."

PROGRAM_TIMEOUT=${CLIENTS_TIMEOUT:-120}
# An install that hangs on the registry fails the run rather than holding CI.
INSTALL_TIMEOUT=600
WORK=target/clients
VENV=target/clients-venv
PY=examples/clients/python
TS=examples/clients/typescript
TOKEN=clients-test-token-0123456789

stamp() { sha256sum "$@" | sha256sum | cut -c1-64; }

# Python tools: the venv is rebuilt when requirements.txt (or the Python) changes.
want="$(stamp $PY/requirements.txt) $(python3 --version)"
if [[ "$(cat "$VENV/.piculet-stamp" 2>/dev/null)" != "$want" ]]; then
    echo "clients: installing the Python tools into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    timeout "$INSTALL_TIMEOUT" "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r $PY/requirements.txt
    echo "$want" >"$VENV/.piculet-stamp"
fi

# TypeScript tools: `npm ci` when package-lock.json changed since the last one.
want=$(stamp $TS/package-lock.json)
if [[ "$(cat "$TS/node_modules/.piculet-stamp" 2>/dev/null)" != "$want" ]]; then
    echo "clients: installing the TypeScript tools into $TS/node_modules"
    (cd $TS && timeout "$INSTALL_TIMEOUT" npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$TS/node_modules/.piculet-stamp"
fi

cargo build --locked --quiet --bin piculet
rm -rf "$WORK"
mkdir -p "$WORK"

echo "clients: generating the Python client and checking it with mypy --strict"
export PATH="$PWD/$VENV/bin:$PATH"
python $PY/fix_generator_templates.py "$WORK/templates"
rm -rf $PY/piculet_client
openapi-python-client generate --path openapi/openapi.json --meta none \
    --config $PY/openapi-python-client.yaml --custom-template-path "$WORK/templates" \
    --output-path $PY/piculet_client >"$WORK/python-generate.log" 2>&1 || {
    cat "$WORK/python-generate.log" >&2
    exit 1
}
# The generator reports what it could not express as warnings and still exits 0: any is a
# failure here, since it means part of the API is missing from the client.
if grep -q -i 'warning' "$WORK/python-generate.log"; then
    echo "clients: openapi-python-client warned about the document:" >&2
    cat "$WORK/python-generate.log" >&2
    exit 1
fi
(cd $PY && mypy --strict --cache-dir "../../../$WORK/mypy-cache" piculet_example.py piculet_client)

echo "clients: generating the TypeScript types and checking them with tsc (strict)"
(cd $TS && npm run --silent generate >"../../../$WORK/typescript-generate.log" 2>&1 &&
    rm -rf dist && npx --no-install tsc) || {
    cat "$WORK/typescript-generate.log" >&2
    exit 1
}

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

# serve NAME [TOKENS]: starts a server on a fresh data directory; sets PICULET_SERVER.
serve() {
    local name=$1 tokens=${2:-} port
    port=$(free_port)
    mkdir -p "$WORK/$name"
    PICULET_API_TOKENS=$tokens PICULET_LISTEN=127.0.0.1:$port PICULET_DATA_DIR=$WORK/$name/data \
        target/debug/piculet serve >"$WORK/$name/server.log" 2>&1 &
    PIDS+=($!)
    export PICULET_SERVER=http://127.0.0.1:$port PICULET_TOKEN=$tokens
    for _ in $(seq 100); do
        curl -fsS "$PICULET_SERVER/api/v1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "clients: the $name server did not start within 10 s; its log:" >&2
    cat "$WORK/$name/server.log" >&2
    return 1
}

# Against a server with a token (the programs send it), and a tokenless one on loopback (the
# programs use the generated client without a token, which the document's security allows).
passed=0
failed=0
for server in token tokenless; do
    if [[ $server == token ]]; then serve token "$TOKEN"; else serve tokenless; fi
    echo "clients: the Python example against the $server server"
    if (cd $PY && timeout "$PROGRAM_TIMEOUT" python piculet_example.py); then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
    echo "clients: the TypeScript example against the $server server"
    if (cd $TS && timeout "$PROGRAM_TIMEOUT" node dist/example.js); then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done

if ((failed > 0)); then
    echo "clients: the servers' logs are $WORK/*/server.log" >&2
fi
echo "clients: $passed passed, $failed failed"
exit $((failed > 0))
