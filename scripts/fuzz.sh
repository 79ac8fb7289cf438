#!/usr/bin/env bash
# Fuzzes the pipeline reader and planner with cargo-fuzz (libFuzzer): arbitrary bytes as a
# pipeline file, structured pipelines (chains, cycles, matrices, `when`, paths) as YAML text and
# as objects, and arbitrary JSON submissions; and the lean HTTP/1 writer's head check, with
# arbitrary bytes as a connection's first bytes. Every target runs SECONDS (default 3600) at once,
# at the lowest CPU priority; a crash leaves its input in fuzz/artifacts/TARGET/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain is enough
# (RUSTC_BOOTSTRAP lets it take libFuzzer's sanitizer flags).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-3600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pipeline_text pipeline_structured submission_json lean_head)
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing; cargo install cargo-fuzz" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
status=0
pids=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # Tracked seeds, where a target has them (whole heads the lean writer takes, and near
    # misses), read beside the corpus the run grows.
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    # -rss_limit_mb: a run that needs more memory than this is a finding, as is one over 10 s.
    nice -n 19 cargo fuzz run -O "$t" "corpus/$t" ${seeds[@]+"${seeds[@]}"} -- -max_total_time="$seconds" -max_len=262144 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"fuzz-$t.log" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
        echo "fuzz.sh: ${targets[$i]}: no crash in ${seconds}s ($(grep -E '^stat::number_of_executed_units' "fuzz-${targets[$i]}.log" | awk '{print $2}') runs)"
    else
        echo "fuzz.sh: ${targets[$i]}: FAILED, see fuzz/fuzz-${targets[$i]}.log and fuzz/artifacts/${targets[$i]}/" >&2
        status=1
    fi
done
exit $status
