#!/usr/bin/env bash
# Benchmark of the request splitter's cache (`cache` in its configuration) against Varnish, on
# loopback, with the same backend: the test app's `/cache/` mode (tests/testapp/src/cache.rs), which
# sets `Cache-Control` from the query and counts the requests it answers (`/-/cache-count`).
#
# Hit path: one URL (`/cache/hot?cc=max-age=3600&size=$BODY_BYTES`) is fetched once through each
# cache, then `wrk -t1 -c$CONNECTIONS -d$DURATION --latency` asks for it again and again: every
# request is a hit. Each cache runs pinned to one core (taskset: the splitter with one worker,
# Varnish with its default thread pools) and wrk to the other, so the figure is hits per second of
# one core. Per cache: requests/s, p99 latency, and CPU per request ((utime + stime) of the cache's
# processes during the run, from /proc, divided by the requests wrk completed), and the backend
# requests during the run (0 when every request was a hit).
#
# Coalescing: 100 concurrent requests (curl --parallel, 100 connections) for one cold URL whose
# answer takes $COLD_DELAY_MS at the backend; the backend's count says how many reached it.
#
# The two caches are measured interleaved, $ROUNDS times, each round in its own row; the summary is
# the median. Varnish is Debian's (`varnish`, default VCL: it caches by Cache-Control like the
# splitter); the splitter is the static binary the image ships (image-test profile unless
# SPLITTER_BIN says otherwise).
#
# Usage: bench/cache.sh         (installs wrk and varnish with apt-get if missing)
# Environment: DURATION (10s), CONNECTIONS (64), ROUNDS (3), BODY_BYTES (1024), COLD_DELAY_MS (500),
#              BASE_PORT (19080), SPLITTER_BIN, TESTAPP_BIN, CARGO_TARGET_DIR.
# This is a benchmark, not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
BODY_BYTES=${BODY_BYTES:-1024}
COLD_DELAY_MS=${COLD_DELAY_MS:-500}
BASE_PORT=${BASE_PORT:-19080}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PROFILE_DIR=$TARGET_DIR/x86_64-unknown-linux-gnu/image-test
SPLITTER_BIN=${SPLITTER_BIN:-$PROFILE_DIR/outrigger-request-splitter}
TESTAPP_BIN=${TESTAPP_BIN:-$PROFILE_DIR/outrigger-testapp}

BACKEND_PORT=$((BASE_PORT + 1))
SPLITTER_PORT=$((BASE_PORT + 2))
SPLITTER_ADMIN=$((BASE_PORT + 3))
VARNISH_PORT=$((BASE_PORT + 4))

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v varnishd >/dev/null || need+=(varnish)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ ! -x $SPLITTER_BIN || ! -x $TESTAPP_BIN ]]; then
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile image-test \
    --target x86_64-unknown-linux-gnu -p outrigger-request-splitter -p outrigger-testapp
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $work/varnish.pid ]] && kill "$(cat "$work/varnish.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  exit 1
}

# The backend, on core 0 with wrk (it is idle during the hit runs).
PORT=$BACKEND_PORT taskset -c 0 "$TESTAPP_BIN" >"$work/backend.log" 2>&1 &
pids+=($!)
wait_port "$BACKEND_PORT"

cat >"$work/splitter.json" <<EOF
{"listen": "127.0.0.1:$SPLITTER_PORT", "accessLog": false,
 "backends": [{"name": "origin", "endpoints": ["127.0.0.1:$BACKEND_PORT"]}],
 "cache": {"maxBytes": 67108864}}
EOF
taskset -c 1 "$SPLITTER_BIN" --config "$work/splitter.json" --admin-addr "127.0.0.1:$SPLITTER_ADMIN" \
  --log warn >"$work/splitter.log" 2>&1 &
splitter_pid=$!
pids+=("$splitter_pid")
wait_port "$SPLITTER_PORT"

mkdir -p "$work/varnish"
taskset -c 1 varnishd -a "127.0.0.1:$VARNISH_PORT" -b "127.0.0.1:$BACKEND_PORT" -s malloc,64m \
  -n "$work/varnish" -P "$work/varnish.pid" -p default_ttl=0 >"$work/varnish.log" 2>&1
wait_port "$VARNISH_PORT"

backend_count() { curl -s "http://127.0.0.1:$BACKEND_PORT/-/cache-count" | tr -d '\n'; }

# (utime + stime) in clock ticks of every process named by the pids given.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      [[ -r $task/stat ]] || continue
      total=$((total + $(awk '{print $14 + $15}' "$task/stat")))
    done
  done
  echo "$total"
}

varnish_pids() { pgrep -f "varnishd -a 127.0.0.1:$VARNISH_PORT" | tr '\n' ' '; pgrep -P "$(cat "$work/varnish.pid")" | tr '\n' ' '; }

hot="/cache/hot?cc=max-age=3600&size=$BODY_BYTES"
ticks_per_second=$(getconf CLK_TCK)

# One hit-path run: prints "requests/s p99_ms cpu_us_per_request backend_requests".
hit_run() {
  local name=$1 port=$2 before_cpu after_cpu before_backend after_backend out rps requests p99 proc_pids
  curl -s -o /dev/null "http://127.0.0.1:$port$hot"
  if [[ $name == splitter ]]; then proc_pids=$splitter_pid; else proc_pids=$(varnish_pids); fi
  before_backend=$(backend_count)
  # shellcheck disable=SC2086
  before_cpu=$(cpu_ticks $proc_pids)
  out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$port$hot")
  # shellcheck disable=SC2086
  after_cpu=$(cpu_ticks $proc_pids)
  after_backend=$(backend_count)
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  local cpu_us
  cpu_us=$(awk -v t=$((after_cpu - before_cpu)) -v hz="$ticks_per_second" -v n="$requests" \
    'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  echo "$rps $p99 $cpu_us $((after_backend - before_backend))"
}

# 100 concurrent requests for a cold URL: prints the backend requests they made.
coalesce_run() {
  local port=$1 round=$2 before after url
  url="http://127.0.0.1:$port/cache/cold-$round-$port?cc=max-age=60&delay=$COLD_DELAY_MS"
  before=$(backend_count)
  # shellcheck disable=SC2046
  curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max 100 \
    $(for _ in $(seq 1 100); do echo "-o /dev/null $url"; done) 2>/dev/null
  after=$(backend_count)
  echo $((after - before))
}

echo "Cache hit path: wrk -t1 -c$CONNECTIONS -d$DURATION, one core per cache, body $BODY_BYTES bytes"
printf '%-6s %-9s %12s %10s %14s %16s %18s\n' round cache "requests/s" "p99 ms" "CPU us/req" "backend reqs" "coalesced 100→"
declare -A rps_of p99_of cpu_of
for round in $(seq 1 "$ROUNDS"); do
  for cache in splitter varnish; do
    port=$SPLITTER_PORT
    [[ $cache == varnish ]] && port=$VARNISH_PORT
    read -r rps p99 cpu backend < <(hit_run "$cache" "$port")
    coalesced=$(coalesce_run "$port" "$round")
    printf '%-6s %-9s %12s %10s %14s %16s %18s\n' "$round" "$cache" "$rps" "$p99" "$cpu" "$backend" "$coalesced"
    rps_of[$cache]+="$rps "
    p99_of[$cache]+="$p99 "
    cpu_of[$cache]+="$cpu "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "Median over $ROUNDS rounds"
printf '%-9s %12s %10s %14s\n' cache "requests/s" "p99 ms" "CPU us/req"
for cache in splitter varnish; do
  printf '%-9s %12s %10s %14s\n' "$cache" "$(median <<<"${rps_of[$cache]}")" \
    "$(median <<<"${p99_of[$cache]}")" "$(median <<<"${cpu_of[$cache]}")"
done
