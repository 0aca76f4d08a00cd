#!/usr/bin/env bash
# Everything for a fresh machine: builds busbench, starts local Kafka and NATS if none answer,
# and runs a scenario (default: scenarios/heavy.toml). Extra arguments go to `busbench run`.
# Brokers started here are stopped at the end unless BUSBENCH_KEEP_BROKERS=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scenario="${1:-scenarios/heavy.toml}"
shift || true

cargo build --release --locked

source scripts/with-brokers.sh
use_brokers keep
scripts/brokers.sh status

status=0
./target/release/busbench run "$scenario" "$@" || status=$?
exit $status
