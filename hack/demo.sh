#!/usr/bin/env bash
# `make demo`: a live canary experiment on the local cluster, from a fresh machine.
#   - `make up` first (quick when everything is up already);
#   - in namespace outrigger-demo: the service `shop` (three replicas of the test app) with a
#     canary RolloutStrategy, and a `load` Deployment sending it 40 requests a second from inside
#     the cluster;
#   - version v2, failing a fifth of its requests, is rolled out: the analysis fails it and it is
#     rolled back; then v3, healthy, is rolled out and promoted. `kubectl outrigger get rollout
#     --watch` shows the traffic split, the analysis and the decisions as they happen;
#   - a summary of both experiments, with the decisions' numbers and what the clients saw.
# OUTRIGGER_DEMO_NAMESPACE changes the namespace; it is recreated on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${OUTRIGGER_DEMO_NAMESPACE:-outrigger-demo}
BIN_DIR=${OUTRIGGER_BIN_DIR:-/usr/local/bin}
TIMEOUT=${OUTRIGGER_DEMO_TIMEOUT:-300}

log() { printf '[demo] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

hack/up.sh
eval "$(hack/cluster.sh env)"
PLUGIN=$BIN_DIR/kubectl-outrigger

log "preparing namespace $NS"
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
for _ in $(seq 60); do kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1 && break; sleep 0.5; done

kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
# 20% of requests to the canary, judged three times 5 s apart on its own success rate and p99
# latency against stable's; then half the traffic, judged again; then all of it.
apiVersion: outrigger.dev/v1alpha1
kind: RolloutStrategy
metadata:
  name: canary
spec:
  strategy:
    canary:
      steps:
        - setWeight: 20
        - analysis:
            interval: 5s
            count: 3
            failureLimit: 1
            minRequestCount: 20
            metrics:
              - name: success-rate
                type: successRate
                min: 95
              - name: p99-latency
                type: latency
                percentile: 99
                max: 250
        - setWeight: 50
        - analysis:
            interval: 5s
            count: 2
            failureLimit: 1
            minRequestCount: 20
            metrics:
              - name: success-rate
                type: successRate
                min: 95
        - setWeight: 100
      rollback:
        automatic: true
        stepPercent: 25
        stepInterval: 1s
---
apiVersion: outrigger.dev/v1alpha1
kind: ReplicatedService
metadata:
  name: shop
spec:
  replicas: 3
  template:
    spec:
      containers:
        - name: app
          image: outrigger/testapp:dev
          imagePullPolicy: IfNotPresent
          ports:
            - containerPort: 8080
          env:
            - name: VERSION
              value: v1
            - name: ERROR_PERCENT
              value: "0"
  ports:
    - name: http
      port: 80
      targetPort: 8080
  readiness:
    httpPath: /healthz
    port: 8080
    periodSeconds: 1
  rolloutStrategyRef:
    name: canary
EOF

log "waiting for shop to be ready behind its request splitter"
ip=""
for _ in $(seq 180); do
  ready=$(kubectl -n "$NS" get rsvc shop -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  selector=$(kubectl -n "$NS" get service shop -o jsonpath='{.spec.selector.outrigger\.dev/splitter}' 2>/dev/null || true)
  if [[ $ready == True && -n $selector ]]; then
    ip=$(kubectl -n "$NS" get service shop -o jsonpath='{.spec.clusterIP}')
    break
  fi
  sleep 1
done
[[ -n $ip ]] || die "shop did not become ready; kubectl -n $NS describe rsvc shop"

log "starting in-cluster load: 40 requests/s to http://$ip/"
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: load
spec:
  replicas: 1
  selector:
    matchLabels: {app: load}
  template:
    metadata:
      labels: {app: load}
    spec:
      containers:
        - name: load
          image: outrigger/testapp:dev
          imagePullPolicy: IfNotPresent
          args: ["load", "http://$ip/", "40"]
EOF
kubectl -n "$NS" rollout status deployment/load --timeout=120s >/dev/null
sleep 5

# Rolls VERSION out with ERROR_PERCENT, watching live until the rollout ends; prints the result line.
experiment() {
  local version=$1 errors=$2 started=$SECONDS
  log "rolling out $version (failing $errors% of its requests)"
  kubectl -n "$NS" patch rsvc shop --type merge -p "$(printf \
    '{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"outrigger/testapp:dev","ports":[{"containerPort":8080}],"env":[{"name":"VERSION","value":"%s"},{"name":"ERROR_PERCENT","value":"%s"}]}]}}}}' \
    "$version" "$errors")" >/dev/null
  timeout "$TIMEOUT" "$PLUGIN" -n "$NS" get rollout shop --watch --until-finished \
    || die "the rollout of $version did not finish within ${TIMEOUT}s"
  local status
  status=$(kubectl -n "$NS" get rsvc shop -o json)
  local phase decision
  phase=$(jq -r '.status.rollout.phase' <<<"$status")
  decision=$(jq -r '[.status.rollout.history[] | select(.decision == "Rollback" or .decision == "Promote" or .decision == "Promoted")] | last | "\(.decision): \(.reason)"' <<<"$status")
  printf '%s|%s|%s|%s|%s\n' "$version" "$errors" "$phase" "$((SECONDS - started))" "$decision" >>"$RESULTS"
  sleep 3
}

RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
experiment v2 20
experiment v3 0

served=$(kubectl -n "$NS" logs deployment/load --tail 1000 2>/dev/null \
  | awk '/^load:/ {ok += $2; failed += $4} END {printf "%d ok, %d failed", ok, failed}')
stable=$(kubectl -n "$NS" get rsvc shop -o jsonpath='{.status.rollout.stableRevision}')
echo
echo "Summary"
echo "-------"
while IFS='|' read -r version errors phase seconds decision; do
  echo "  $version (fails $errors% of requests): $phase after ${seconds}s"
  echo "      $decision" | fold -s -w 96 | sed '2,$s/^/      /'
done <"$RESULTS"
echo "  clients (in-cluster load, 40 requests/s): $served"
echo "  stable revision now: $stable (v3 serves every request)"
echo
echo "Look again with: kubectl outrigger -n $NS get rollout shop"
echo "Remove the demo: kubectl delete namespace $NS"
