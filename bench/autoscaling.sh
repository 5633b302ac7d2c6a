#!/usr/bin/env bash
# Reaction time of an AutoscalingPolicy on the local cluster with real pods, from the cluster tests
# (which print these numbers and assert only what must hold):
# - a load step (3 client threads from the host through the Service's ClusterIP and each pod's
#   injected request splitter) against a policy of 4 requests/s per replica, 1 to 3 replicas: the
#   time from the step to the replicas written and to the new replicas ready, and, after the load
#   stops, how long the replicas hold (stabilization window 5 s after the 3 s rate window);
# - a steady load of 15 requests/s against 8 per replica: changes in 30 s once settled (flapping);
# - the cold start from zero: a request sent to a service scaled to zero, held by the request
#   splitter in front of it until the first replica answers (first-request latency).
# Runs the tests ROUNDS times (default 1) and prints each measurement and the median.
# Needs the local cluster (`hack/cluster.sh up`); builds the operator and the images it runs, tagged
# ${OUTRIGGER_IMAGE_TAG:-dev} (profile ${OUTRIGGER_IMAGE_PROFILE:-release}).
# Usage: [ROUNDS=3] [OUTRIGGER_IMAGE_TAG=mine OUTRIGGER_IMAGE_PROFILE=image-test] bench/autoscaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
TAG=${OUTRIGGER_IMAGE_TAG:-dev}
export OUTRIGGER_SPLITTER_IMAGE=outrigger/request-splitter:$TAG OUTRIGGER_TESTAPP_IMAGE=outrigger/testapp:$TAG
cargo build -q -p outrigger-operator
hack/images.sh testapp request-splitter
run() { # test file, test name
  cargo test -q -p outrigger-tests --test "$1" -- --nocapture --exact "$2" 2>&1 || true
}
number() { sed -n "s/.*$1 \([0-9.]*\) .*/\1/p" <<<"$2" | head -1; }
written=(); ready=(); held=(); changes=(); cold=(); cold_splitter=()
for round in $(seq "$ROUNDS"); do
  output=$(run autoscaling a_load_step_scales_up_and_a_drop_scales_down_within_the_window_and_policies)
  up=$(grep "autoscaling: load step" <<<"$output" || true)
  down=$(grep "autoscaling: load stopped" <<<"$output" || true)
  [[ -n $up && -n $down ]] || { echo "[autoscaling] round $round: the load test failed" >&2; echo "$output" | tail -20 >&2; exit 1; }
  output=$(run autoscaling a_steady_load_settles_on_its_replicas_without_flapping)
  steady=$(grep "autoscaling: steady load" <<<"$output" || true)
  [[ -n $steady ]] || { echo "[autoscaling] round $round: the steady-load test failed" >&2; echo "$output" | tail -20 >&2; exit 1; }
  output=$(run scale_to_zero an_idle_service_scales_to_zero_and_a_request_sent_meanwhile_is_held_and_answered)
  zero=$(grep "autoscaling: cold start" <<<"$output" || true)
  [[ -n $zero ]] || { echo "[autoscaling] round $round: the scale-to-zero test failed" >&2; echo "$output" | tail -20 >&2; exit 1; }
  echo "[autoscaling] round $round: $up; $down; $steady; $zero" >&2
  written+=("$(number "replicas written" "$up")")
  ready+=("$(number "replicas ready" "$up")")
  held+=("$(number "first scale-down" "$down")")
  changes+=("$(sed -n 's/.*→ \([0-9]*\) changes in 30 s.*/\1/p' <<<"$steady")")
  cold+=("$(number "first response" "$zero")")
  cold_splitter+=("$(number "cold_start_seconds" "$zero")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| measurement | rounds | each | median |"
echo "| --- | --- | --- | --- |"
echo "| Outrigger: load step → replicas written (1 s poll, 3 s rate window), s | $ROUNDS | ${written[*]} | $(median "${written[@]}") |"
echo "| Outrigger: load step → all 3 replicas ready, s | $ROUNDS | ${ready[*]} | $(median "${ready[@]}") |"
echo "| Outrigger: load stopped → first scale-down (must exceed the 5 s stabilization window), s | $ROUNDS | ${held[*]} | $(median "${held[@]}") |"
echo "| Outrigger: steady load (15/s against 8/s per replica, 5 s scale-down window) → changes in 30 s once at 2 replicas | $ROUNDS | ${changes[*]} | $(median "${changes[@]}") |"
echo "| Outrigger: cold start from zero → first response (client), s | $ROUNDS | ${cold[*]} | $(median "${cold[@]}") |"
echo "| Outrigger: cold start from zero, the splitter's \`cold_start_seconds\`, s | $ROUNDS | ${cold_splitter[*]} | $(median "${cold_splitter[@]}") |"
echo "| HPA: 15 s sync + metrics-server's 15 s resolution; KEDA: 30 s polling (documented defaults, not run here), s | — | — | 15–45 |"
