#!/usr/bin/env bash
# Benchmark of the sharding ambassador against nutcracker (twemproxy) sharding the same keys.
#
# Shards: SHARDS (4) redis-server on loopback, no persistence. Proxies: nutcracker with a pool of the
# shards (`distribution: ketama`, `hash: fnv1a_64`, `hash_tag: "{}"`, server names cache-shard-<i>),
# and the ambassador with the equivalent shard map, so both place every key on the same shard.
# Load: `redis-benchmark -t set,get -n REQUESTS -c CLIENTS -r KEYSPACE`, without pipelining and with
# `-P 16`, against one shard directly (the floor), nutcracker and the ambassador, taking turns in
# each of ROUNDS rounds.
#
# Per round, target, test and pipeline depth it prints ops/s, p50 and p99 latency (redis-benchmark's CSV),
# the RSS of the proxy (VmRSS; for the direct run, the shard's) at its peak under the load (sampled
# every 0.1 s) and 1 s after the run, and the CPU per
# operation of that process: its utime + stime over the run (SET and GET together) divided by the
# operations redis-benchmark sent (2 × REQUESTS). Then, per depth and test, the ambassador's ops/s over
# nutcracker's in each round and their median.
#
# Usage: bench/sharding-ambassador.sh
#        REQUESTS=2000 AMBASSADOR_BIN=target/debug/outrigger-sharding-ambassador bench/sharding-ambassador.sh
#                                          a smoke run of a debug build (numbers mean nothing)
# Environment: REQUESTS (200000), CLIENTS (50), KEYSPACE (1000000), PIPELINES ("1 16"), SHARDS (4),
#              ROUNDS (3: every target runs once per round, the targets taking turns),
#              BASE_PORT (17380), AMBASSADOR_BIN (default: a release build, made here),
#              CARGO_TARGET_DIR (where that build goes), PREFILL (1: fill the keyspace through a
#              nutcracker of its own before the measured runs; 0: start from empty shards).
# Installs redis-server, redis-tools and nutcracker with apt-get when missing.
# This is a benchmark, not a test: it asserts nothing. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-1000000}
PIPELINES=${PIPELINES:-"1 16"}
SHARDS=${SHARDS:-4}
BASE_PORT=${BASE_PORT:-17380}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
AMBASSADOR_BIN=${AMBASSADOR_BIN:-}
PREFILL=${PREFILL:-1}
ROUNDS=${ROUNDS:-3}

NUTCRACKER_PORT=$((BASE_PORT + 20))
NUTCRACKER_STATS_PORT=$((BASE_PORT + 21))
AMBASSADOR_PORT=$((BASE_PORT + 22))
AMBASSADOR_ADMIN_PORT=$((BASE_PORT + 23))
FILL_PORT=$((BASE_PORT + 24))
FILL_STATS_PORT=$((BASE_PORT + 25))

log() { echo "[bench] $*" >&2; }

need=()
for command in redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools nutcracker:nutcracker; do
  command -v "${command%%:*}" >/dev/null 2>&1 || need+=("${command#*:}")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -z "$AMBASSADOR_BIN" ]; then
  # The binary the image ships: the release profile, linked statically as hack/images.sh does.
  log "building the ambassador (release, static, as in the image)"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q --target x86_64-unknown-linux-gnu \
    -p outrigger-sharding-ambassador
  AMBASSADOR_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/outrigger-sharding-ambassador
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ping() {
  local port=$1
  for _ in $(seq 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  log "nothing answers PING on port $port"
  exit 1
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# The highest VmRSS of process $1, sampled every 0.1 s while process $2 runs (gone or a zombie
# once done); builtins only, so the sampling costs next to nothing.
peak_rss_kib() {
  local peak=0 key value state _
  while read -r _ _ state _ 2>/dev/null <"/proc/$2/stat" && [ "$state" != Z ]; do
    while read -r key value _; do
      if [ "$key" = VmRSS: ] && ((value > peak)); then peak=$value; fi
    done <"/proc/$1/status"
    sleep 0.1
  done
  echo "$peak"
}
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat; the command name,
# field 2, has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)

shard_pids=()
servers=""
shards_json=""
for ((i = 0; i < SHARDS; i++)); do
  port=$((BASE_PORT + i))
  mkdir -p "$work/shard-$i"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/shard-$i" \
    --logfile "$work/shard-$i/redis.log" &
  pids+=($!)
  shard_pids+=($!)
  servers+="   - 127.0.0.1:$port:1 cache-shard-$i"$'\n'
  shards_json+="${shards_json:+,}{\"name\":\"cache-shard-$i\",\"endpoints\":[\"127.0.0.1:$port\"]}"
done

cat >"$work/nutcracker.yml" <<EOF
pool:
  listen: 127.0.0.1:$NUTCRACKER_PORT
  hash: fnv1a_64
  distribution: ketama
  hash_tag: "{}"
  redis: true
  auto_eject_hosts: false
  timeout: 1000
  servers:
$servers
EOF
nutcracker -c "$work/nutcracker.yml" -s "$NUTCRACKER_STATS_PORT" -a 127.0.0.1 -o "$work/nutcracker.log" &
pids+=($!)
nutcracker_pid=$!

cat >"$work/shard-map.json" <<EOF
{"protocol":"redis","function":"ketama","hash":"fnv1a64","virtualNodes":160,"hashTag":"{}","shards":[$shards_json]}
EOF
"$AMBASSADOR_BIN" --listen "127.0.0.1:$AMBASSADOR_PORT" --admin-addr "127.0.0.1:$AMBASSADOR_ADMIN_PORT" --shard-map "$work/shard-map.json" \
  --log warn --log-format text 2>"$work/ambassador.log" &
pids+=($!)
ambassador_pid=$!

for ((i = 0; i < SHARDS; i++)); do wait_ping $((BASE_PORT + i)); done
wait_ping "$NUTCRACKER_PORT"
wait_ping "$AMBASSADOR_PORT"
# The ambassador answers PING before its map is loaded; a keyed command says when it is.
for _ in $(seq 100); do
  [ "$(redis-cli -h 127.0.0.1 -p "$AMBASSADOR_PORT" SET bench:ready 1 2>/dev/null)" = OK ] && break
  sleep 0.1
done

results=$work/results
: >"$results"
run() {
  local target=$1 port=$2 pid=$3 pipeline=$4 round=$5
  log "$target, pipeline $pipeline, round $round"
  local before after
  before=$(cpu_ticks "$pid")
  # CSV rows: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n "$REQUESTS" -c "$CLIENTS" -P "$pipeline" \
    -r "$KEYSPACE" --csv >"$work/run.csv" 2>/dev/null &
  local load=$! peak settled
  peak=$(peak_rss_kib "$pid" "$load")
  wait "$load"
  after=$(cpu_ticks "$pid")
  sleep 1
  settled=$(rss_kib "$pid")
  tr -d '"' <"$work/run.csv" | awk -F, -v target="$target" -v pipeline="$pipeline" -v peak="$peak" \
    -v settled="$settled" -v ticks=$((after - before)) -v hz="$CLK_TCK" -v ops=$((2 * REQUESTS)) -v round="$round" '
    $1 == "SET" || $1 == "GET" {
      printf "%s|%s|%s|%.0f|%s|%s|%.1f|%.1f|%.2f|%s\n", target, pipeline, $1, $2, $5, $7, peak / 1024, settled / 1024, ticks / hz / ops * 1e6, round
    }' >>"$results"
}

# Each SET run adds keys, and a shard's table grows (rehashing as it goes) at whichever run crosses
# its next size: filling the keyspace first keeps that out of the measured runs, so no target
# pays for a growth the others don't. The fill goes through a nutcracker of its own, stopped
# afterwards, so neither measured proxy keeps the buffers it grew.
if [ "$PREFILL" != 0 ]; then
  log "filling the keyspace"
  sed -e "s/127.0.0.1:$NUTCRACKER_PORT/127.0.0.1:$FILL_PORT/" "$work/nutcracker.yml" >"$work/fill.yml"
  nutcracker -c "$work/fill.yml" -s "$FILL_STATS_PORT" -a 127.0.0.1 -o "$work/fill.log" &
  fill_pid=$!
  wait_ping "$FILL_PORT"
  redis-benchmark -h 127.0.0.1 -p "$FILL_PORT" -t set -n "$KEYSPACE" -c "$CLIENTS" -P 16 \
    -r "$KEYSPACE" -q >/dev/null 2>&1
  kill "$fill_pid"
  wait "$fill_pid" 2>/dev/null || true
fi

sleep 1
idle="idle RSS (MiB), before the measured runs: nutcracker $(rss_kib "$nutcracker_pid" | awk '{ printf "%.1f", $1 / 1024 }'), ambassador $(rss_kib "$ambassador_pid" | awk '{ printf "%.1f", $1 / 1024 }')"

# The targets take turns within each round, so a slow spell of the machine falls on one round of
# each rather than on all the runs of one.
for pipeline in $PIPELINES; do
  for ((round = 1; round <= ROUNDS; round++)); do
    run "redis (one shard, direct)" "$BASE_PORT" "${shard_pids[0]}" "$pipeline" "$round"
    run nutcracker "$NUTCRACKER_PORT" "$nutcracker_pid" "$pipeline" "$round"
    run ambassador "$AMBASSADOR_PORT" "$ambassador_pid" "$pipeline" "$round"
  done
done

echo "| round | target | pipeline | test | ops/s | p50 ms | p99 ms | RSS MiB, peak under load | RSS MiB, 1 s after | CPU µs/op (SET+GET) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
awk -F'|' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $10, $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$results"
echo
# Per pipeline depth and test: the ambassador's ops/s over nutcracker's in the same round, sorted,
# and the median round's.
echo "| pipeline | test | ambassador / nutcracker per round (sorted) | median |"
echo "| --- | --- | --- | --- |"
awk -F'|' '
  $1 == "nutcracker" { anchor[$10 "|" $2 "|" $3] = $4 }
  $1 == "ambassador" { ours[$10 "|" $2 "|" $3] = $4; key = $2 "|" $3; if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
  END {
    for (i = 1; i <= n; i++) {
      split(order[i], part, "|")
      count = 0
      for (k in ours) {
        split(k, q, "|")
        if (q[2] "|" q[3] == order[i] && anchor[k] > 0) ratio[++count] = ours[k] / anchor[k]
      }
      for (a = 1; a <= count; a++) for (b = a + 1; b <= count; b++) if (ratio[b] < ratio[a]) { t = ratio[a]; ratio[a] = ratio[b]; ratio[b] = t }
      list = ""
      for (a = 1; a <= count; a++) list = list (a > 1 ? ", " : "") sprintf("%.2f", ratio[a])
      printf "| %s | %s | %s | %.2f |\n", part[1], part[2], list, ratio[int((count + 1) / 2)]
    }
  }' "$results"
echo
echo "$idle"
echo "$SHARDS shards, redis-benchmark -t set,get -n $REQUESTS -c $CLIENTS -r $KEYSPACE, $ROUNDS rounds."
