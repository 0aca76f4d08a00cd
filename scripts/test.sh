#!/usr/bin/env bash
# Runs every test against real brokers: starts Kafka and NATS if none answer, runs the format
# and lint checks and `cargo test` (the broker tests included, none skipped), then stops the
# brokers it started, also when a test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

started_here=0
stop_started() {
    if [[ $started_here == 1 ]]; then
        scripts/brokers.sh down || true
    fi
}
trap stop_started EXIT

if scripts/brokers.sh status >/dev/null 2>&1; then
    echo "test: using the brokers already running"
else
    started_here=1
    scripts/brokers.sh up
fi
scripts/brokers.sh status

export BUSBENCH_KAFKA_BOOTSTRAP="${BUSBENCH_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
export BUSBENCH_NATS_URL="${BUSBENCH_NATS_URL:-nats://127.0.0.1:4222}"

# The restart test runs a private nats-server of its own, from this binary.
export BUSBENCH_NATS_SERVER="${BUSBENCH_NATS_SERVER:-$(scripts/brokers.sh nats-bin)}"
export BUSBENCH_KAFKA_VERSION="${BUSBENCH_KAFKA_VERSION:-$(scripts/brokers.sh kafka-version || true)}"

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

# The regression gate: scenarios/ci.toml, three runs per cell, against the committed baseline
# (recorded on this kind of machine with scripts/record-baseline.sh).
cargo build --release --locked
mkdir -p target/ci-results
./target/release/busbench run scenarios/ci.toml --repeat 3 --no-progress \
    --out target/ci-results \
    --baseline results/baselines/ci.json \
    --comparison-markdown target/ci-results/comparison.md
