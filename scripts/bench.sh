#!/usr/bin/env bash
# Runs the benchmarks of the README's Performance section against a real Postgres
# (scripts/postgres.sh finds or starts one) and prints every figure beside its target.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

cargo build --release --locked --bin piculet --example bench --example bench_k8s
# `k8s` is the Kubernetes backend's section, against the fake API server.
want_k8s=0
others=()
for a in "$@"; do
  if [ "$a" = k8s ]; then want_k8s=1; else others+=("$a"); fi
done
if [ $# -eq 0 ] || [ ${#others[@]} -gt 0 ]; then
  target/release/examples/bench "${others[@]}"
fi
if [ $# -eq 0 ] || [ $want_k8s -eq 1 ]; then
  target/release/examples/bench_k8s
fi
