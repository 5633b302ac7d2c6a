#!/usr/bin/env bash
# Reaction time of an AutoscalingPolicy on the local cluster with real pods: a load step (3 client
# threads from the host through the Service's ClusterIP and each pod's injected request splitter)
# against a policy of 4 requests/s per replica, 1 to 3 replicas. Measures the time from the step to
# the replicas written and to the new replicas ready, and, after the load stops, how long the
# replicas hold (stabilization window 5 s after the 3 s rate window). Runs the cluster test ROUNDS
# times (default 1) and prints each measurement and the median.
# Needs the local cluster (`hack/cluster.sh up`); builds the operator and the images it runs.
# Usage: bench/autoscaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
cargo build -q -p outrigger-operator
hack/images.sh testapp request-splitter
written=(); ready=(); held=()
for round in $(seq "$ROUNDS"); do
  output=$(cargo test -q -p outrigger-tests --test autoscaling -- --nocapture --exact \
    a_load_step_scales_up_and_a_drop_scales_down_within_the_window_and_policies 2>&1 || true)
  up=$(grep "autoscaling: load step" <<<"$output" || true)
  down=$(grep "autoscaling: load stopped" <<<"$output" || true)
  [[ -n $up && -n $down ]] || { echo "[autoscaling] round $round: the test failed" >&2; echo "$output" | tail -20 >&2; exit 1; }
  echo "[autoscaling] round $round: $up; $down" >&2
  written+=("$(sed -n 's/.*replicas written \([0-9.]*\) s.*/\1/p' <<<"$up")")
  ready+=("$(sed -n 's/.*replicas ready \([0-9.]*\) s.*/\1/p' <<<"$up")")
  held+=("$(sed -n 's/.*first scale-down \([0-9.]*\) s.*/\1/p' <<<"$down")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| measurement | rounds | each (s) | median (s) |"
echo "| --- | --- | --- | --- |"
echo "| Outrigger: load step → replicas written (1 s poll, 3 s rate window) | $ROUNDS | ${written[*]} | $(median "${written[@]}") |"
echo "| Outrigger: load step → all 3 replicas ready | $ROUNDS | ${ready[*]} | $(median "${ready[@]}") |"
echo "| Outrigger: load stopped → first scale-down (must exceed the 5 s stabilization window) | $ROUNDS | ${held[*]} | $(median "${held[@]}") |"
echo "| HPA: 15 s sync + metrics-server's 15 s resolution; KEDA: 30 s polling (documented defaults, not run here) | — | — | 15–45 |"
