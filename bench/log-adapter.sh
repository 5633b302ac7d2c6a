#!/usr/bin/env bash
# Benchmark of the log adapter against syslog-ng doing comparable parsing of the same files.
#
# Corpus (generated on disk, LINES lines in all, in five files of equal line count):
#   json.log    JSON lines with a stamp, level, message and a few fields
#   nginx.log   nginx combined access lines
#   logfmt.log  logfmt lines (time, level, msg, fields)
#   klog.log    klog lines as Kubernetes components write them
#   java.log    logback-style lines, every tenth followed by a 12-line Java stack trace
#
# The adapter reads the directory once (`--once`, auto-detection, no checkpoint) and writes its
# JSON records to a file. syslog-ng (Debian's, one process) reads the same files with one source
# each, with the parser a user would pick: json-parser(), apache-accesslog-parser() with
# date-parser() for the stamp, kv-parser(), a regexp-parser() with named captures for klog, and
# multi-line mode with a prefix regex for the Java traces; it writes one JSON object per message
# with format-json, with flow control (a full destination queue holds the sources back instead of
# dropping messages, so that it writes every record). It does not normalise levels or time zones, and the adapter auto-detects the
# format of each line instead of being told, so the adapter does somewhat more work per line.
#
# A third row, `json`, is the adapter on json.log alone: JSON passthrough (each line parsed,
# normalised and written again), the goal's second figure.
#
# Per tool: wall time, CPU time (user + system of the process), lines/s and MB/s of input per
# core (input divided by CPU seconds, so that the two cores being shared does not count), the
# peak RSS, and the records written. syslog-ng keeps following its files, so it is stopped once its
# output has not grown for SETTLE seconds; its wall time ends at the last growth. The tools run
# interleaved ROUNDS times and each figure is the median over the rounds.
#
# Usage: bench/log-adapter.sh                      (installs syslog-ng with apt-get if missing)
#        LINES=2000 ROUNDS=1 bench/log-adapter.sh  a smoke run on a tiny corpus
# Environment: LINES (2000000), ROUNDS (3), SETTLE (1, seconds), ADAPTER_BIN (a binary to use
#              instead of building the release one), KEEP (a directory to keep the first 2000
#              records of each tool in, to compare their parsing), CARGO_TARGET_DIR (where the
#              release build goes).
# This is a benchmark, not a test: it asserts nothing, beyond both tools writing records.
set -euo pipefail
cd "$(dirname "$0")/.."

LINES=${LINES:-2000000}
ROUNDS=${ROUNDS:-3}
SETTLE=${SETTLE:-1}
KEEP=${KEEP:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

missing=()
command -v syslog-ng >/dev/null 2>&1 || missing+=(syslog-ng-core syslog-ng-scl)
[ -x /usr/bin/time ] || missing+=(time)
if ((${#missing[@]})); then
  echo "[bench] installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -n "${ADAPTER_BIN:-}" ]; then
  echo "[bench] using $ADAPTER_BIN" >&2
else
  # The binary that ships: statically linked, built as hack/images.sh builds it.
  echo "[bench] building the release binary (static, as in the image)" >&2
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$TARGET_DIR \
    cargo build -q --release --target x86_64-unknown-linux-gnu -p outrigger-log-adapter
  ADAPTER_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/outrigger-log-adapter
fi

work=$(mktemp -d /tmp/log-adapter-bench.XXXXXX)
started=()
cleanup() {
  for pid in "${started[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
corpus=$work/corpus
mkdir -p "$corpus" "$work/out"

# --- corpus ---------------------------------------------------------------------------------
per_file=$((LINES / 5))
echo "[bench] generating $((per_file * 5)) lines in $corpus" >&2
awk -v n="$per_file" -v dir="$corpus" 'BEGIN {
  srand(42)
  split("debug info info info warn error", levels, " ")
  split("GET POST GET GET PUT DELETE", methods, " ")
  split("200 200 200 201 204 301 404 500", statuses, " ")
  for (i = 0; i < n; i++) {
    s = i % 60; m = int(i / 60) % 60; h = int(i / 3600) % 24
    lvl = levels[1 + i % 6]
    printf "{\"time\":\"2024-01-02T%02d:%02d:%02d.%03dZ\",\"level\":\"%s\",\"msg\":\"request handled\",\"request_id\":\"req-%08d\",\"duration_ms\":%d,\"user\":{\"id\":%d,\"plan\":\"pro\"}}\n", h, m, s, i % 1000, lvl, i, i % 977, i % 5000 > dir "/json.log"
    printf "10.%d.%d.%d - - [02/Jan/2024:%02d:%02d:%02d +0000] \"%s /api/v1/items/%d?page=%d HTTP/1.1\" %s %d \"https://example.com/\" \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\"\n", i % 256, int(i / 256) % 256, i % 7, h, m, s, methods[1 + i % 6], i, i % 9, statuses[1 + i % 8], 100 + i % 9000 > dir "/nginx.log"
    printf "time=2024-01-02T%02d:%02d:%02d.%03dZ level=%s msg=\"cache lookup\" key=item:%d hit=%s size=%d component=cache\n", h, m, s, i % 1000, lvl, i, (i % 3 ? "true" : "false"), i % 4096 > dir "/logfmt.log"
    printf "%s0102 %02d:%02d:%02d.%06d       1 controller.go:%d] \"Reconciling\" object=\"ns-%d/pod-%d\" generation=%d\n", substr("IIIWE", 1 + i % 5, 1), h, m, s, i % 1000000, 100 + i % 50, i % 20, i, i % 9 > dir "/klog.log"
  }
  # Java: the same number of lines, every tenth event followed by a trace.
  written = 0; j = 0
  while (written < n) {
    s = j % 60; m = int(j / 60) % 60; h = int(j / 3600) % 24
    if (j % 10 == 9) {
      printf "2024-01-02 %02d:%02d:%02d.%03d ERROR [http-nio-8080-exec-%d] c.e.shop.OrderController - order %d failed\n", h, m, s, j % 1000, j % 8, j > dir "/java.log"
      printf "java.lang.IllegalStateException: inventory for item %d is negative\n", j > dir "/java.log"
      for (f = 0; f < 9; f++) printf "\tat com.example.shop.Layer%d.call(Layer%d.java:%d)\n", f, f, 10 + f > dir "/java.log"
      printf "\t... 42 more\n" > dir "/java.log"
      written += 12
    } else {
      printf "2024-01-02 %02d:%02d:%02d.%03d INFO  [http-nio-8080-exec-%d] c.e.shop.OrderController - order %d placed\n", h, m, s, j % 1000, j % 8, j > dir "/java.log"
      written += 1
    }
    j++
  }
}'
input_lines=$(cat "$corpus"/*.log | wc -l)
input_bytes=$(cat "$corpus"/*.log | wc -c)

# --- syslog-ng configuration ----------------------------------------------------------------
syslog_conf() {
  local out=$1
  cat <<EOF
@version: 3.38
@include "scl.conf"
options { stats-freq(0); flush-lines(1000); log-fifo-size(200000); keep-timestamp(no); create-dirs(no); };
source s_json   { file("$corpus/json.log"   flags(no-parse) log-iw-size(100000) follow-freq(0.2) log-msg-size(65536)); };
source s_nginx  { file("$corpus/nginx.log"  flags(no-parse) log-iw-size(100000) follow-freq(0.2) log-msg-size(65536)); };
source s_logfmt { file("$corpus/logfmt.log" flags(no-parse) log-iw-size(100000) follow-freq(0.2) log-msg-size(65536)); };
source s_klog   { file("$corpus/klog.log"   flags(no-parse) log-iw-size(100000) follow-freq(0.2) log-msg-size(65536)); };
source s_java   { file("$corpus/java.log"   flags(no-parse) log-iw-size(100000) follow-freq(0.2) log-msg-size(65536)
                       multi-line-mode(regexp) multi-line-prefix("^[0-9]{4}-[0-9]{2}-[0-9]{2} ")); };
parser p_json   { json-parser(prefix(".json.")); };
parser p_nginx  { apache-accesslog-parser(prefix(".apache.")); };
parser p_logfmt { kv-parser(prefix(".kv.")); };
parser p_klog   { regexp-parser(prefix(".klog.") patterns('^(?<level>[IWEF])(?<date>[0-9]{4}) (?<time>[0-9:.]+) +(?<thread>[0-9]+) (?<caller>[^\]]+)\] (?<msg>.*)$')); };
parser p_java   { regexp-parser(prefix(".java.") patterns('^(?<stamp>[0-9-]+ [0-9:.]+) (?<level>[A-Z]+) +\[(?<thread>[^]]+)\] (?<logger>\S+) - (?<msg>.*)')); };
destination d_out { file("$out" template("\$(format-json --scope dot-nv-pairs --key ISODATE --key MESSAGE --key FILE_NAME)\n")); };
log { source(s_json);   parser(p_json);   destination(d_out); flags(flow-control); };
log { source(s_nginx);  parser(p_nginx);  destination(d_out); flags(flow-control); };
log { source(s_logfmt); parser(p_logfmt); destination(d_out); flags(flow-control); };
log { source(s_klog);   parser(p_klog);   destination(d_out); flags(flow-control); };
log { source(s_java);   parser(p_java);   destination(d_out); flags(flow-control); };
EOF
}

clk_tck=$(getconf CLK_TCK)

# Prints "wall_s cpu_s rss_kb records" for one adapter run over the files matching $2.
run_adapter() {
  local round=$1 include=$2 out=$work/out/adapter-$round.jsonl
  /usr/bin/time -f '%e %U %S %M' -o "$work/out/adapter-$round.time" \
    "$ADAPTER_BIN" --once --no-checkpoint --include "$include" --log warn >"$out"
  local wall user sys rss
  read -r wall user sys rss <"$work/out/adapter-$round.time"
  echo "$wall $(echo "$user + $sys" | bc -l) $rss $(wc -l <"$out")"
  [ -z "$KEEP" ] || head -n 2000 "$out" >"$KEEP/adapter.jsonl"
  rm -f "$out"
}

# Prints "wall_s cpu_s rss_kb records" for one syslog-ng run, stopped once its output is still.
run_syslog_ng() {
  local round=$1 dir=$work/syslog-ng-$round
  mkdir -p "$dir"
  local out=$dir/out.jsonl
  syslog_conf "$out" >"$dir/syslog-ng.conf"
  : >"$out"
  local start_ns
  start_ns=$(date +%s%N)
  syslog-ng -F --no-caps -f "$dir/syslog-ng.conf" --persist-file="$dir/persist" \
    --pidfile="$dir/pid" --control="$dir/ctl" 2>"$dir/stderr" &
  local pid=$!
  started+=("$pid")
  local size=-1 last_change_ns=$start_ns now_ns current
  while :; do
    sleep 0.05
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "[bench] syslog-ng exited early:" >&2
      cat "$dir/stderr" >&2
      return 1
    fi
    current=$(stat -c %s "$out")
    now_ns=$(date +%s%N)
    if [ "$current" != "$size" ]; then
      size=$current
      last_change_ns=$now_ns
    elif [ "$size" -gt 0 ] && [ $((now_ns - last_change_ns)) -ge $((SETTLE * 1000000000)) ]; then
      break
    fi
  done
  local ticks rss
  ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$(echo "($last_change_ns - $start_ns) / 1000000000" | bc -l) $(echo "$ticks / $clk_tck" | bc -l) $rss $(wc -l <"$out")"
  [ -z "$KEEP" ] || head -n 2000 "$out" >"$KEEP/syslog-ng.jsonl"
  rm -rf "$dir"
}

command -v bc >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bc >/dev/null
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$work/adapter.rounds"
: >"$work/syslog-ng.rounds"
: >"$work/json.rounds"
for round in $(seq 1 "$ROUNDS"); do
  echo "[bench] round $round/$ROUNDS" >&2
  run_adapter "$round" "$corpus/*.log" >>"$work/adapter.rounds"
  run_syslog_ng "$round" >>"$work/syslog-ng.rounds"
  run_adapter "$round" "$corpus/json.log" >>"$work/json.rounds"
done
json_lines=$(wc -l <"$corpus/json.log")
json_bytes=$(wc -c <"$corpus/json.log")

# Median of column $2 in file $1.
median() {
  sort -g -k"$2","$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}

echo
echo "Log adapter vs syslog-ng: $input_lines lines, $(echo "$input_bytes / 1048576" | bc -l | xargs printf '%.1f') MB, median of $ROUNDS rounds"
echo "load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
printf '%-10s %9s %9s %14s %11s %9s %10s\n' tool wall_s cpu_s "lines/s/core" "MB/s/core" RSS_MB records
for tool in adapter syslog-ng json; do
  lines=$input_lines bytes=$input_bytes
  [ "$tool" != json ] || lines=$json_lines bytes=$json_bytes
  wall=$(median "$work/$tool.rounds" 1)
  cpu=$(median "$work/$tool.rounds" 2)
  rss=$(median "$work/$tool.rounds" 3)
  records=$(median "$work/$tool.rounds" 4)
  # A run too short for the clock's resolution counts as one tick.
  cpu_floor=$(echo "if ($cpu < 0.01) 0.01 else $cpu" | bc -l)
  printf '%-10s %9.2f %9.2f %14.0f %11.1f %9.1f %10d\n' "$tool" "$wall" "$cpu" \
    "$(echo "$lines / $cpu_floor" | bc -l)" \
    "$(echo "$bytes / 1048576 / $cpu_floor" | bc -l)" \
    "$(echo "$rss / 1024" | bc -l)" "$records"
done
