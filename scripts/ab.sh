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

started_here=0
stop_started() {
    if [[ $started_here == 1 ]]; then
        scripts/brokers.sh down || true
    fi
}
trap stop_started EXIT
if ! scripts/brokers.sh status >/dev/null 2>&1; then
    started_here=1
    scripts/brokers.sh up
fi
export BUSBENCH_KAFKA_VERSION="${BUSBENCH_KAFKA_VERSION:-$(scripts/brokers.sh kafka-version || true)}"

status=0
./target/release/busbench ab "$scenario" --base "$base" "$@" || status=$?
exit $status
