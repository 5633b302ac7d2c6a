#!/usr/bin/env bash
# Runs the operator on this machine against the local cluster, under its own ServiceAccount
# identity (so its RBAC rules are enforced), for demos and manual testing.
# Usage: hack/operator.sh start | stop | logs
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${OUTRIGGER_CLUSTER_RUN:-/tmp/outrigger-cluster}
eval "$(hack/cluster.sh env)"

start() {
  stop
  kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
  kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
  kubectl apply -f manifests/operator-rbac.yaml >/dev/null
  cargo build -q -p outrigger-operator
  (KUBECONFIG=$RUN/operator.kubeconfig setsid target/debug/outrigger-operator run \
      --admin-addr 127.0.0.1:18080 --log-format text >"$RUN/operator.log" 2>&1 & echo $! >"$RUN/operator.pid")
  for _ in $(seq 60); do
    curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fsS http://127.0.0.1:18080/readyz >/dev/null || { tail -20 "$RUN/operator.log" >&2; exit 1; }
  echo "[operator] running (pid $(cat "$RUN/operator.pid")), admin on http://127.0.0.1:18080, log $RUN/operator.log" >&2
}

stop() {
  if [[ -f $RUN/operator.pid ]]; then
    kill "$(cat "$RUN/operator.pid")" 2>/dev/null || true
    rm -f "$RUN/operator.pid"
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  logs) tail -f "$RUN/operator.log" ;;
  *) echo "usage: $0 start|stop|logs" >&2; exit 2 ;;
esac
