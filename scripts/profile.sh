#!/usr/bin/env bash
# Where a cell spends its time: runs one backend and mode of a scenario under `perf record`
# and renders a flamegraph with inferno.
#
#   scripts/profile.sh SCENARIO BACKEND MODE      e.g. scripts/profile.sh scenarios/heavy.toml memory raw
#
# Writes target/profile/<scenario>-<backend>-<mode>.svg (open it in a browser) and .folded (the
# collapsed stacks), and prints the functions with the most samples of their own. The whole
# busbench process is sampled: the bus, its client library, the harness and the tokio runtime
# (the ceiling is left out). Needs `perf` (Debian: linux-perf) and inferno
# (`cargo install inferno`); brokers as for any run (scripts/brokers.sh up).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ $# -ne 3 ]]; then
    echo "usage: $0 SCENARIO BACKEND MODE   (BACKEND: kafka, nats, memory; MODE: raw, envelope)" >&2
    exit 2
fi
scenario="$1" backend="$2" mode="$3"
[[ -f "$scenario" ]] || { echo "profile: no scenario file $scenario" >&2; exit 2; }
case "$backend" in kafka|nats|memory) ;; *) echo "profile: unknown backend $backend" >&2; exit 2 ;; esac
case "$mode" in raw|envelope) ;; *) echo "profile: unknown mode $mode" >&2; exit 2 ;; esac
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "profile: $tool is missing (perf: linux-perf; inferno: cargo install inferno)" >&2; exit 2; }
done

name="$(basename "$scenario" .toml)-$backend-$mode"
out="target/profile"
mkdir -p "$out"
# The scenario with one backend, one mode and no ceiling: top-level keys replaced, the rest kept.
single="$out/$name.toml"
{
    printf 'backends = ["%s"]\nmodes = ["%s"]\nceiling = false\n' "$backend" "$mode"
    grep -vE '^[[:space:]]*(backends|modes|ceiling)[[:space:]]*=' "$scenario"
} >"$single"

cargo build --release --quiet
export BUSBENCH_KAFKA_VERSION="${BUSBENCH_KAFKA_VERSION:-$(scripts/brokers.sh kafka-version || true)}"
# DWARF call graphs: release builds keep debug info but no frame pointers.
perf record -F 1999 --call-graph dwarf,16384 -o "$out/$name.perf.data" -- \
    target/release/busbench run "$single" --no-progress --out "$out/results" >&2
perf script -i "$out/$name.perf.data" 2>/dev/null | inferno-collapse-perf >"$out/$name.folded"
inferno-flamegraph --title "busbench $name" <"$out/$name.folded" >"$out/$name.svg"
rm -f "$out/$name.perf.data"

total="$(awk '{ n += $NF } END { print n }' "$out/$name.folded")"
echo "profile: flamegraph $out/$name.svg"
echo "profile: most samples of their own (the function running, not its callers):"
awk '{ count = $NF; $NF = ""; n = split($0, frames, ";"); leaf = frames[n]; sub(/[[:space:]]+$/, "", leaf); self[leaf] += count }
     END { for (f in self) printf "%d\t%s\n", self[f], f }' "$out/$name.folded" \
    | sort -rn | head -20 \
    | awk -v total="$total" -F'\t' '{ printf "  %5.1f%%  %s\n", 100 * $1 / total, substr($2, 1, 110) }'
