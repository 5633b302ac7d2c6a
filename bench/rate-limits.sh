#!/usr/bin/env bash
# What rate limiting costs the request splitter: CPU per request of the same splitter binary with
# and without `rateLimits`, under the same load on loopback.
#
# Backend: the test app (outrigger-testapp) on one loopback port. Splitters, each a process of its
# own with one worker, in front of it:
#   off        no rateLimits (the anchor)
#   one-key    rateLimits by source IP with a limit no client reaches: every request takes a token
#              from the same bucket (wrk connects from 127.0.0.1)
#   10k-keys   rateLimits by an `x-user` header, each request carrying one of 10,000 keys at random
#              (a wrk Lua script): 10,000 buckets, every request allowed
#   limited    rateLimits of 1 request/s: nearly every request is answered 429 by the splitter itself
#              (no backend exchange), so its CPU per request is the cost of a refusal
# Load: `wrk -t$THREADS -c$CONNECTIONS -d$DURATION` per splitter; targets interleaved ROUNDS times and
# each figure the median over rounds. CPU per request is (utime + stime) of the splitter's process
# during the run (/proc/PID/stat) over the requests wrk completed; requests/s is wrk's.
# Usage: bench/rate-limits.sh       (installs wrk with apt-get if missing; builds the splitter and the
#                                    test app with the `image-test` profile unless SPLITTER_BIN and
#                                    TESTAPP_BIN name binaries)
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), ROUNDS (3), BASE_PORT (19080).
# This is a benchmark, not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-19080}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BACKEND_PORT=$((BASE_PORT + 1))

command -v wrk >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
if [ -z "${SPLITTER_BIN:-}" ] || [ -z "${TESTAPP_BIN:-}" ]; then
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile image-test \
    --target x86_64-unknown-linux-gnu -p outrigger-request-splitter -p outrigger-testapp
fi
SPLITTER_BIN=${SPLITTER_BIN:-$TARGET_DIR/x86_64-unknown-linux-gnu/image-test/outrigger-request-splitter}
TESTAPP_BIN=${TESTAPP_BIN:-$TARGET_DIR/x86_64-unknown-linux-gnu/image-test/outrigger-testapp}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$BACKEND_PORT DRAIN_SECONDS=0 "$TESTAPP_BIN" >"$WORK/backend.log" 2>&1 &
PIDS+=($!)

VARIANTS=(off one-key 10k-keys limited)
limits() {
  case $1 in
    off) echo 'null' ;;
    one-key) echo '{"anonymous": {"requestsPerSecond": 1000000, "burst": 10000000}}' ;;
    10k-keys) echo '{"key": {"source": "header", "name": "x-user"}, "anonymous": {"requestsPerSecond": 1000000, "burst": 10000000}}' ;;
    limited) echo '{"anonymous": {"requestsPerSecond": 1, "burst": 1}}' ;;
  esac
}
declare -A PID_OF PORT_OF
index=0
for variant in "${VARIANTS[@]}"; do
  index=$((index + 1))
  port=$((BASE_PORT + 10 * index))
  cat >"$WORK/$variant.json" <<EOF
{"listen": "127.0.0.1:$port", "accessLog": false,
 "backends": [{"name": "app", "endpoints": ["127.0.0.1:$BACKEND_PORT"]}],
 "rateLimits": $(limits "$variant")}
EOF
  # `null` removes the field: the splitter without rate limits.
  "$SPLITTER_BIN" --config "$WORK/$variant.json" --admin-addr "127.0.0.1:$((port + 1))" --log warn \
    >"$WORK/$variant.log" 2>&1 &
  PID_OF[$variant]=$!
  PORT_OF[$variant]=$port
  PIDS+=($!)
done
cat >"$WORK/keys.lua" <<'EOF'
math.randomseed(7)
request = function()
  return wrk.format("GET", "/", {["x-user"] = "user-" .. math.random(10000)})
end
EOF
for variant in "${VARIANTS[@]}"; do
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:${PORT_OF[$variant]}/" 2>/dev/null && break
    sleep 0.1
  done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
declare -A RPS CPU
for round in $(seq "$ROUNDS"); do
  for variant in "${VARIANTS[@]}"; do
    pid=${PID_OF[$variant]}
    script=()
    [ "$variant" = 10k-keys ] && script=(-s "$WORK/keys.lua")
    before=$(ticks "$pid")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "${script[@]}" "http://127.0.0.1:${PORT_OF[$variant]}/")
    after=$(ticks "$pid")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    RPS[$variant]+="$rps "
    CPU[$variant]+="$cpu "
    echo "[rate-limits] round $round $variant: $rps req/s, $cpu µs CPU/request" >&2
  done
done

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
off_cpu=$(median "${CPU[off]}")
printf '\n| splitter | requests/s | CPU µs/request | vs off |\n| --- | ---: | ---: | ---: |\n'
for variant in "${VARIANTS[@]}"; do
  cpu=$(median "${CPU[$variant]}")
  printf '| %s | %s | %s | %s |\n' "$variant" "$(median "${RPS[$variant]}")" "$cpu" \
    "$(awk -v a="$cpu" -v b="$off_cpu" 'BEGIN {printf "%+.1f%%", (a / b - 1) * 100}')"
done
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds interleaved, medians; one splitter worker each; $(nproc) cores shared with wrk and the backend"
