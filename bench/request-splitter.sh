#!/usr/bin/env bash
# Benchmark of the request splitter against nginx and HAProxy doing the same 90/10 weighted split.
#
# Backends: one nginx (one worker) answering `return 200 'ok'` on two loopback ports. Proxies keep
# connections to the backends alive. Load: `wrk -t2 -c64 -d10s --latency` against the backend directly,
# the splitter, nginx (`upstream` weights 9:1) and HAProxy (`weight 90` / `weight 10`), with one worker
# (thread / process) each and then two. Then a moderate load for the latency the proxy adds when it
# is not saturated: `-t1 -c8`, each connection pausing MODERATE_PAUSE_MS (1) between a response and
# its next request (wrk's `delay()` hook; the pause is not part of the measured latency), so that
# wrk offers a paced load of some thousands of requests per second instead of as many as the machine
# can answer. The splitter adds correlation headers that the plain nginx and HAProxy configurations
# do not: `x-request-id`, `traceparent`, `x-forwarded-for` and `x-forwarded-proto` on the request,
# which the backend parses, and `x-request-id` on the response, which wrk parses. So nginx and
# HAProxy are also measured adding the same headers (a second listener of the same process), the
# configuration a user who wants request ids from them would run. Everything runs in this one
# script so that the anchors and the splitter are measured in the same run, on the same cores.
#
# Per proxy it reports requests/s, p50 and p99 latency, RSS (VmRSS summed over the proxy's processes
# after the run: nginx's master and workers, HAProxy's and the splitter's one process) and CPU per
# request ((utime + stime) of the proxy's processes during the run divided by the requests wrk
# completed). The splitter is the static binary the image ships; nginx and HAProxy are Debian's.
#
# Targets are measured interleaved, ROUNDS times (direct, splitter, nginx, HAProxy, direct, ...), and
# each figure is the median over the rounds, so that load elsewhere on the machine shifts all targets
# alike instead of skewing whichever ran at the wrong moment. For the same reason the splitter is also
# compared with each anchor round by round (bench/paired-rounds.sh, which also pools several runs):
# the median, quartiles and range of its requests/s over the anchor's in the same round, and in how
# many rounds it served more.
#
# Usage: bench/request-splitter.sh            (installs wrk, nginx and haproxy with apt-get if missing)
#        bench/request-splitter.sh work       the work each proxy does per request, counted instead of
#                                             timed (see below); also installs valgrind and linux-perf
#
# `work` mode counts, for the splitter, nginx and HAProxy with one worker each (nginx and HAProxy
# also adding the splitter's headers): system calls (perf's tracepoint, at full speed) and TCP
# segments (/proc/net/snmp) per request under `wrk -t2 -c64`, and the instructions the proxy runs in
# user space per request (callgrind, with the proxy under valgrind and `wrk -t1 -c16`). Counts do
# not depend on who wins the two cores, so they compare the proxies where the timed runs cannot tell
# them apart. It also counts how often the proxy was preempted per request (its involuntary context
# switches, /proc/PID/task/*/status) in the full-speed run: that one does depend on the scheduler,
# and shows how the proxy's share of a core goes, which decides its throughput at one worker.
#
# CPU_LIMIT=<millicores> runs each proxy as a sidecar with `resources.limits.cpu` runs in a pod: in a
# CPU cgroup of its own with a CFS quota of that many millicores per worker (100 ms period, as the
# kubelet sets it). Unlimited, the proxies share two cores with wrk and the backend, and what those
# spend decides much of a proxy's throughput; limited, the proxy's own CPU per request does, as it
# does for a sidecar given a fraction of a core. Needs root and a cgroup v1 `cpu` hierarchy or the
# v2 `cpu` controller. The moderate load runs under the limit too.
# BASELINE_BIN=<path> also measures another build of the splitter (say, the previous release) in the
# same rounds, on its own port, so that a change to the splitter is compared with what it replaces
# under the same load: its rows say "baseline", and the round-by-round table has it as an anchor.
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), WARMUP (2s), ROUNDS (3), MODERATE_PAUSE_MS (1),
#              BASE_PORT (18080), WORKER_COUNTS ("1 2"), CPU_LIMIT (none), CARGO_TARGET_DIR (where the
#              release build goes).
# This is a benchmark, not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
MODERATE_PAUSE_MS=${MODERATE_PAUSE_MS:-1}
BASE_PORT=${BASE_PORT:-18080}
WORKER_COUNTS=${WORKER_COUNTS:-"1 2"}
CPU_LIMIT=${CPU_LIMIT:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

STABLE_PORT=$((BASE_PORT + 1))
CANARY_PORT=$((BASE_PORT + 2))
SPLITTER_PORT=$((BASE_PORT + 10))
SPLITTER_ADMIN=$((BASE_PORT + 11))
NGINX_PORT=$((BASE_PORT + 12))
HAPROXY_PORT=$((BASE_PORT + 13))
LOGGING_PORT=$((BASE_PORT + 14))
LOGGING_ADMIN=$((BASE_PORT + 15))
NGINX_HEADERS_PORT=$((BASE_PORT + 16))
HAPROXY_HEADERS_PORT=$((BASE_PORT + 17))
BASELINE_PORT=$((BASE_PORT + 18))
BASELINE_ADMIN=$((BASE_PORT + 19))
BASELINE_BIN=${BASELINE_BIN:-}
if [ -n "$BASELINE_BIN" ] && [ ! -x "$BASELINE_BIN" ]; then
  echo "[bench] BASELINE_BIN=$BASELINE_BIN is not an executable" >&2
  exit 2
fi

if [ -n "$CPU_LIMIT" ] && ! [[ $CPU_LIMIT =~ ^[1-9][0-9]*$ ]]; then
  echo "[bench] CPU_LIMIT is in millicores per worker, e.g. 500; got '$CPU_LIMIT'" >&2
  exit 2
fi

missing=()
MODE=${1:-time}
for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "$MODE" = work ]; then
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
  command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
fi
if ((${#missing[@]})); then
  echo "[bench] installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The binary that ships: statically linked, built as hack/images.sh builds it (SPLITTER_BIN names
# one already built instead).
if [ -z "${SPLITTER_BIN:-}" ]; then
  echo "[bench] building the release binary (static, as in the image)" >&2
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$TARGET_DIR \
    cargo build -q --release --target x86_64-unknown-linux-gnu -p outrigger-request-splitter
  SPLITTER_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/outrigger-request-splitter
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d /tmp/splitter-bench.XXXXXX)
started=()
cgroups=()
cleanup() {
  for pid in "${started[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  local group
  for group in "${cgroups[@]}"; do
    rmdir "$group" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- CPU limit ------------------------------------------------------------------------------------
CFS_PERIOD_US=100000
if [ -n "$CPU_LIMIT" ]; then
  if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    cgroup_root=/sys/fs/cgroup/cpu
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    cgroup_root=/sys/fs/cgroup
    echo +cpu >"$cgroup_root/cgroup.subtree_control"
  else
    echo "[bench] CPU_LIMIT needs a cgroup v1 cpu hierarchy or the cgroup v2 cpu controller" >&2
    exit 2
  fi
fi

# limit_launch <name> <workers>: when CPU_LIMIT is set, makes `launch` start the next proxy in a CPU
# cgroup of its own (the name's) with a quota of CPU_LIMIT millicores per worker; its children
# (nginx's workers) stay in it.
limit_launch() {
  [ -n "$CPU_LIMIT" ] || return 0
  local group="$cgroup_root/outrigger-bench-$1" quota=$((CPU_LIMIT * $2 * CFS_PERIOD_US / 1000))
  mkdir -p "$group"
  cgroups+=("$group")
  if [ -f "$group/cpu.cfs_quota_us" ]; then
    echo "$CFS_PERIOD_US" >"$group/cpu.cfs_period_us"
    echo "$quota" >"$group/cpu.cfs_quota_us"
  else
    echo "$quota $CFS_PERIOD_US" >"$group/cpu.max"
  fi
  # shellcheck disable=SC2016
  launch=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$group")
}

# WAIT_TRIES × 50 ms: longer under valgrind, which starts a proxy in seconds.
WAIT_TRIES=100
wait_for_port() {
  local port=$1
  for _ in $(seq 1 "$WAIT_TRIES"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "[bench] nothing listens on port $port" >&2
  return 1
}

# All processes of a started proxy: the process and its children (nginx workers).
pids_of() {
  local pid=$1
  echo "$pid" $(pgrep -P "$pid" || true)
}

cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    # Fields 14 and 15 of /proc/PID/stat are utime and stime (the command name may hold spaces).
    local stat
    stat=$(sed 's/^.*) //' "/proc/$pid/stat")
    total=$((total + $(echo "$stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

rss_kib() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}

to_ms() {
  # wrk prints 612.00us, 2.31ms or 1.02s.
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else { printf "?" }
  }'
}

# --- backends -------------------------------------------------------------------------------------
mkdir -p "$work/backend"
cat >"$work/backend/nginx.conf" <<EOF
worker_processes 1;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$STABLE_PORT; location / { return 200 'ok'; } }
  server { listen 127.0.0.1:$CANARY_PORT; location / { return 200 'ok'; } }
}
EOF
nginx -p "$work/backend" -c "$work/backend/nginx.conf" -g 'daemon off;' &
started+=($!)
wait_for_port "$STABLE_PORT"
wait_for_port "$CANARY_PORT"

# --- proxies --------------------------------------------------------------------------------------
# Each start_* sets proxy_pid. `launch` is put before the proxy's command (valgrind in work mode).
launch=()
start_splitter() {
  local workers=$1 port=$2 admin=$3 access_log=${4:-false} binary=${5:-$SPLITTER_BIN}
  cat >"$work/splitter-$port.json" <<EOF
{
  "listen": "127.0.0.1:$port",
  "backends": [
    {"name": "stable", "endpoints": ["127.0.0.1:$STABLE_PORT"]},
    {"name": "canary", "endpoints": ["127.0.0.1:$CANARY_PORT"]}
  ],
  "weights": {"stable": 90, "canary": 10},
  "accessLog": $access_log
}
EOF
  local log=warn
  [ "$access_log" = true ] && log=info
  "${launch[@]}" "$binary" --config "$work/splitter-$port.json" --admin-addr "127.0.0.1:$admin" \
    --workers "$workers" --log "$log" >/dev/null 2>"$work/splitter-$port.err" &
  proxy_pid=$!
  started+=("$proxy_pid")
  wait_for_port "$port"
}

start_nginx() {
  local workers=$1
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $workers;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream split {
    server 127.0.0.1:$STABLE_PORT weight=9;
    server 127.0.0.1:$CANARY_PORT weight=1;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://split;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  # The same split, adding the headers the splitter adds. The span id is a constant: nginx has
  # one random value per request, and cutting a second one out of it would cost a regex match.
  server {
    listen 127.0.0.1:$NGINX_HEADERS_PORT;
    location / {
      proxy_pass http://split;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header traceparent 00-\$request_id-0000000000000001-00;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      add_header X-Request-ID \$request_id always;
    }
  }
}
EOF
  "${launch[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  proxy_pid=$!
  started+=("$proxy_pid")
  wait_for_port "$NGINX_PORT"
}

start_haproxy() {
  local workers=$1
  cat >"$work/haproxy.cfg" <<EOF
global
  nbthread $workers
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend split
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend versions
# The same split, adding the headers the splitter adds.
frontend split-with-headers
  bind 127.0.0.1:$HAPROXY_HEADERS_PORT
  unique-id-format %[rand,hex,lower]%[rand,hex,lower]
  unique-id-header X-Request-ID
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header traceparent 00-%[rand,hex,lower]%[rand,hex,lower]-%[rand,hex,lower]-00
  http-after-response set-header X-Request-ID %[unique-id]
  default_backend versions
backend versions
  balance roundrobin
  server stable 127.0.0.1:$STABLE_PORT weight 90
  server canary 127.0.0.1:$CANARY_PORT weight 10
EOF
  "${launch[@]}" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>"$work/haproxy.err" &
  proxy_pid=$!
  started+=("$proxy_pid")
  wait_for_port "$HAPROXY_PORT"
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- measurement ----------------------------------------------------------------------------------
median() {
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

# measure <key> <port> <threads> <connections> [proxy pid]: one wrk run, added to the key's samples.
# Extra wrk arguments (a pacing script) come from the array `wrk_extra`.
declare -A rps_samples p50_samples p99_samples cpu_samples rss_last errors_seen
wrk_extra=()
measure() {
  local key=$1 port=$2 threads=$3 connections=$4 pid=${5:-}
  local url="http://127.0.0.1:$port/"
  wrk -t"$threads" -c"$connections" -d"$WARMUP" "${wrk_extra[@]}" "$url" >/dev/null
  local pids=() before=0
  if [ -n "$pid" ]; then
    read -r -a pids <<<"$(pids_of "$pid")"
    before=$(cpu_ticks "${pids[@]}")
  fi
  local out rps requests p50 p99 errors
  out=$(wrk -t"$threads" -c"$connections" -d"$DURATION" --latency "${wrk_extra[@]}" "$url")
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {printf "%s ", $0}')
  rps_samples[$key]+="$rps "
  p50_samples[$key]+="$p50 "
  p99_samples[$key]+="$p99 "
  if [ -n "$errors" ]; then errors_seen[$key]+="$errors"; fi
  local cpu=""
  if [ -n "$pid" ]; then
    local after hz
    after=$(cpu_ticks "${pids[@]}")
    hz=$(getconf CLK_TCK)
    cpu=$(awk -v t="$((after - before))" -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
    cpu_samples[$key]+="$cpu "
    rss_last[$key]=$(awk -v k="$(rss_kib "${pids[@]}")" 'BEGIN {printf "%.1f", k / 1024}')
  fi
  local line="[bench] $key: $rps req/s, p50 $p50 ms, p99 $p99 ms${cpu:+, CPU $cpu µs/request, RSS ${rss_last[$key]} MiB} $errors"
  echo "$line" >&2
  # The rounds, for bench/paired-rounds.sh.
  echo "$line" >>"$work/rounds.log"
}

# row <key> <label> <direct key>: the medians of a key as a table row.
row() {
  local key=$1 label=$2 direct=$3
  local rps p50 p99 ratio cpu="—" rss="—"
  # shellcheck disable=SC2086
  rps=$(median ${rps_samples[$key]})
  # shellcheck disable=SC2086
  p50=$(median ${p50_samples[$key]})
  # shellcheck disable=SC2086
  p99=$(median ${p99_samples[$key]})
  # shellcheck disable=SC2086
  ratio=$(awk -v r="$rps" -v d="$(median ${rps_samples[$direct]})" 'BEGIN {printf "%.2f", r / d}')
  if [ -n "${cpu_samples[$key]:-}" ]; then
    # shellcheck disable=SC2086
    cpu="$(median ${cpu_samples[$key]}) µs"
    rss="${rss_last[$key]} MiB"
  fi
  local errors=${errors_seen[$key]:-}
  table+=("| $label | $rps | $ratio | $p50 | $p99 | $rss | $cpu |${errors:+ errors: $errors}")
}

# --- work mode ------------------------------------------------------------------------------------
# The system's TCP segments sent so far (loopback counts each segment once).
tcp_out_segments() {
  awk '/^Tcp:/ { if (++n == 1) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") col = i } else print $col }' /proc/net/snmp
}

# Involuntary context switches of all threads of the given processes so far.
preemptions() {
  local pid
  for pid in "$@"; do
    cat /proc/"$pid"/task/*/status 2>/dev/null || true
  done | awk '/^nonvoluntary_ctxt_switches/ {sum += $2} END {print sum + 0}'
}

declare -A counted
# count_calls <key> <port> <pid>: system calls and preemptions of the proxy and TCP segments of the
# whole machine, per request, at full speed.
count_calls() {
  local key=$1 port=$2 pid=$3 pids before after preempted_before preempted_after requests
  # shellcheck disable=SC2046
  set -- $(pids_of "$pid")
  pids=$(echo "$@" | tr ' ' ',')
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "http://127.0.0.1:$port/" >/dev/null
  before=$(tcp_out_segments)
  preempted_before=$(preemptions "$@")
  perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$work/perf.txt" -- \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/" >"$work/wrk.txt"
  preempted_after=$(preemptions "$@")
  after=$(tcp_out_segments)
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  counted[$key-syscalls]=$(awk -F, -v n="$requests" '/raw_syscalls:sys_enter/ {printf "%.2f", $1 / n}' "$work/perf.txt")
  counted[$key-segments]=$(awk -v d="$((after - before))" -v n="$requests" 'BEGIN {printf "%.2f", d / n}')
  counted[$key-preempted]=$(awk -v d="$((preempted_after - preempted_before))" -v n="$requests" 'BEGIN {printf "%.3f", d / n}')
  echo "[bench] $key: ${counted[$key-syscalls]} system calls, ${counted[$key-segments]} segments, preempted ${counted[$key-preempted]} times per request" >&2
}

# instructions_of <duration> <port> <start command...>: starts the proxy under callgrind, runs wrk
# against it for the duration and stops it. Sets run_instructions (what all its processes ran in
# user space) and run_requests (what wrk completed).
instructions_of() {
  local duration=$1 port=$2
  shift 2
  # Writable by all: nginx's worker runs as nobody.
  chmod o+x "$work"
  rm -rf "$work/callgrind"
  mkdir -m 1777 "$work/callgrind"
  launch=(valgrind -q --vgdb=no --tool=callgrind --trace-children=yes "--callgrind-out-file=$work/callgrind/%p")
  WAIT_TRIES=600
  "$@"
  launch=()
  WAIT_TRIES=100
  wrk -t1 -c16 -d"$duration" "http://127.0.0.1:$port/" >"$work/wrk.txt"
  stop "$proxy_pid"
  # nginx's worker may still be writing its profile after the master has gone.
  sleep 2
  run_instructions=$(cat "$work"/callgrind/* | awk '/^totals:/ {sum += $2} END {printf "%.0f", sum}')
  run_requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
}

# count_instructions <key> <port> <start command...>: user-space instructions per request, as the
# difference between a short and a long run, so that starting and stopping cancel out.
count_instructions() {
  local key=$1 port=$2
  shift 2
  instructions_of "$WARMUP" "$port" "$@"
  local short_instructions=$run_instructions short_requests=$run_requests
  instructions_of "$DURATION" "$port" "$@"
  counted[$key-instructions]=$(awk -v a="$short_instructions" -v b="$run_instructions" \
    -v m="$short_requests" -v n="$run_requests" 'BEGIN {printf "%.0f", (b - a) / (n - m)}')
  echo "[bench] $key: ${counted[$key-instructions]} user-space instructions per request ($((run_requests - short_requests)) requests apart)" >&2
}

if [ "$MODE" = work ]; then
  start_splitter 1 "$SPLITTER_PORT" "$SPLITTER_ADMIN"
  count_calls splitter "$SPLITTER_PORT" "$proxy_pid"
  stop "$proxy_pid"
  start_nginx 1
  count_calls nginx "$NGINX_PORT" "$proxy_pid"
  count_calls nginx-headers "$NGINX_HEADERS_PORT" "$proxy_pid"
  stop "$proxy_pid"
  start_haproxy 1
  count_calls haproxy "$HAPROXY_PORT" "$proxy_pid"
  count_calls haproxy-headers "$HAPROXY_HEADERS_PORT" "$proxy_pid"
  stop "$proxy_pid"
  count_instructions splitter "$SPLITTER_PORT" start_splitter 1 "$SPLITTER_PORT" "$SPLITTER_ADMIN"
  count_instructions nginx "$NGINX_PORT" start_nginx 1
  count_instructions nginx-headers "$NGINX_HEADERS_PORT" start_nginx 1
  count_instructions haproxy "$HAPROXY_PORT" start_haproxy 1
  count_instructions haproxy-headers "$HAPROXY_HEADERS_PORT" start_haproxy 1
  echo
  echo "Machine: $(nproc) cores, $(uname -r); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(valgrind --version)"
  echo
  echo "Work per request, 1 worker each: calls and segments under \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION\`, instructions under callgrind and \`wrk -t1 -c16\` (a $DURATION run less a $WARMUP one)"
  echo
  echo "| proxy | system calls | TCP segments (whole machine) | user-space instructions | preempted (full speed) |"
  echo "| --- | --- | --- | --- | --- |"
  for key in splitter nginx haproxy nginx-headers haproxy-headers; do
    case $key in
      splitter) label="request splitter" ;;
      nginx) label="nginx" ;;
      haproxy) label="HAProxy" ;;
      nginx-headers) label="nginx adding the splitter's headers" ;;
      haproxy-headers) label="HAProxy adding the splitter's headers" ;;
    esac
    echo "| $label | ${counted[$key-syscalls]} | ${counted[$key-segments]} | ${counted[$key-instructions]} | ${counted[$key-preempted]} |"
  done
  exit 0
fi

header="| target | req/s | ratio to direct | p50 ms | p99 ms | proxy RSS | proxy CPU per request |"
rule="| --- | --- | --- | --- | --- | --- | --- |"
table=()
moderate_table=()

limit_note=""
if [ -n "$CPU_LIMIT" ]; then
  limit_note=", each proxy limited to ${CPU_LIMIT} millicores per worker (CFS quota)"
fi
for workers in $WORKER_COUNTS; do
  limit_launch splitter "$workers"
  start_splitter "$workers" "$SPLITTER_PORT" "$SPLITTER_ADMIN"
  splitter_pid=$proxy_pid
  limit_launch nginx "$workers"
  start_nginx "$workers"
  nginx_pid=$proxy_pid
  limit_launch haproxy "$workers"
  start_haproxy "$workers"
  haproxy_pid=$proxy_pid
  baseline_pid=
  if [ -n "$BASELINE_BIN" ]; then
    limit_launch baseline "$workers"
    start_splitter "$workers" "$BASELINE_PORT" "$BASELINE_ADMIN" false "$BASELINE_BIN"
    baseline_pid=$proxy_pid
  fi
  logging_pid=
  if [ "$workers" = 1 ]; then
    limit_launch logging 1
    start_splitter 1 "$LOGGING_PORT" "$LOGGING_ADMIN" true
    logging_pid=$proxy_pid
  fi
  launch=()
  for round in $(seq 1 "$ROUNDS"); do
    echo "[bench] $workers worker(s), round $round of $ROUNDS" >&2
    measure "direct-$workers" "$STABLE_PORT" "$THREADS" "$CONNECTIONS"
    measure "splitter-$workers" "$SPLITTER_PORT" "$THREADS" "$CONNECTIONS" "$splitter_pid"
    if [ -n "$baseline_pid" ]; then
      measure "baseline-$workers" "$BASELINE_PORT" "$THREADS" "$CONNECTIONS" "$baseline_pid"
    fi
    measure "nginx-$workers" "$NGINX_PORT" "$THREADS" "$CONNECTIONS" "$nginx_pid"
    measure "haproxy-$workers" "$HAPROXY_PORT" "$THREADS" "$CONNECTIONS" "$haproxy_pid"
    measure "nginx-headers-$workers" "$NGINX_HEADERS_PORT" "$THREADS" "$CONNECTIONS" "$nginx_pid"
    measure "haproxy-headers-$workers" "$HAPROXY_HEADERS_PORT" "$THREADS" "$CONNECTIONS" "$haproxy_pid"
    if [ -n "$logging_pid" ]; then
      measure "logging-$workers" "$LOGGING_PORT" "$THREADS" "$CONNECTIONS" "$logging_pid"
    fi
  done
  table+=("" "**$workers worker(s)**, \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\`, median of $ROUNDS interleaved rounds$limit_note" "" "$header" "$rule")
  row "direct-$workers" "direct (backend)" "direct-$workers"
  row "splitter-$workers" "request splitter ($workers worker)" "direct-$workers"
  if [ -n "$baseline_pid" ]; then
    row "baseline-$workers" "request splitter, baseline build ($workers worker)" "direct-$workers"
    stop "$baseline_pid"
  fi
  row "nginx-$workers" "nginx ($workers worker)" "direct-$workers"
  row "haproxy-$workers" "HAProxy (nbthread $workers)" "direct-$workers"
  row "nginx-headers-$workers" "nginx ($workers worker, adding the splitter's headers)" "direct-$workers"
  row "haproxy-headers-$workers" "HAProxy (nbthread $workers, adding the splitter's headers)" "direct-$workers"
  if [ -n "$logging_pid" ]; then
    row "logging-$workers" "request splitter ($workers worker, JSON access log to /dev/null)" "direct-$workers"
    stop "$logging_pid"
  fi
  if [ "$workers" = 1 ]; then
    # Moderate load: the latency a proxy adds when it is not saturated.
    printf 'function delay()\n  return %d\nend\n' "$MODERATE_PAUSE_MS" >"$work/pace.lua"
    wrk_extra=(-s "$work/pace.lua")
    for round in $(seq 1 "$ROUNDS"); do
      echo "[bench] moderate load, round $round of $ROUNDS" >&2
      measure "direct-moderate" "$STABLE_PORT" 1 8
      measure "splitter-moderate" "$SPLITTER_PORT" 1 8 "$splitter_pid"
      measure "nginx-moderate" "$NGINX_PORT" 1 8 "$nginx_pid"
      measure "haproxy-moderate" "$HAPROXY_PORT" 1 8 "$haproxy_pid"
    done
    wrk_extra=()
    saved=("${table[@]}")
    table=("" "**Moderate load**, 1 worker, \`wrk -t1 -c8 -d$DURATION --latency -s pace.lua\` (each connection pauses ${MODERATE_PAUSE_MS} ms between requests), median of $ROUNDS interleaved rounds$limit_note" "" "$header" "$rule")
    row "direct-moderate" "direct (backend)" "direct-moderate"
    row "splitter-moderate" "request splitter (1 worker)" "direct-moderate"
    row "nginx-moderate" "nginx (1 worker)" "direct-moderate"
    row "haproxy-moderate" "HAProxy (nbthread 1)" "direct-moderate"
    moderate_table=("${table[@]}")
    table=("${saved[@]}")
  fi
  stop "$splitter_pid"
  stop "$nginx_pid"
  stop "$haproxy_pid"
done

echo
echo "Machine: $(nproc) cores, $(uname -r); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3); load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${table[@]}" "${moderate_table[@]}"
echo
echo "Request splitter's requests/s over each anchor's in the same round (bench/paired-rounds.sh)"
echo
bench/paired-rounds.sh "$work/rounds.log"
