#!/usr/bin/env bash
# `make up`: the whole product on the local cluster, installed the way a user installs it.
#   1. the machine's packages and the cached Kubernetes build (hack/deps.sh);
#   2. the one-node cluster, started only when it is not already running (hack/cluster.sh);
#   3. every image (hack/images.sh: the operator, each sidecar, Redis, the test app), with the
#      `image-test` Cargo profile unless OUTRIGGER_IMAGE_PROFILE says otherwise (`release` is what
#      ships: the same binaries with link-time optimisation, minutes longer to link here);
#   4. the `kubectl outrigger` plugin, installed into ${OUTRIGGER_BIN_DIR:-/usr/local/bin};
#   5. the operator, with the Helm chart (release `outrigger` in `outrigger-system`, the names the
#      README's `helm upgrade --install` uses); objects of an earlier install without Helm (the
#      operator's ServiceAccount and RBAC) are adopted into the release;
#   6. a wait until sidecar injection works (a server-side dry run of a pod that asks for a sidecar).
# Idempotent: a second run rebuilds nothing that did not change and restarts the operator only when
# its image did.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${OUTRIGGER_IMAGE_PROFILE:-image-test}
BIN_DIR=${OUTRIGGER_BIN_DIR:-/usr/local/bin}
RELEASE=outrigger
NAMESPACE=outrigger-system
TARGET=x86_64-unknown-linux-gnu
START=$SECONDS

log() { printf '[up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
step() {
  local what=$1 started=$SECONDS
  shift
  log "$what"
  "$@"
  log "$what: done in $((SECONDS - started)) s"
}

cluster() {
  if hack/cluster.sh status; then
    log "the cluster is already running (\`make down\` stops it)"
  else
    hack/cluster.sh up
  fi
}

images() {
  OUTRIGGER_IMAGE_PROFILE=$PROFILE hack/images.sh
}

plugin() {
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile "$PROFILE" --target "$TARGET" -p kubectl-outrigger
  mkdir -p "$BIN_DIR"
  install -m 0755 "${CARGO_TARGET_DIR:-target}/$TARGET/$PROFILE/kubectl-outrigger" "$BIN_DIR/kubectl-outrigger"
}

# Objects the chart creates that already exist without Helm's ownership (`make up` used to apply
# manifests/operator-rbac.yaml; so does the test suite) are adopted: Helm then takes them over
# instead of refusing to install.
adopt() {
  local object
  while read -r object; do
    [[ -n $object ]] || continue
    if [[ -z $(kubectl get -n "$NAMESPACE" "$object" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}') ]]; then
      log "adopting $object into the Helm release"
      kubectl annotate -n "$NAMESPACE" "$object" --overwrite \
        "meta.helm.sh/release-name=$RELEASE" "meta.helm.sh/release-namespace=$NAMESPACE" >/dev/null
      kubectl label -n "$NAMESPACE" "$object" --overwrite app.kubernetes.io/managed-by=Helm >/dev/null
    fi
  done < <(hack/helm.sh template "$RELEASE" charts/outrigger --namespace "$NAMESPACE" \
    | kubectl get -n "$NAMESPACE" --ignore-not-found -o name -f - 2>/dev/null || true)
}

operator() {
  hack/operator.sh stop
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # The operator's own pods are never sent to its webhook (docs/packaging.md).
  kubectl label namespace "$NAMESPACE" outrigger.dev/injection=disabled --overwrite >/dev/null
  adopt
  # The chart installs the CRDs only when they are missing; they may have changed.
  kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
  local image_id
  image_id=$(docker image inspect -f '{{.Id}}' "outrigger/operator:$VERSION" | cut -c8-19)
  hack/helm.sh upgrade --install "$RELEASE" charts/outrigger --namespace "$NAMESPACE" --create-namespace \
    --set-string "podAnnotations.outrigger\.dev/image-id=$image_id" --wait --timeout 5m >/dev/null
}

# A pod that asks for a sidecar, created as a server-side dry run in a namespace that opts in:
# injection works once the answer holds the sidecar.
injection() {
  kubectl label namespace default outrigger.dev/injection=enabled --overwrite >/dev/null
  local probe containers=""
  probe='{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"outrigger-injection-check-","annotations":{"outrigger.dev/inject":"log-adapter"}},"spec":{"containers":[{"name":"app","image":"outrigger/testapp:dev"}]}}'
  for _ in $(seq 120); do
    containers=$(kubectl create -n default --dry-run=server -o jsonpath='{.spec.containers[*].name} {.spec.initContainers[*].name}' -f - <<<"$probe" 2>/dev/null || true)
    [[ $containers == *log-adapter* ]] && return 0
    sleep 1
  done
  kubectl -n "$NAMESPACE" logs deployment/outrigger-operator --tail 20 >&2 || true
  die "sidecar injection does not work yet (a test pod got: ${containers:-nothing}); see the operator's log above"
}

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
step "packages and the Kubernetes build" hack/deps.sh
step "cluster" cluster
eval "$(hack/cluster.sh env)"
step "images ($PROFILE profile)" images
step "kubectl outrigger plugin into $BIN_DIR" plugin
step "operator (Helm release $RELEASE in $NAMESPACE)" operator
step "sidecar injection" injection
case ":$PATH:" in *":$BIN_DIR:"*) ;; *) log "note: $BIN_DIR is not on your PATH; add it to use \`kubectl outrigger\`" ;; esac

cat <<EOF

Outrigger is up ($((SECONDS - START)) s): a one-node Kubernetes 1.20 cluster, every image, and the
operator installed with Helm (release $RELEASE in namespace $NAMESPACE), injecting sidecars.

Try next:
  eval "\$(hack/cluster.sh env)"            # kubectl now talks to the local cluster
  kubectl apply -f manifests/examples/      # a web service with a canary strategy, a Redis cache
                                            # and its client, config sync, the adapters, autoscaling
  kubectl get outrigger,pods                # every Outrigger object, and the pods
  kubectl outrigger get rollout web         # the web service's rollout (add --watch)
  kubectl outrigger shards cache            # the cache's shard map and key skew
  kubectl outrigger scaling web             # what the autoscaler decided, and why
  make demo                                 # a live canary experiment: a bad version rolled back,
                                            # a good one promoted
  make down                                 # stop everything
EOF
