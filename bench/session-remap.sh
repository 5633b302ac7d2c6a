#!/usr/bin/env bash
# Session remapping on the local cluster: 10,000 session keys (an `x-user` header) sent to a
# ReplicatedService of 4 replicas with `sessionAffinity`, then 4→5 replicas and the same keys again;
# the share of keys that reached another pod (ideal: 1/5, all of them to the new pod). Anchors on the
# same pods in the same run:
# - nginx with `hash $http_x_user consistent` (ketama), on loopback on the host, over the same pod
#   IPs (a second nginx with the five pod IPs after the change; its placement depends only on the
#   server list);
# - kube-proxy's `sessionAffinity: ClientIP` on a plain Service over the same pods. It keys on the
#   client's address, not on a session key, so it is measured with 200 client addresses
#   (172.17.254.1-200, added to docker0 for the run and removed after), one connection each.
# The measurement is the ignored test `session_remapping_benchmark` in tests/tests/session_affinity.rs,
# which prints the table. Needs the local cluster, root (for the addresses) and nginx (installed with
# apt-get if missing); builds the operator and the images it runs, tagged ${OUTRIGGER_IMAGE_TAG:-dev}.
# Usage: [OUTRIGGER_IMAGE_TAG=mine OUTRIGGER_IMAGE_PROFILE=image-test] bench/session-remap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${OUTRIGGER_IMAGE_TAG:-dev}
export OUTRIGGER_SPLITTER_IMAGE=outrigger/request-splitter:$TAG OUTRIGGER_TESTAPP_IMAGE=outrigger/testapp:$TAG
command -v nginx >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
}
cargo build -q -p outrigger-operator
[ -n "${SKIP_IMAGES:-}" ] || hack/images.sh testapp request-splitter
cargo test -q -p outrigger-tests --test session_affinity -- --ignored --nocapture --exact session_remapping_benchmark 2>&1 \
  | grep -E '^\||^session-remap' || { echo "[session-remap] the benchmark failed" >&2; exit 1; }
