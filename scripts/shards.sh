#!/usr/bin/env bash
# Runs a scenario split over N busbench processes on this machine, the path a run over several
# load hosts takes: every process runs `busbench run --shard I/N` with one run id and one start
# time, `busbench merge` adds their results up, and the merged throughput is printed beside a
# single-process run of the same scenario.
#
#   scripts/shards.sh scenarios/medium.toml 3 [busbench run flags...]
#
# Starts local Kafka and NATS if none answer (stopped again at the end unless
# BUSBENCH_KEEP_BROKERS=1). Everything is written under BUSBENCH_SHARDS_OUT (default
# results/shards-<UTC time>): single/, shard<I>/ with each shard's log, merged/.
# BUSBENCH_SHARDS_LEAD (default 30) is the seconds from now to the shards' start time: enough
# for every process's set-up and warm-up; BUSBENCH_SHARDS_BARRIER (default 127.0.0.1 and a
# random port) is where shard 0 listens for the others before each cell. Exit code: 0 when
# every run and the merge passed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage="usage: scripts/shards.sh SCENARIO N [busbench run flags...]"
scenario="${1:?$usage}"
count="${2:?$usage}"
shift 2
if ! [[ "$count" =~ ^[1-9][0-9]*$ ]]; then
    echo "shards.sh: N must be a whole number of 1 or more, not '$count'" >&2
    exit 2
fi
if [[ ! -f "$scenario" ]]; then
    echo "shards.sh: no scenario file '$scenario'" >&2
    exit 2
fi
lead="${BUSBENCH_SHARDS_LEAD:-30}"

cargo build --release --locked
bin=./target/release/busbench

source scripts/with-brokers.sh
use_brokers keep

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="${BUSBENCH_SHARDS_OUT:-results/shards-$stamp}"
mkdir -p "$out"

# The one JSON result a run wrote into a folder.
result_in() {
    find "$1" -maxdepth 1 -name '*.json' ! -name '.*' | head -n 1
}

status=0
echo "shards.sh: one process: $bin run $scenario" >&2
"$bin" run "$scenario" --no-progress --out "$out/single" "$@" >"$out/single.txt" || status=$?
single="$(result_in "$out/single")"

run_id="shards-$stamp"
start_at="$(date -u -d "+$lead seconds" +%Y-%m-%dT%H:%M:%SZ)"
# Shard 0 listens here; every cell's measured phase waits until all shards are ready for it.
barrier="${BUSBENCH_SHARDS_BARRIER:-127.0.0.1:$((20000 + RANDOM % 30000))}"
echo "shards.sh: $count processes, run $run_id, measured phase from $start_at, barrier $barrier" >&2
pids=()
for ((index = 0; index < count; index++)); do
    "$bin" run "$scenario" --no-progress --shard "$index/$count" --run-id "$run_id" \
        --start-at "$start_at" --barrier "$barrier" --out "$out/shard$index" "$@" \
        >"$out/shard$index.txt" 2>"$out/shard$index.log" &
    pids+=("$!")
done
shard_results=()
for index in "${!pids[@]}"; do
    code=0
    wait "${pids[$index]}" || code=$?
    if [[ $code != 0 ]]; then
        echo "shards.sh: shard $index exited $code (log: $out/shard$index.log)" >&2
        status=$((status > code ? status : code))
    fi
    file="$(result_in "$out/shard$index")"
    if [[ -n "$file" ]]; then
        shard_results+=("$file")
    fi
done

code=0
"$bin" merge "${shard_results[@]}" --out "$out/merged" >"$out/merged.txt" || code=$?
status=$((status > code ? status : code))
merged="$(result_in "$out/merged" 2>/dev/null || true)"
cat "$out/merged.txt"

if [[ -n "$single" && -n "$merged" ]]; then
    echo
    echo "End-to-end throughput, one process against $count processes (the same scenario, the same brokers):"
    jq -r -n --slurpfile one "$single" --slurpfile many "$merged" --arg n "$count" '
        ["cell", "1 process msg/s", ($n + " processes msg/s"), "ratio", "sent", "received",
         "lost", "start spread ms"],
        ($many[0].cells[] as $m
         | ($one[0].cells[] | select(.backend == $m.backend and .mode == $m.mode)) as $o
         | [($m.backend + "/" + $m.mode),
            ($o.throughput.e2e_msgs_per_sec | floor),
            ($m.throughput.e2e_msgs_per_sec | floor),
            (if $o.throughput.e2e_msgs_per_sec > 0
             then ($m.throughput.e2e_msgs_per_sec / $o.throughput.e2e_msgs_per_sec * 100
                   | floor / 100)
             else "n/a" end),
            $m.sent, $m.received, $m.lost,
            ([$m.shards[].start_offset_ms // 0] | max | floor)])
        | @tsv' | column -t -s $'\t'
fi
echo "shards.sh: reports in $out (merged: $out/merged)" >&2
exit "$status"
