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

started_here=0
stop_started() {
    if [[ $started_here == 1 && "${BUSBENCH_KEEP_BROKERS:-0}" != 1 ]]; then
        scripts/brokers.sh down || true
    fi
}
trap stop_started EXIT
if ! scripts/brokers.sh status >/dev/null 2>&1; then
    started_here=1
    scripts/brokers.sh up
fi
scripts/brokers.sh status

# Kafka's protocol does not report the broker's version: take it from the local broker.
if [[ -z "${BUSBENCH_KAFKA_VERSION:-}" ]]; then
    BUSBENCH_KAFKA_VERSION="$(scripts/brokers.sh kafka-version || true)"
    export BUSBENCH_KAFKA_VERSION
fi

status=0
./target/release/busbench run "$scenario" "$@" || status=$?
exit $status
