#!/usr/bin/env bash
# Local brokers for busbench, without Docker.
#
#   scripts/brokers.sh up       install what is missing, start Kafka and NATS, wait until both answer
#   scripts/brokers.sh down     stop the brokers this script started (pid files only)
#   scripts/brokers.sh status   print each broker's state, version and address
#   scripts/brokers.sh clean    stop, then delete the brokers' data
#   scripts/brokers.sh kafka-version   the version of the Kafka broker this script runs, if any
#   scripts/brokers.sh nats-bin        the path of the nats-server binary (installed if missing)
#
# Faults, for the brokers this script started (NAME is kafka or nats):
#   scripts/brokers.sh start NAME            start one broker and wait until it answers
#   scripts/brokers.sh kill NAME             SIGKILL it (nothing flushed, as in a crash)
#   scripts/brokers.sh restart NAME          SIGKILL it, start it again on the same data, wait
#   scripts/brokers.sh pause NAME [SECONDS]  SIGSTOP it (a stalled broker); resume after SECONDS
#   scripts/brokers.sh resume NAME           SIGCONT it
#
# Ports and the state folder can be moved, to run private brokers beside the shared ones:
# BUSBENCH_BROKER_DIR, BUSBENCH_KAFKA_PORT, BUSBENCH_KAFKA_CONTROLLER_PORT, BUSBENCH_NATS_PORT,
# BUSBENCH_NATS_MONITOR_PORT, BUSBENCH_KAFKA_HEAP (default 1G).
#
# Apache Kafka runs in KRaft mode (one node: broker + controller) from jars that Maven collects
# from Maven Central (scripts/kafka/pom.xml); nats-server is built with `go install` at a pinned
# version. Installs are cached in $BUSBENCH_CACHE (default ~/.cache/busbench); runtime state (data,
# logs, pid files) lives in .brokers/ inside the project, which git ignores.
#
# A broker that already answers on its port is left alone and reported as external: `up` then
# neither starts nor later stops it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${BUSBENCH_BROKER_DIR:-$ROOT/.brokers}"
CACHE="${BUSBENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/busbench}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
NATS_VERSION="v2.14.9"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${BUSBENCH_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${BUSBENCH_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${BUSBENCH_KAFKA_HEAP:-1G}"
NATS_HOST=127.0.0.1
NATS_PORT="${BUSBENCH_NATS_PORT:-4222}"
NATS_MONITOR_PORT="${BUSBENCH_NATS_MONITOR_PORT:-8222}"
START_TIMEOUT_SECS="${BUSBENCH_BROKER_START_TIMEOUT:-120}"
STOP_TIMEOUT_SECS=30

KAFKA_DIR="$STATE/kafka"
NATS_DIR="$STATE/nats"
KAFKA_LIB="$CACHE/kafka-$KAFKA_VERSION/lib"
NATS_BIN="$CACHE/bin/nats-server-$NATS_VERSION"

log() { printf 'brokers: %s\n' "$*" >&2; }
die() { printf 'brokers: error: %s\n' "$*" >&2; exit 1; }

# --- probes -----------------------------------------------------------------------------------

port_open() { # host port
    timeout 2 bash -c ">/dev/tcp/$1/$2" 2>/dev/null
}

# Kafka answers when a metadata request lists a broker.
kafka_answers() {
    port_open "$KAFKA_HOST" "$KAFKA_PORT" || return 1
    if command -v kcat >/dev/null 2>&1; then
        timeout 10 kcat -L -b "$KAFKA_HOST:$KAFKA_PORT" -m 5 2>/dev/null | grep -q 'broker 1\|brokers:' || return 1
    fi
}

# NATS answers when a JetStream account-info request ($JS.API.INFO) gets a reply without error,
# spoken over the plain NATS client protocol.
nats_jetstream_reply() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"busbench-probe\"}\r\nSUB _INBOX.busbench.probe 1\r\nPUB \$JS.API.INFO _INBOX.busbench.probe 0\r\n\r\nPING\r\n" >&3
        while IFS= read -r -t 4 line <&3; do
            case "$line" in
                MSG*) IFS= read -r -t 4 body <&3; printf "%s\n" "$body"; exit 0 ;;
                -ERR*) printf "%s\n" "$line"; exit 1 ;;
            esac
        done
        exit 1
    ' "$NATS_HOST" "$NATS_PORT" 2>/dev/null
}

nats_answers() {
    local reply
    reply="$(nats_jetstream_reply)" || return 1
    [[ "$reply" == *'"type":"io.nats.jetstream.api.v1.account_info_response"'* && "$reply" != *'"error"'* ]]
}

pid_alive() { # pidfile
    [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# --- installs ---------------------------------------------------------------------------------

ensure_kcat() {
    command -v kcat >/dev/null 2>&1 && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian's kcat (an independent Kafka client used for health checks)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat) >/dev/null 2>&1 \
            || log "warning: kcat could not be installed; Kafka readiness falls back to a port check"
    else
        log "warning: kcat is not installed; Kafka readiness falls back to a port check"
    fi
}

ensure_kafka() {
    [[ -f "$KAFKA_LIB/.complete" ]] && return 0
    command -v java >/dev/null || die "java (17+) is required to run Apache Kafka"
    command -v mvn >/dev/null || die "mvn is required to collect Apache Kafka's jars"
    log "collecting Apache Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIB"
    rm -rf "$KAFKA_LIB" && mkdir -p "$KAFKA_LIB"
    mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB" >&2 \
        || die "Maven could not collect Apache Kafka $KAFKA_VERSION (see the output above)"
    touch "$KAFKA_LIB/.complete"
}

ensure_nats() {
    [[ -x "$NATS_BIN" ]] && return 0
    mkdir -p "$CACHE/bin"
    if command -v go >/dev/null 2>&1; then
        log "building nats-server $NATS_VERSION with go install"
        local gobin
        gobin="$(mktemp -d)"
        if GOBIN="$gobin" go install "github.com/nats-io/nats-server/v2@$NATS_VERSION" >&2; then
            mv "$gobin/nats-server" "$NATS_BIN"
            rm -rf "$gobin"
            return 0
        fi
        rm -rf "$gobin"
        log "go install of nats-server $NATS_VERSION failed"
    fi
    log "FALLBACK: using Debian's nats-server package instead of $NATS_VERSION (older; lacks 2.10+ features)"
    if ! command -v nats-server >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server) >&2 \
            || die "neither go install nor Debian's package could provide nats-server"
    fi
    ln -sf "$(command -v nats-server)" "$NATS_BIN"
}

# --- start ------------------------------------------------------------------------------------

write_kafka_config() {
    mkdir -p "$KAFKA_DIR/data"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/brokers.sh: single-node KRaft (broker + controller) on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=2
log.retention.check.interval.ms=60000
log.segment.bytes=134217728
EOF
}

start_kafka() {
    if kafka_answers; then
        if pid_alive "$KAFKA_DIR/kafka.pid"; then log "kafka: already running (pid $(cat "$KAFKA_DIR/kafka.pid"))"
        else log "kafka: a broker already answers on $KAFKA_HOST:$KAFKA_PORT; using it (external, not managed)"; fi
        return 0
    fi
    ensure_kafka
    write_kafka_config
    local cp="$KAFKA_LIB/*"
    local log4j="-Dlog4j2.configurationFile=file:$ROOT/scripts/kafka/log4j2.properties"
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(java -cp "$cp" "$log4j" kafka.tools.StorageTool random-uuid 2>>"$KAFKA_DIR/kafka.log" | tail -1)"
        java -cp "$cp" "$log4j" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
            -c "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/kafka.log" 2>&1 \
            || die "kafka: formatting the storage failed; see $KAFKA_DIR/kafka.log"
    fi
    log "kafka: starting Apache Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (log: $KAFKA_DIR/kafka.log)"
    # The JVM options Kafka's own start scripts use (kafka-run-class.sh's performance options:
    # G1 aiming at 20 ms pauses rather than the JVM's default 200 ms), so the broker measured is
    # the broker users run. Its garbage-collection pauses go to gc.log (two files of 10 MB at
    # most): a pause there is the first thing to check when Kafka's latency has a tail.
    nohup java "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -XX:MaxInlineLevel=15 -Djava.awt.headless=true "$log4j" \
        "-Xlog:gc:file=$KAFKA_DIR/gc.log:time,uptime:filecount=2,filesize=10m" \
        -cp "$cp" kafka.Kafka "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/kafka.log" 2>&1 </dev/null &
    echo $! >"$KAFKA_DIR/kafka.pid"
}

start_nats() {
    mkdir -p "$NATS_DIR/data"
    if nats_answers; then
        if pid_alive "$NATS_DIR/nats.pid"; then log "nats: already running (pid $(cat "$NATS_DIR/nats.pid"))"
        else log "nats: a JetStream server already answers on $NATS_HOST:$NATS_PORT; using it (external, not managed)"; fi
        return 0
    fi
    ensure_nats
    log "nats: starting nats-server $("$NATS_BIN" --version 2>/dev/null | awk '{print $NF}') with JetStream on $NATS_HOST:$NATS_PORT (log: $NATS_DIR/nats.log)"
    nohup "$NATS_BIN" -js -sd "$NATS_DIR/data" -a "$NATS_HOST" -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
        >>"$NATS_DIR/nats.log" 2>&1 </dev/null &
    echo $! >"$NATS_DIR/nats.pid"
}

# Waits until `probe` succeeds, or fails naming the broker and its log, within START_TIMEOUT_SECS.
wait_ready() { # name probe pidfile logfile
    local name="$1" probe="$2" pidfile="$3" logfile="$4"
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until "$probe"; do
        if [[ -f "$pidfile" ]] && ! pid_alive "$pidfile"; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during start-up; see $logfile"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" >&2 || true
            die "$name did not answer within ${START_TIMEOUT_SECS}s; see $logfile"
        fi
        sleep 0.5
    done
    log "$name: ready"
}

cmd_up() {
    mkdir -p "$KAFKA_DIR" "$NATS_DIR"
    ensure_kcat
    start_kafka
    start_nats
    wait_ready kafka kafka_answers "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/kafka.log"
    wait_ready nats nats_answers "$NATS_DIR/nats.pid" "$NATS_DIR/nats.log"
}

# --- stop -------------------------------------------------------------------------------------

# Stops the process recorded in pidfile, after checking that its command line is the one this
# script started (a recycled pid is never signalled).
stop_pidfile() { # name pidfile expected-cmdline-fragment
    local name="$1" pidfile="$2" fragment="$3" pid
    [[ -f "$pidfile" ]] || { log "$name: not started by this script"; return 0; }
    pid="$(cat "$pidfile")"
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"; log "$name: not running"; return 0
    fi
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$fragment"; then
        rm -f "$pidfile"; log "$name: pid $pid is no longer ours; left alone"; return 0
    fi
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name: still running after ${STOP_TIMEOUT_SECS}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
    log "$name: stopped"
}

cmd_down() {
    stop_pidfile nats "$NATS_DIR/nats.pid" "$NATS_DIR/data"
    stop_pidfile kafka "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/server.properties"
}

cmd_clean() {
    cmd_down
    rm -rf "$KAFKA_DIR" "$NATS_DIR"
    log "removed broker data under $STATE"
}

# --- status -----------------------------------------------------------------------------------

cmd_status() {
    local rc=0 managed version
    if kafka_answers; then
        managed="external"; pid_alive "$KAFKA_DIR/kafka.pid" && managed="managed, pid $(cat "$KAFKA_DIR/kafka.pid")"
        version="unknown"
        if pid_alive "$KAFKA_DIR/kafka.pid"; then
            version="$(grep -o 'Kafka version: [^ ]*' "$KAFKA_DIR/kafka.log" | tail -1 | awk '{print $3}')"
            [[ -n "$version" ]] || version="$KAFKA_VERSION"
        fi
        printf 'kafka  up    Apache Kafka %s (KRaft)  %s:%s  (%s)\n' "$version" "$KAFKA_HOST" "$KAFKA_PORT" "$managed"
    else
        printf 'kafka  down  %s:%s\n' "$KAFKA_HOST" "$KAFKA_PORT"; rc=1
    fi
    if nats_answers; then
        managed="external"; pid_alive "$NATS_DIR/nats.pid" && managed="managed, pid $(cat "$NATS_DIR/nats.pid")"
        version="$(curl -fsS --max-time 3 "http://$NATS_HOST:$NATS_MONITOR_PORT/varz" 2>/dev/null \
            | sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' | head -1)"
        printf 'nats   up    nats-server %s (JetStream)  nats://%s:%s  monitor http://%s:%s  (%s)\n' \
            "${version:-unknown}" "$NATS_HOST" "$NATS_PORT" "$NATS_HOST" "$NATS_MONITOR_PORT" "$managed"
    else
        printf 'nats   down  nats://%s:%s\n' "$NATS_HOST" "$NATS_PORT"; rc=1
    fi
    return $rc
}

# --- faults -----------------------------------------------------------------------------------

# The pid of a broker this script started, checked against its command line; fails otherwise.
managed_pid() { # name
    local pidfile fragment pid
    case "$1" in
        kafka) pidfile="$KAFKA_DIR/kafka.pid"; fragment="$KAFKA_DIR/server.properties" ;;
        nats) pidfile="$NATS_DIR/nats.pid"; fragment="$NATS_DIR/data" ;;
        *) die "unknown broker '$1' (kafka or nats)" ;;
    esac
    pid_alive "$pidfile" || die "$1: not running under this script (no live pid in $pidfile)"
    pid="$(cat "$pidfile")"
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$fragment" \
        || die "$1: pid $pid is not the broker this script started"
    echo "$pid"
}

cmd_start() { # name
    mkdir -p "$KAFKA_DIR" "$NATS_DIR"
    case "$1" in
        kafka) ensure_kcat; start_kafka; wait_ready kafka kafka_answers "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/kafka.log" ;;
        nats) start_nats; wait_ready nats nats_answers "$NATS_DIR/nats.pid" "$NATS_DIR/nats.log" ;;
        *) die "unknown broker '$1' (kafka or nats)" ;;
    esac
}

cmd_kill() { # name
    local pid
    pid="$(managed_pid "$1")"
    kill -CONT "$pid" 2>/dev/null || true
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    log "$1: killed (SIGKILL, pid $pid)"
}

cmd_pause() { # name [seconds]
    local pid
    pid="$(managed_pid "$1")"
    kill -STOP "$pid"
    log "$1: paused (SIGSTOP, pid $pid)"
    if [[ -n "${2:-}" ]]; then
        sleep "${2%s}"
        kill -CONT "$pid"
        log "$1: resumed after ${2%s}s"
    fi
}

cmd_resume() { # name
    local pid
    pid="$(managed_pid "$1")"
    kill -CONT "$pid"
    log "$1: resumed (SIGCONT, pid $pid)"
}

case "${1:-}" in
    up) cmd_up ;;
    start) cmd_start "${2:-}" ;;
    kill) cmd_kill "${2:-}" ;;
    restart) cmd_kill "${2:-}"; cmd_start "${2:-}" ;;
    pause) cmd_pause "${2:-}" "${3:-}" ;;
    resume) cmd_resume "${2:-}" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    clean) cmd_clean ;;
    kafka-version) pid_alive "$KAFKA_DIR/kafka.pid" && echo "$KAFKA_VERSION" ;;
    nats-bin) ensure_nats >&2 && echo "$NATS_BIN" ;;
    *) echo "usage: $0 up|down|status|clean|kafka-version|nats-bin|start|kill|restart|pause|resume [NAME]" >&2; exit 2 ;;
esac
