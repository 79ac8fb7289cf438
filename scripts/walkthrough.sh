#!/usr/bin/env bash
# The README walkthrough test: runs the README's curl walkthrough ("Try it with curl") and CLI
# examples ("The CLI as a client") as they are written, taken from README.md itself, against a
# fresh `piculet serve` on its embedded defaults (SQLite, local backend, no token) with a data
# directory of its own and a free port, and fails when an answer differs from what the text says
# (scripts/walkthrough/check.py holds what it says). Called by scripts/test.sh; runs alone too.
# Bounded: the server must answer within 10 s, the walkthrough must end within 120 s (it takes
# about 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$PWD/target/walkthrough
# Where cargo puts the binary: CARGO_TARGET_DIR when it is set, as cargo itself reads it.
BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug

cargo build --locked --quiet --bin piculet
rm -rf "$WORK"
mkdir -p "$WORK"

SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$port
# Only the listen address and data directory differ from the embedded defaults; no
# PICULET_* setting of the caller's environment leaks in.
env $(env | sed -n 's/^\(PICULET_[A-Z0-9_]*\)=.*/-u \1/p') \
    PICULET_LISTEN=127.0.0.1:$port PICULET_DATA_DIR="$WORK/data" \
    "$BIN/piculet" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -fsS "$URL/api/v1/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
if ! curl -fsS "$URL/api/v1/healthz" >/dev/null 2>&1; then
    echo "walkthrough: the server did not start within 10 s; its log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

echo "walkthrough: the README's examples against $URL"
mkdir -p "$WORK/run"
PATH=$BIN:$PATH python3 scripts/walkthrough/check.py README.md "$URL" "$WORK/run"
