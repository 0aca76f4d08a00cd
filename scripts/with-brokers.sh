# Sourced by the scripts that run busbench: `use_brokers [keep]` starts local Kafka and NATS
# when none answer and stops the ones it started when the script exits (also on failure), unless
# `keep` is given and BUSBENCH_KEEP_BROKERS=1. Brokers that were already running are used and
# left running. Then it exports the local Kafka broker's version (Kafka's protocol does not
# report it). Expects to run from the repository's root.
use_brokers() {
    BROKERS_KEEP_ALLOWED="${1:-}"
    BROKERS_STARTED_HERE=0
    stop_brokers_started_here() {
        if [[ $BROKERS_STARTED_HERE == 1 ]]; then
            if [[ -n "$BROKERS_KEEP_ALLOWED" && "${BUSBENCH_KEEP_BROKERS:-0}" == 1 ]]; then
                echo "brokers: left running (BUSBENCH_KEEP_BROKERS=1)" >&2
            else
                scripts/brokers.sh down || true
            fi
        fi
    }
    trap stop_brokers_started_here EXIT
    if scripts/brokers.sh status >/dev/null 2>&1; then
        echo "brokers: using the brokers already running" >&2
    else
        BROKERS_STARTED_HERE=1
        scripts/brokers.sh up
    fi
    BUSBENCH_KAFKA_VERSION="${BUSBENCH_KAFKA_VERSION:-$(scripts/brokers.sh kafka-version || true)}"
    export BUSBENCH_KAFKA_VERSION
}
