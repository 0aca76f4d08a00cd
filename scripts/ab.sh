#!/usr/bin/env bash
# Same-machine A/B: builds this checkout and BASE (a git revision, built in its own worktree
# and target folder under target/ab), starts local Kafka and NATS if none answer, and runs
# SCENARIO with both builds interleaved (`busbench ab`). Extra arguments go to `busbench ab`
# (for instance --runs 10 or --markdown ab.md). Exit code: that of `busbench ab`.
#
#   scripts/ab.sh BASE [SCENARIO] [busbench ab options...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ $# -lt 1 ]]; then
    echo "usage: scripts/ab.sh BASE [SCENARIO] [busbench ab options...]" >&2
    exit 2
fi
base="$1"
shift
scenario="scenarios/ci.toml"
if [[ $# -gt 0 && "$1" != -* ]]; then
    scenario="$1"
    shift
fi

cargo build --release --locked

source scripts/with-brokers.sh
use_brokers

status=0
./target/release/busbench ab "$scenario" --base "$base" "$@" || status=$?
exit $status
