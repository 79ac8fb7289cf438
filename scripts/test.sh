#!/usr/bin/env bash
# Runs the whole test suite, as CI does: formatting, lints, and every test, with Postgres and
# SQLite (scripts/postgres.sh finds or starts the Postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

# The API as clients see it: schemathesis against real servers (see scripts/contract.sh).
./scripts/contract.sh

# The API as generated clients see it: a Python and a TypeScript client generated from the
# document, type-checked, and run against a real server (see scripts/clients.sh).
./scripts/clients.sh

# The README's curl walkthrough and CLI examples, as written, against a fresh server
# (see scripts/walkthrough.sh).
./scripts/walkthrough.sh
