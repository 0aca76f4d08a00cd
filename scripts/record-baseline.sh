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
source scripts/with-brokers.sh
use_brokers
./target/release/busbench run scenarios/ci.toml --repeat 3 --no-progress \
    --out target/ci-results --save-baseline results/baselines/ci.json
git rev-parse HEAD > results/baselines/ci.rev
echo "record-baseline: recorded from $(cat results/baselines/ci.rev); commit results/baselines/"
