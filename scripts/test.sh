#!/usr/bin/env bash
# Runs the whole test suite, as CI does: formatting, lints, and every test, with Postgres and
# SQLite (scripts/postgres.sh finds or starts the Postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

# A snapshot that is missing or differs fails, and nothing is written: the snapshots under
# tests/it/snapshots change only by hand (cargo insta review, or INSTA_UPDATE=always).
export INSTA_UPDATE=no

cargo fmt --all -- --check
# The whole workspace: piculet, and the fake Kubernetes API server of crates/fake-k8s.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked

# The API as clients see it: schemathesis against real servers (see scripts/contract.sh).
./scripts/contract.sh

# The API as generated clients see it: a Python and a TypeScript client generated from the
# document, type-checked, and run against a real server (see scripts/clients.sh).
./scripts/clients.sh

# The README's curl walkthrough and CLI examples, as written, against a fresh server
# (see scripts/walkthrough.sh).
./scripts/walkthrough.sh
