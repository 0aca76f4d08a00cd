#!/usr/bin/env bash
# Runs every test against real brokers: starts Kafka and NATS if none answer, runs the format
# and lint checks and `cargo test` (the broker tests included, none skipped), then stops the
# brokers it started, also when a test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

source scripts/with-brokers.sh
use_brokers
scripts/brokers.sh status

export BUSBENCH_KAFKA_BOOTSTRAP="${BUSBENCH_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
export BUSBENCH_NATS_URL="${BUSBENCH_NATS_URL:-nats://127.0.0.1:4222}"

# The restart test runs a private nats-server of its own, from this binary.
export BUSBENCH_NATS_SERVER="${BUSBENCH_NATS_SERVER:-$(scripts/brokers.sh nats-bin)}"

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

# The regression gates, both on scenarios/ci.toml.
# 1. Machine-free figures (exact correctness, heap allocations per message, ratios within a run)
#    against the committed baseline: valid on any machine of this kind. Absolute figures are
#    shown as warnings only, since the baseline may come from another machine.
# 2. Absolute figures (msg/s, p99, CPU per message) in a same-machine A/B: the revision the
#    baseline was recorded from is built and run interleaved with this build, five runs each,
#    on the same brokers; a change counts only when past its threshold and significant, in
#    these runs and again in five more of the flagged backends (--confirm).
cargo build --release --locked
mkdir -p target/ci-results
# How steady the machine is right now, for whoever reads a failing gate's log: on a shared
# virtual machine the CPU's speed can halve for seconds, which moves figures taken at different
# moments.
./target/release/busbench steadiness --duration 5s
gate=0
./target/release/busbench run scenarios/ci.toml --repeat 3 --no-progress \
    --out target/ci-results \
    --baseline results/baselines/ci.json --machine-free-only \
    --comparison-markdown target/ci-results/comparison.md || gate=$?
ab=0
./target/release/busbench ab scenarios/ci.toml \
    --base "$(cat results/baselines/ci.rev)" --runs 5 --confirm \
    --out target/ab --markdown target/ci-results/ab.md || ab=$?
echo "test: machine-free gate exit $gate, same-machine A/B exit $ab"
if [[ $gate != 0 || $ab != 0 ]]; then
    exit 1
fi
