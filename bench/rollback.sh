#!/usr/bin/env bash
# Time from a bad canary's first answer to the rollback decision, with the default analysis settings
# (10 s interval, one failed measurement fails the analysis), on the local cluster with real pods.
# Runs the end-to-end rollback test ROUNDS times (default 3) and prints each time and the median.
# Needs the local cluster (`hack/cluster.sh up`); builds the operator and the images it runs.
# Usage: bench/rollback.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
cargo build -q -p outrigger-operator
hack/images.sh testapp request-splitter
times=()
for round in $(seq "$ROUNDS"); do
  line=$(cargo test -q -p outrigger-tests --test rollout -- --nocapture --exact \
    a_version_failing_a_fifth_of_its_requests_is_rolled_back_with_the_numbers 2>&1 \
    | grep "time from the canary's first answer" || true)
  [[ -n $line ]] || { echo "[rollback] round $round: the test failed" >&2; exit 1; }
  seconds=$(sed -n 's/.*rollback decision: \([0-9.]*\) s.*/\1/p' <<<"$line")
  echo "[rollback] round $round: $line" >&2
  times+=("$seconds")
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo
echo "| measurement | rounds | each (s) | median (s) |"
echo "| --- | --- | --- | --- |"
echo "| Outrigger: bad canary's first answer → rollback decision (default analysis: 10s interval, failureLimit 1) | $ROUNDS | ${times[*]} | $median |"
echo "| Argo Rollouts / Flagger: one analysis interval at their usual 1m (documented defaults, not run here) | — | — | ≥ 60 |"
