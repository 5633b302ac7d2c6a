#!/usr/bin/env bash
# The operator at scale, on the local cluster, without pods: creates COUNT ReplicatedServices
# (replicas 0) or ShardedServices (one shard of one replica, in a namespace whose ResourceQuota
# allows no pod: a shard cannot have fewer than one replica) in a namespace of their own, with the
# operator running as a local process under its own identity, and reports
# - the time from the first create until every object is Ready in the API (ShardedServices, whose
#   pods the quota forbids: until every one has its children and a status for its generation),
# - the operator's peak RSS and CPU seconds,
# - from the audit log: the operator's writes per object (against the minimum) and, from its
#   metrics, the reads its reconciles sent themselves (watches not counted),
# - a resync of the settled objects (the operator restarted: every object reconciled again) with
#   its writes (the goal is none),
# - the time from one edit among the settled objects until its child reflects it.
# Goals (ReplicatedServices): 10,000 converge in under 5 minutes, under 200 MB RSS, an edit is
# reacted to in under 1 s.
#
# Usage: bench/operator-scale.sh [replicated|sharded] [COUNT]   (default: replicated 1000)
# PROFILE=image-test (default; optimized like the images) or dev, or OPERATOR_BINARY: an operator
# already built; STREAMS (4): kubectl creates at once; SETTLE_LIMIT (300): the most seconds to wait
# for the operator to fall silent. Run 10,000 on a machine otherwise idle: the figures are the API
# server's pace as much as the operator's.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-replicated}
COUNT=${2:-1000}
PROFILE=${PROFILE:-image-test}
STREAMS=${STREAMS:-4}
eval "$(hack/cluster.sh env)"
RUN=/tmp/outrigger-cluster
AUDIT=$RUN/audit.log
OPERATOR_USER=system:serviceaccount:outrigger-system:outrigger-operator
NS=scale-$KIND-$COUNT-$$
case $KIND in
  replicated) RESOURCE=replicatedservices; CHILD=deployment ;;
  sharded) RESOURCE=shardedservices; CHILD=statefulset ;;
  *) echo "usage: $0 [replicated|sharded] [COUNT]" >&2; exit 2 ;;
esac
log() { echo "[operator-scale] $*" >&2; }

if [[ -n ${OPERATOR_BINARY:-} ]]; then
  BINARY=$OPERATOR_BINARY
else
  cargo build -q --profile "$PROFILE" -p outrigger-operator
  BINARY=target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/outrigger-operator
fi
kubectl apply -f crds/ >/dev/null
kubectl apply -f manifests/operator-rbac.yaml >/dev/null
kubectl create namespace "$NS" >/dev/null
if [[ $KIND == sharded ]]; then
  kubectl create quota no-pods -n "$NS" --hard=pods=0 >/dev/null
fi
OPERATOR_PID=
cleanup() {
  [[ -n $OPERATOR_PID ]] && kill "$OPERATOR_PID" 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

ADMIN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_operator() {
  KUBECONFIG=$RUN/operator.kubeconfig "$BINARY" run --no-webhook --no-leader-election \
    --watch-namespace "$NS" --admin-addr "127.0.0.1:$ADMIN_PORT" --log-format text --log warn \
    >>"$RUN/operator-$NS.log" 2>&1 &
  OPERATOR_PID=$!
}
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s + 0}'; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$OPERATOR_PID/stat"; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$OPERATOR_PID/status"; }
# The operator's writes in the namespace from the audit log, since line $1: "total events".
writes_since() {
  tail -n "+$1" "$AUDIT" | jq -r --arg user "$OPERATOR_USER" --arg ns "$NS" \
    'select(.stage == "ResponseComplete" and .user.username == $user and .objectRef.namespace == $ns)
     | .objectRef.resource' | awk '{n++; if ($1 == "events") e++} END {print n + 0, e + 0}'
}
ready_count() {
  if [[ $KIND == replicated ]]; then
    kubectl get "$RESOURCE" -n "$NS" -o json \
      | jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length'
  else
    kubectl get "$RESOURCE" -n "$NS" -o json \
      | jq '[.items[] | select(.status.observedGeneration == .metadata.generation and .status.shardStatuses != null)] | length'
  fi
}

# When the last object became Ready, as seconds since the epoch: ReplicatedServices from their
# Ready condition's transition (to the second); ShardedServices have no Ready condition without
# pods, so the poll's own time.
converged_at() {
  if [[ $KIND == replicated ]]; then
    kubectl get "$RESOURCE" -n "$NS" -o json \
      | jq -r '[.items[].status.conditions[] | select(.type == "Ready") | .lastTransitionTime] | max' \
      | xargs -I{} date -d {} +%s
  else
    date +%s.%N
  fi
}

# YAML documents (each one JSON): a stream that starts with `---` is read as YAML by kubectl.
# Stream $1 of $STREAMS: the objects whose number is $1 modulo $STREAMS.
objects() {
  for i in $(seq "$((${1} + 1))" "$STREAMS" "$COUNT"); do
    echo ---
    if [[ $KIND == replicated ]]; then
      printf '{"apiVersion":"outrigger.dev/v1alpha1","kind":"ReplicatedService","metadata":{"name":"s%d"},"spec":{"replicas":0,"template":{"spec":{"containers":[{"name":"app","image":"outrigger/testapp:dev"}]}},"ports":[{"name":"http","port":80,"targetPort":8080}]}}\n' "$i"
    else
      printf '{"apiVersion":"outrigger.dev/v1alpha1","kind":"ShardedService","metadata":{"name":"s%d"},"spec":{"shards":1,"replicasPerShard":1,"protocol":"redis","port":6379,"template":{"spec":{"containers":[{"name":"store","image":"outrigger/testapp:dev"}]}}}}\n' "$i"
    fi
  done
}

start_operator
until curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null; do sleep 0.2; done
AUDIT_START=$(($(wc -l <"$AUDIT") + 1))
log "creating $COUNT ${RESOURCE} in $NS"
STARTED=$(date +%s.%N)
# Several streams at once: one kubectl creates an object per round trip, and the API server
# takes more than one stream's pace.
CREATORS=()
for stream in $(seq 0 $((STREAMS - 1))); do
  objects "$stream" | kubectl create -n "$NS" -f - >/dev/null &
  CREATORS+=($!)
done
# Not a bare `wait`: that would wait for the operator too.
wait "${CREATORS[@]}"
CREATED=$(date +%s.%N)
# Listing every object is itself load on the API server (10,000 objects are about 25 MB of JSON),
# so the wait polls every 10 s and the time is read from the objects afterwards.
while (($(ready_count) < COUNT)); do sleep "$([[ $KIND == replicated ]] && echo 10 || echo 2)"; done
CONVERGED=$(converged_at)
# Settled: Ready comes before the Deployments report their generation observed; wait until the
# operator has written nothing for 30 s (a status write that met a conflict is retried with backoff).
# At 10,000 the controller manager reports the Deployments' status for many minutes after all are
# Ready, each report a status write here, so the wait ends after SETTLE_LIMIT seconds (300) either way.
quiet() {
  local last=-1 now waited=0
  while now=$(metric outrigger_api_writes_total); [[ $now != "$last" ]] && ((waited < ${SETTLE_LIMIT:-300})); do
    last=$now
    sleep 30
    waited=$((waited + 30))
  done
}
quiet
SETTLED=$(date +%s.%N)
read -r WRITES EVENT_WRITES < <(writes_since "$AUDIT_START")
READS=$(metric outrigger_api_reads_total)
RSS=$(peak_rss_mb)
CPU=$(cpu_seconds)
if [[ $KIND == replicated ]]; then MINIMUM=5; else MINIMUM=4; fi # children applied once, status once

log "resync: the operator restarted, every settled object reconciled again"
kill "$OPERATOR_PID"; wait "$OPERATOR_PID" 2>/dev/null || true
kubectl apply -f manifests/operator-rbac.yaml >/dev/null # the shared cluster's tests re-apply theirs
AUDIT_RESYNC=$(($(wc -l <"$AUDIT") + 1))
RESYNC_STARTED=$(date +%s.%N)
start_operator
until (($(metric outrigger_reconcile_total) >= COUNT)); do sleep 0.5; done
RESYNC_DONE=$(date +%s.%N)
sleep 5
read -r RESYNC_WRITES _ < <(writes_since "$AUDIT_RESYNC")
RESYNC_CPU=$(cpu_seconds)
RESYNC_RSS=$(peak_rss_mb)

log "one edit among the settled objects"
TARGET=s$((COUNT / 2))
if [[ $KIND == replicated ]]; then CHILD_NAME=$TARGET; else CHILD_NAME=$TARGET-shard-0; fi
EDITED=$(date +%s.%N)
kubectl patch "$RESOURCE" "$TARGET" -n "$NS" --type merge \
  -p '{"spec":{"template":{"metadata":{"annotations":{"benchedit":"1"}}}}}' >/dev/null
until [[ $(kubectl get "$CHILD" "$CHILD_NAME" -n "$NS" \
  -o jsonpath='{.spec.template.metadata.annotations.benchedit}') == 1 ]]; do :; done
REACTED=$(date +%s.%N)

seconds() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
per() { awk -v a="$1" -v b="$COUNT" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "| $KIND services | $COUNT |"
echo "| --- | --- |"
echo "| created (kubectl, $STREAMS streams) | $(seconds "$STARTED" "$CREATED") s |"
echo "| first create → all Ready in the API | $(seconds "$STARTED" "$CONVERGED") s |"
echo "| last create → all Ready in the API | $(seconds "$CREATED" "$CONVERGED") s |"
echo "| first create → settled (no operator write for 30 s) | $(seconds "$STARTED" "$SETTLED") s |"
echo "| operator peak RSS | $RSS MB |"
echo "| operator CPU until converged | $CPU s |"
echo "| operator writes per object (minimum $MINIMUM) | $(per "$((WRITES - EVENT_WRITES))") (+ $(per "$EVENT_WRITES") Events) |"
echo "| reads a reconcile sent itself, per object | $(per "$READS") |"
echo "| resync of the settled objects (restart): time / writes | $(seconds "$RESYNC_STARTED" "$RESYNC_DONE") s / $RESYNC_WRITES |"
echo "| operator after the resync: CPU / peak RSS | $RESYNC_CPU s / $RESYNC_RSS MB |"
echo "| one edit → its $CHILD updated | $(seconds "$EDITED" "$REACTED") s |"
