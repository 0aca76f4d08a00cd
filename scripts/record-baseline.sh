#!/usr/bin/env bash
# Records the baseline that the test command's regression gate compares against:
# scenarios/ci.toml, three runs per cell, saved to results/baselines/ci.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build --release --locked
started_here=0
trap '[[ $started_here == 1 ]] && scripts/brokers.sh down' EXIT
if ! scripts/brokers.sh status >/dev/null 2>&1; then
    started_here=1
    scripts/brokers.sh up
fi
export BUSBENCH_KAFKA_VERSION="${BUSBENCH_KAFKA_VERSION:-$(scripts/brokers.sh kafka-version || true)}"
./target/release/busbench run scenarios/ci.toml --repeat 3 --no-progress \
    --out target/ci-results --save-baseline results/baselines/ci.json
