#!/usr/bin/env bash
# Runs the benchmarks of the README's Performance section against a real Postgres
# (scripts/postgres.sh finds or starts one) and prints every figure beside its target.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

cargo build --release --locked --bin piculet --example bench
exec target/release/examples/bench "$@"
