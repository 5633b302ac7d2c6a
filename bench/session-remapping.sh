#!/usr/bin/env bash
# Session remapping on the local cluster: which pod each of KEYS session keys reaches, before and
# after scaling a service from 4 to 5 replicas, through three sticky front ends in the same run:
#   outrigger   a ReplicatedService with `sessionAffinity` on the `x-user` header: its front
#               splitter hashes the key onto the ready pods (virtual nodes as the CR's default)
#   kube-proxy  a Service with `sessionAffinity: ClientIP` over the same pods; the key is the client
#               address, so each key connects from an address of its own (10.253.0.0/16, made local
#               to this machine by one `ip route add local`)
#   nginx       Debian's nginx on loopback, `hash $http_x_user consistent` over the pods' addresses,
#               its upstream rewritten and reloaded after the scale-up
# Every pod runs the test app, which answers with its pod's name. Reported per front end: the keys
# that reach a different pod after the change (ideal: the 1/5 the new pod takes, and no others),
# the keys that moved between old pods (ideal: none), and the new pod's share.
# The pods and the splitter run in a namespace of their own with the operator as a local process,
# as in the cluster tests; the cluster and the images must be up (`make cluster-up`,
# `OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh testapp request-splitter`).
# Usage: bench/session-remapping.sh   Environment: KEYS (10000), PROFILE (dev: the operator binary).
# This is a benchmark, not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000}
PROFILE=${PROFILE:-dev}
eval "$(hack/cluster.sh env)"
RUN=/tmp/outrigger-cluster
NS=remap-$$
WORK=$(mktemp -d)
SOURCES=10.253.0.0/16
log() { echo "[session-remapping] $*" >&2; }

cargo build -q --profile "$PROFILE" -p outrigger-operator
BINARY=target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/outrigger-operator
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl apply -f manifests/operator-rbac.yaml >/dev/null
kubectl create namespace "$NS" >/dev/null
ROUTE_ADDED=
OPERATOR_PID=
NGINX_PID=
cleanup() {
  [[ -n $OPERATOR_PID ]] && kill "$OPERATOR_PID" 2>/dev/null || true
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null || true
  [[ -n $ROUTE_ADDED ]] && ip route del local "$SOURCES" dev lo 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
if ! ip route show table local | grep -q "^local $SOURCES"; then
  ip route add local "$SOURCES" dev lo
  ROUTE_ADDED=1
fi

KUBECONFIG=$RUN/operator.kubeconfig "$BINARY" run --no-webhook --no-leader-election \
  --watch-namespace "$NS" --admin-addr 127.0.0.1:0 --log-format text --log warn \
  --sidecar-image request-splitter=outrigger/request-splitter:dev \
  >"$WORK/operator.log" 2>&1 &
OPERATOR_PID=$!

kubectl apply -n "$NS" -f - >/dev/null <<'EOF'
apiVersion: outrigger.dev/v1alpha1
kind: ReplicatedService
metadata: {name: web}
spec:
  replicas: 4
  template:
    spec:
      containers:
      - name: app
        image: outrigger/testapp:dev
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        env:
        - name: VERSION
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
  ports: [{name: http, port: 80, targetPort: 8080}]
  readiness: {httpPath: /healthz, port: 8080, periodSeconds: 1}
  sessionAffinity: {source: header, name: x-user}
---
apiVersion: v1
kind: Service
metadata: {name: web-clientip}
spec:
  selector: {outrigger.dev/replicatedservice: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
EOF

ready_pods() {
  kubectl get pods -n "$NS" -l outrigger.dev/replicatedservice=web -o json | jq -r '.items[]
    | select(.metadata.deletionTimestamp == null)
    | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))
    | "\(.metadata.name) \(.status.podIP)"' | sort
}
wait_for_pods() {
  local want=$1
  for _ in $(seq 1 180); do
    [[ $(ready_pods | wc -l) -eq $want ]] && return 0
    sleep 1
  done
  log "fewer than $want ready pods after 180 s"; kubectl get pods -n "$NS" >&2; exit 1
}
cluster_ip() { kubectl get service "$1" -n "$NS" -o jsonpath='{.spec.clusterIP}'; }

# KEYS requests, one per key, to one front end; prints "key pod" lines.
#   header HOST PORT   the key in `x-user`, over keep-alive connections
#   source HOST PORT   the key as the client address 10.253.<key / 256>.<key % 256>, a connection each
cat >"$WORK/keys.py" <<'EOF'
import http.client, socket, sys, threading
mode, host, port, keys = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
answers = [None] * keys
def source(key):
    return "10.253.%d.%d" % (key // 256, key % 256)
def worker(first):
    conn = None
    for key in range(first, keys, 8):
        for _ in range(5):
            try:
                if mode == "source":
                    conn = http.client.HTTPConnection(host, port, timeout=5, source_address=(source(key), 0))
                elif conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request("GET", "/", headers={"x-user": "user-%d" % key})
                response = conn.getresponse()
                body = response.read().decode()
                if response.status == 200:
                    answers[key] = next((w[len("version="):] for w in body.split() if w.startswith("version=")), body.strip())
                    if mode == "source":
                        conn.close()
                    break
            except (OSError, http.client.HTTPException):
                pass
            if conn is not None:
                conn.close()
            conn = None
threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
for key, pod in enumerate(answers):
    print(key, pod or "-")
EOF
placement() { python3 "$WORK/keys.py" "$@" "$KEYS"; }

nginx_up() {
  mkdir -p "$WORK/nginx"
  {
    echo "pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log; daemon off; worker_processes 1;"
    echo "events {} http { access_log off; upstream pods { hash \$http_x_user consistent;"
    ready_pods | awk '{print "server " $2 ":8080;"}'
    echo "} server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://pods; } } }"
  } >"$WORK/nginx/nginx.conf"
  if [[ -z $NGINX_PID ]]; then
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
    NGINX_PID=$!
  else
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -s reload
  fi
  sleep 1
}
NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# The splitter's placement once two rounds agree and every ready pod serves keys: until the
# splitter has read the pods from the EndpointSlices, kube-proxy spreads keys at random.
settled_splitter() {
  local out=$1 pods=$2 address
  address=$(cluster_ip web)
  for _ in $(seq 1 60); do
    placement header "$address" 80 >"$out.a"
    placement header "$address" 80 >"$out.b"
    if cmp -s "$out.a" "$out.b" && [[ $(awk '{print $2}' "$out.a" | grep -v '^-$' | sort -u | wc -l) -eq $pods ]]; then
      mv "$out.a" "$out"; rm -f "$out.b"; return 0
    fi
    sleep 2
  done
  log "the splitter's placement did not settle"; exit 1
}

round() {
  local name=$1 pods=$2
  log "round $name: $KEYS keys through each front end"
  settled_splitter "$WORK/outrigger.$name" "$pods"
  placement source "$(cluster_ip web-clientip)" 80 >"$WORK/kube-proxy.$name"
  placement header 127.0.0.1 "$NGINX_PORT" >"$WORK/nginx.$name"
}

log "4 replicas"
wait_for_pods 4
nginx_up
round before 4
OLD_PODS=$(ready_pods | awk '{print $1}')
log "scaling to 5 replicas"
kubectl patch replicatedservice web -n "$NS" --type merge -p '{"spec":{"replicas":5}}' >/dev/null
wait_for_pods 5
NEW_POD=$(comm -13 <(echo "$OLD_PODS") <(ready_pods | awk '{print $1}'))
nginx_up
round after 5

echo
echo "Session remapping, $KEYS keys, 4 → 5 replicas (new pod $NEW_POD); ideal: 20.0% moved, all to the new pod"
printf '| %-10s | %12s | %16s | %18s | %14s |\n' "front end" "keys moved" "to the new pod" "between old pods" "unanswered"
printf '|%s|%s|%s|%s|%s|\n' "------------" "--------------" "------------------" "--------------------" "----------------"
for front in outrigger kube-proxy nginx; do
  awk 'NR == FNR { before[$1] = $2; next } { print $1, before[$1], $2 }' \
    "$WORK/$front.before" "$WORK/$front.after" | awk -v keys="$KEYS" -v new="$NEW_POD" -v front="$front" '
    $2 == "-" || $3 == "-" { lost++; next }
    $2 != $3 { moved++; if ($3 == new) to_new++; else between++ }
    END { printf "| %-10s | %11.1f%% | %15.1f%% | %17.1f%% | %14d |\n", front,
          100 * moved / keys, 100 * to_new / keys, 100 * between / keys, lost }'
done
echo
echo "xt_recent ip_list_tot (addresses kube-proxy's ClientIP affinity remembers per pod): $(cat /sys/module/xt_recent/parameters/ip_list_tot 2>/dev/null || echo unknown)"
