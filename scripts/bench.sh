#!/usr/bin/env bash
# Runs the benchmarks of the README's Performance section against a real Postgres
# (scripts/postgres.sh finds or starts one) and prints every figure beside its target.
set -euo pipefail
cd "$(dirname "$0")/.."

# Sections named on the command line, all without; `k8s` is the Kubernetes backend's
# section, against the fake API server, and runs in a binary of its own.
want_k8s=0
others=()
for a in "$@"; do
  case "$a" in
    k8s) want_k8s=1 ;;
    submit|start|logs|sse|replicas|render) others+=("$a") ;;
    *) echo "bench.sh: unknown section '$a'; name some of: submit start logs sse replicas render k8s" >&2; exit 2 ;;
  esac
done

source scripts/postgres.sh
cargo build --release --locked --bin piculet --example bench --example bench_k8s
if [ $# -eq 0 ] || [ ${#others[@]} -gt 0 ]; then
  target/release/examples/bench ${others[@]+"${others[@]}"}
fi
if [ $# -eq 0 ] || [ $want_k8s -eq 1 ]; then
  target/release/examples/bench_k8s
fi
