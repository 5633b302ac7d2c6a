#!/usr/bin/env bash
# One-node Kubernetes 1.20.2 for Outrigger's tests and demos, built offline from Debian's own packages:
#   etcd from `etcd-server`; kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#   and kubectl built from Debian bookworm's `kubernetes` source package (the full upstream tree with
#   vendor/); containers run on Debian's `docker.io` through the kubelet's built-in dockershim.
#
# Networking: pods live on docker0 (172.17.0.0/16). The API server listens on every interface and
# advertises the host's docker0 address, so the `kubernetes` Service (10.96.0.1:443) leads pods to it
# through kube-proxy's iptables rules; it calls webhook Services by endpoint (pod) IP. Nothing is
# routed anywhere but loopback and docker0: Docker accepts forwarded pod traffic before kube-proxy's
# rules see it, so a Service IP without endpoints (or any other address) would otherwise leave the
# host through the default route; DOCKER-USER rejects that instead (see `isolate_pods`).
#
# Usage: hack/cluster.sh deps | build | up | down | env | status
#   deps    install the Debian packages the cluster needs (idempotent)
#   build   build and cache the Kubernetes binaries (skipped when cached)
#   up      (re)start the cluster; idempotent, always starts from a clean set of processes
#   down    stop every process `up` started
#   env     print the shell exports for KUBECONFIG and PATH
#   status  exit 0 when the API server answers /readyz and the node is Ready
#
# Identities (static tokens, RBAC enforced):
#   admin                      system:masters         (token: $RUN/admin.token)
#   the operator's SA          system:serviceaccount:outrigger-system:outrigger-operator (token: $RUN/operator.token)
set -euo pipefail

K8S_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
K8S_VERSION=v1.20.2
CACHE=${OUTRIGGER_CLUSTER_CACHE:-$HOME/.cache/outrigger/k8s-$K8S_VERSION}
RUN=${OUTRIGGER_CLUSTER_RUN:-/tmp/outrigger-cluster}
PORT=${OUTRIGGER_CLUSTER_PORT:-16443}
SERVICE_IP=10.96.0.1
POD_CIDR=172.17.0.0/16
BIN=$CACHE/bin
OPERATOR_NAMESPACE=outrigger-system
OPERATOR_SA=outrigger-operator
export PATH=$BIN:/usr/lib/go-1.19/bin:$PATH

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

deps() {
  local need=()
  local pkg
  for pkg in golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server docker.io jq gcc openssl iproute2 ca-certificates \
    iptables conntrack socat; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
  done
  if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# `apt-get source` needs a deb-src entry for bookworm's main component. It is derived from the
# machine's own `deb` entry for Debian's archive (its mirror, its keyring), never a fixed address.
has_deb_src() {
  apt-get indextargets --format '$(TARGET_OF) $(IDENTIFIER) $(COMPONENT) $(RELEASE)' 2>/dev/null \
    | grep -qx 'deb-src Sources main bookworm'
}

debian_mirror() {
  apt-get indextargets --format '$(TARGET_OF) $(IDENTIFIER) $(COMPONENT) $(RELEASE) $(REPO_URI)' 2>/dev/null \
    | awk '$1 == "deb" && $2 == "Packages" && $3 == "main" && $4 !~ /-(security|updates|backports)$/ { print $5; exit }'
}

ensure_deb_src() {
  has_deb_src && return 0
  local mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "no apt source for Debian's archive (main): add one to /etc/apt/sources.list.d/ so the kubernetes source package can be fetched"
  log "enabling deb-src for bookworm from $mirror"
  {
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\n' "$mirror"
    [[ -f $keyring ]] && printf 'Signed-By: %s\n' "$keyring"
  } >/etc/apt/sources.list.d/outrigger-debian-src.sources
  apt-get update -qq
}

build() {
  local c missing=0
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl pause; do
    [[ -x $BIN/$c ]] || missing=1
  done
  ((missing)) || return 0
  deps
  ensure_deb_src
  log "building Kubernetes $K8S_VERSION from Debian's source package (cold build: 5-10 minutes)"
  mkdir -p "$CACHE/dl" "$BIN"
  if ! ls "$CACHE"/dl/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    (cd "$CACHE/dl" && apt-get source --download-only "kubernetes=$K8S_DEB_VERSION" >/dev/null 2>&1) \
      || die "apt-get source kubernetes=$K8S_DEB_VERSION failed"
  fi
  local gopath=$CACHE/gopath
  local src=$gopath/src/k8s.io/kubernetes
  if [[ ! -d $src ]]; then
    mkdir -p "$gopath/src/k8s.io"
    tar xzf "$CACHE"/dl/kubernetes_*.orig.tar.gz -C "$gopath/src/k8s.io"
    mv "$gopath/src/k8s.io/kubernetes-1.20.2" "$src"
    # reflect2 v1.0.1 (vendored) dereferences nil under Go >= 1.18 when json-iterator encodes maps;
    # Debian ships the fixed v1.0.2 as source.
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  fi
  cd "$src"
  export GO111MODULE=off GOPATH=$gopath GOCACHE=$CACHE/gocache CGO_ENABLED=0 GOFLAGS=
  if [[ ! -f pkg/generated/openapi/zz_generated.openapi.go ]]; then
    # The tarball lacks the one generated file kube-apiserver compiles in: the OpenAPI definitions.
    go build -o "$BIN/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local dirs
    dirs=$(grep -Rl --include='*.go' '+k8s:openapi-gen=' pkg vendor/k8s.io \
      | grep -Ev '^vendor/k8s.io/(code-generator|sample-apiserver)/' \
      | xargs -n1 dirname | LC_ALL=C sort -u | sed 's#^#k8s.io/kubernetes/#' | paste -sd,)
    "$BIN/openapi-gen" -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r /dev/null
  fi
  local ldflags="" pkg
  for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitTreeState=clean"
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [[ -x $BIN/$c ]] && continue
    log "go build $c"
    go build -ldflags "$ldflags" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
  gcc -static -O2 -o "$BIN/pause" build/pause/linux/pause.c
  log "binaries cached in $BIN"
}

docker_up() {
  # This sandbox forbids negative oom_score_adj, and dockershim asks -998 for pod sandboxes: runc then fails
  # with "can't get final child's PID from pipe". A runtime wrapper clamps negative values to 0.
  cat > /usr/local/bin/outrigger-runc-clamp <<'W'
#!/bin/bash
args=("$@"); bundle=""
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --bundle || ${args[i]} == -b ]] && bundle=${args[i + 1]}
done
if [[ -n $bundle && -f $bundle/config.json ]]; then
  tmp=$(mktemp)
  jq 'if (.process.oomScoreAdj // 0) < 0 then .process.oomScoreAdj = 0 else . end' "$bundle/config.json" >"$tmp" \
    && cat "$tmp" >"$bundle/config.json"
  rm -f "$tmp"
fi
exec /usr/sbin/runc "$@"
W
  chmod +x /usr/local/bin/outrigger-runc-clamp
  mkdir -p /etc/docker
  local want='{"runtimes":{"runc-clamp":{"path":"/usr/local/bin/outrigger-runc-clamp"}},"default-runtime":"runc-clamp"}'
  local restart=0
  if [[ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$want" ]]; then
    echo "$want" >/etc/docker/daemon.json
    restart=1
  fi
  if ((restart)) && docker info >/dev/null 2>&1; then
    log "restarting dockerd with the clamping runtime"
    pkill -x dockerd || true
    for _ in $(seq 30); do pgrep -x dockerd >/dev/null || break; sleep 0.5; done
  fi
  if ! docker info >/dev/null 2>&1; then
    mkdir -p "$RUN"
    (close_inherited; setsid /usr/sbin/dockerd >"$RUN/dockerd.log" 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 "$RUN/dockerd.log" >&2; die "dockerd did not start"; }
  fi
  if ! docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1; then
    local dir
    dir=$(mktemp -d)
    cp "$BIN/pause" "$dir/"
    printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$dir/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t k8s.gcr.io/pause:3.2 "$dir" >/dev/null 2>&1
    rm -rf "$dir"
  fi
}

# The host's address on docker0: where pods reach the API server.
host_ip() {
  local ip
  ip=$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)
  echo "${ip:-172.17.0.1}"
}

# The API server's serving certificate, valid for loopback (the host's clients), the host's docker0
# address and the `kubernetes` Service (pods). `apiserver.crt` holds the certificate and its CA, and is
# what kubeconfigs and pods (through the controller-manager's root CA) trust. Kept across restarts.
apiserver_cert() {
  local ip=$1 dir=$RUN/certs
  mkdir -p "$dir"
  if [[ -f $dir/apiserver.crt && -f $dir/apiserver.key ]]; then
    local sans
    sans=$(openssl x509 -in "$dir/apiserver.crt" -noout -ext subjectAltName 2>/dev/null || true)
    if grep -q "IP Address:127.0.0.1" <<<"$sans" && grep -q "IP Address:$SERVICE_IP" <<<"$sans"; then
      return 0
    fi
  fi
  log "issuing the API server certificate"
  local tmp
  tmp=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outrigger-local-ca" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$tmp/apiserver.key" \
    -out "$tmp/apiserver.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:$ip,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    >"$tmp/ext.cnf"
  openssl x509 -req -days 3650 -in "$tmp/apiserver.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
    -CAcreateserial -extfile "$tmp/ext.cnf" -out "$tmp/leaf.crt" 2>/dev/null
  cat "$tmp/leaf.crt" "$tmp/ca.crt" >"$dir/apiserver.crt"
  mv "$tmp/apiserver.key" "$dir/apiserver.key"
  rm -rf "$tmp"
}

write_kubeconfig() {
  local file=$1 user=$2 token=$3
  kubectl config --kubeconfig="$file" set-cluster local --server="https://127.0.0.1:$PORT" \
    --certificate-authority="$RUN/certs/apiserver.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig="$file" set-credentials "$user" --token="$token" >/dev/null
  kubectl config --kubeconfig="$file" set-context local --cluster=local --user="$user" >/dev/null
  kubectl config --kubeconfig="$file" use-context local >/dev/null
}

# Closes every descriptor above 2 in the current (sub)shell. A daemon must not inherit what its
# caller holds: started under `flock /tmp/outrigger-cluster.lock hack/cluster.sh up`, it would keep
# the lock held for as long as the cluster runs.
close_inherited() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if ((fd > 2)); then eval "exec $fd>&-"; fi
  done
}

start() {
  local name=$1
  shift
  (close_inherited; setsid "$@" >"$RUN/$name.log" 2>&1 & echo $! >"$RUN/$name.pid")
}

# Pods may reach each other and this host (the API server, on docker0's address), nothing else: a
# connection to a Service IP that kube-proxy did not translate (no endpoints yet) is refused at once,
# as kube-proxy's own REJECT rule would, instead of leaving through the default route.
isolate_pods() {
  local rule
  # Inserted in reverse: TCP gets a reset first, everything else an ICMP error.
  for rule in "-j REJECT --reject-with icmp-port-unreachable" "-p tcp -j REJECT --reject-with tcp-reset"; do
    # shellcheck disable=SC2086 # the rule is a list of arguments
    iptables -C DOCKER-USER -i docker0 ! -o docker0 $rule 2>/dev/null \
      || iptables -I DOCKER-USER -i docker0 ! -o docker0 $rule
  done
}

up() {
  build
  deps
  down
  mkdir -p "$RUN"
  cd "$RUN"
  grep -qE '^127\.0\.0\.1[[:space:]].*\bnode1\b' /etc/hosts || echo '127.0.0.1 node1' >>/etc/hosts
  docker_up
  local ip
  ip=$(host_ip)
  apiserver_cert "$ip"
  [[ -f sa.key ]] || { openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }
  [[ -f admin.token ]] || openssl rand -hex 24 >admin.token
  [[ -f operator.token ]] || openssl rand -hex 24 >operator.token
  {
    echo "$(cat admin.token),admin,admin,\"system:masters\""
    echo "$(cat operator.token),system:serviceaccount:$OPERATOR_NAMESPACE:$OPERATOR_SA,operator,\"system:serviceaccounts,system:serviceaccounts:$OPERATOR_NAMESPACE,system:authenticated\""
  } >tokens.csv
  rm -rf "$RUN/etcd"
  start etcd etcd --data-dir "$RUN/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800
  start apiserver kube-apiserver --etcd-servers=http://127.0.0.1:23790 --secure-port="$PORT" --bind-address=0.0.0.0 \
    --advertise-address="$ip" --cert-dir="$RUN/certs" --tls-cert-file="$RUN/certs/apiserver.crt" \
    --tls-private-key-file="$RUN/certs/apiserver.key" --token-auth-file="$RUN/tokens.csv" \
    --authorization-mode=Node,RBAC --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$RUN/sa.pub" --service-account-signing-key-file="$RUN/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true --enable-aggregator-routing=true \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,DefaultStorageClass,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --audit-log-path="$RUN/audit.log" --audit-policy-file="$(audit_policy)" --audit-log-maxsize=200
  write_kubeconfig "$RUN/kubeconfig" admin "$(cat admin.token)"
  write_kubeconfig "$RUN/operator.kubeconfig" "$OPERATOR_SA" "$(cat operator.token)"
  export KUBECONFIG=$RUN/kubeconfig
  for _ in $(seq 120); do kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done
  kubectl get --raw /readyz >/dev/null 2>&1 || { tail -20 "$RUN/apiserver.log" >&2; die "the API server did not become ready"; }
  start controller-manager kube-controller-manager --kubeconfig="$KUBECONFIG" --authentication-kubeconfig="$KUBECONFIG" \
    --authorization-kubeconfig="$KUBECONFIG" --service-account-private-key-file="$RUN/sa.key" \
    --root-ca-file="$RUN/certs/apiserver.crt" --use-service-account-credentials=true \
    --controllers='*' --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257
  start scheduler kube-scheduler --kubeconfig="$KUBECONFIG" --authentication-kubeconfig="$KUBECONFIG" \
    --authorization-kubeconfig="$KUBECONFIG" --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259
  isolate_pods
  # Service IPs for pods (the `kubernetes` Service above all). conntrack sysctls are left as they are:
  # this sandbox may not let them be written.
  start proxy kube-proxy --kubeconfig="$KUBECONFIG" --hostname-override=node1 --proxy-mode=iptables \
    --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 --metrics-bind-address=127.0.0.1:10249 \
    --healthz-bind-address=127.0.0.1:10256
  cat >"$RUN/kubelet.yaml" <<K
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
address: 127.0.0.1
readOnlyPort: 0
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
# The images are built here and cannot be pulled again: the kubelet must never garbage-collect them
# when the disk fills (it would at 85% by default).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
K
  start kubelet kubelet --kubeconfig="$KUBECONFIG" --config="$RUN/kubelet.yaml" --container-runtime=docker \
    --root-dir="$RUN/kubelet" --hostname-override=node1 --pod-infra-container-image=k8s.gcr.io/pause:3.2
  for _ in $(seq 90); do kubectl get node node1 2>/dev/null | grep -q ' Ready' && break; sleep 1; done
  kubectl get node node1 2>/dev/null | grep -q ' Ready' || { tail -20 "$RUN/kubelet.log" >&2; die "node1 did not become Ready"; }
  # The default ServiceAccount is created by the controller-manager; pods are rejected until it exists.
  for _ in $(seq 60); do kubectl get serviceaccount default >/dev/null 2>&1 && break; sleep 0.5; done
  log "cluster is up: export KUBECONFIG=$KUBECONFIG"
}

audit_policy() {
  # Write requests only: tests count them to prove the operator does not write on resync.
  local file=$RUN/audit-policy.yaml
  cat >"$file" <<'A'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
A
  echo "$file"
}

down() {
  local name pid
  for name in proxy kubelet scheduler controller-manager apiserver etcd; do
    [[ -f $RUN/$name.pid ]] || continue
    pid=$(cat "$RUN/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
  done
  if docker info >/dev/null 2>&1; then
    docker ps -aq --filter name=k8s_ | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
}

status() {
  [[ -f $RUN/kubeconfig ]] || return 1
  KUBECONFIG=$RUN/kubeconfig kubectl get --raw /readyz >/dev/null 2>&1 || return 1
  KUBECONFIG=$RUN/kubeconfig kubectl get node node1 2>/dev/null | grep -q ' Ready'
}

case ${1:-} in
  deps) deps ;;
  build) build ;;
  up) up ;;
  down) down ;;
  env) printf 'export KUBECONFIG=%s\nexport PATH=%s:$PATH\n' "$RUN/kubeconfig" "$BIN" ;;
  status) status ;;
  *) echo "usage: $0 deps|build|up|down|env|status" >&2; exit 2 ;;
esac
