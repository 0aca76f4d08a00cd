#!/usr/bin/env bash
# Records the baseline that the test command's regression gates compare against:
# scenarios/ci.toml, three runs per cell, saved to results/baselines/ci.json, and the commit it
# was recorded from in results/baselines/ci.rev (the base of the same-machine A/B).
# Run it on a clean checkout, then commit both files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
    echo "record-baseline: the work tree has uncommitted changes; commit them first, so that" >&2
    echo "record-baseline: the baseline names the revision that produced it" >&2
    exit 2
fi
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
git rev-parse HEAD > results/baselines/ci.rev
echo "record-baseline: recorded from $(cat results/baselines/ci.rev); commit results/baselines/"
