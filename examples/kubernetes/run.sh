#!/usr/bin/env bash
# One sharded busbench run on Kubernetes, from start to merged report:
#
#   examples/kubernetes/run.sh SCENARIO SHARDS IMAGE
#   examples/kubernetes/run.sh scenarios/medium.toml 3 registry.example/busbench:0.1.0
#
# Creates the scenario's ConfigMap and the shards' headless Service, starts the Indexed Job with a start time LEAD seconds
# ahead (default 120: image pulls and set-up must fit in it), waits for every shard, runs the
# merge Job, and copies the run's folder (shards and merged reports) to ./results/<run id>
# through a short-lived pod on the results volume. Needs kubectl with a context for the
# cluster, and results-pvc.yaml applied once.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: run.sh SCENARIO SHARDS IMAGE"
scenario="${1:?$usage}"
shards="${2:?$usage}"
image="${3:?$usage}"
lead="${LEAD:-120}"
timeout="${TIMEOUT:-3600s}"

run_id="${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ | tr 'A-Z' 'a-z')}"
start_at="$(date -u -d "+$lead seconds" +%Y-%m-%dT%H:%M:%SZ)"
fill() {
    sed -e "s|__RUN_ID__|$run_id|g" -e "s|__START_AT__|$start_at|g" \
        -e "s|__SHARDS__|$shards|g" -e "s|__IMAGE__|$image|g" "$1"
}

kubectl create configmap "busbench-scenario-$run_id" --from-file=scenario.toml="$scenario"
fill "$here/service.yaml" | kubectl apply -f -
fill "$here/job.yaml" | kubectl apply -f -
echo "run $run_id: $shards shards, measured phase from $start_at" >&2
kubectl wait --for=condition=complete "job/busbench-$run_id" --timeout="$timeout"
fill "$here/merge-job.yaml" | kubectl apply -f -
kubectl wait --for=condition=complete "job/busbench-merge-$run_id" --timeout=300s
kubectl logs "job/busbench-merge-$run_id"

# Copy the results out through a pod that mounts the volume.
kubectl run "busbench-copy-$run_id" --image="$image" --restart=Never \
    --overrides='{"spec":{"containers":[{"name":"copy","image":"'"$image"'","command":["sleep","600"],"volumeMounts":[{"name":"results","mountPath":"/results"}]}],"volumes":[{"name":"results","persistentVolumeClaim":{"claimName":"busbench-results"}}]}}'
kubectl wait --for=condition=ready "pod/busbench-copy-$run_id" --timeout=120s
mkdir -p results
kubectl cp "busbench-copy-$run_id:/results/$run_id" "results/$run_id"
kubectl delete pod "busbench-copy-$run_id" --wait=false
kubectl delete configmap "busbench-scenario-$run_id"
kubectl delete service "busbench-$run_id"
echo "results/$run_id/merged holds the merged report" >&2
