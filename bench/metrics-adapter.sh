#!/usr/bin/env bash
# Benchmark of the metrics adapter against Debian's prometheus-redis-exporter, both scraping one
# redis-server on loopback in the same run, and of the adapter's StatsD ingestion.
#
# Scrapes: Redis holds KEYS keys (in db0, a tenth of them with a TTL, and a few in db1). The
# adapter (Redis collector only) and the exporter (its defaults) are each scraped SCRAPES times,
# interleaved in batches, by one curl per batch over a kept-alive connection, as a Prometheus
# server would. Per tool: p50, p90 and p99 of curl's time_total for one scrape, and the CPU time
# (user + system of the process, from /proc) per scrape, and the peak RSS.
#
# StatsD: LINES lines (counters, gauges, timers with tags, across SERIES names) sent over UDP to
# the adapter in datagrams of 20 lines, paced by the sender alone. Reported: lines the adapter
# received, its CPU seconds for them, lines per CPU-second (per core: the cores are shared, so
# wall time does not count), and its RSS after. UDP drops what the socket buffer cannot hold; the
# received count (the adapter's own metrics_adapter_statsd_lines_total) is what the rate uses; the
# sender pauses briefly every 100 datagrams to keep drops low.
#
# Usage: bench/metrics-adapter.sh                         (installs what is missing with apt-get)
#        KEYS=1000 SCRAPES=50 LINES=20000 bench/metrics-adapter.sh   a smoke run
# Environment: KEYS (10000), SCRAPES (1000), BATCH (50 scrapes per curl), LINES (2000000),
#              SERIES (1000), ADAPTER_BIN (a binary to use instead of building the release one),
#              CARGO_TARGET_DIR (where the release build goes).
# This is a benchmark, not a test: it asserts nothing beyond both tools answering.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-10000}
SCRAPES=${SCRAPES:-1000}
BATCH=${BATCH:-50}
LINES=${LINES:-2000000}
SERIES=${SERIES:-1000}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
command -v prometheus-redis-exporter >/dev/null 2>&1 || missing+=(prometheus-redis-exporter)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
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
    cargo build -q --release --target x86_64-unknown-linux-gnu -p outrigger-metrics-adapter
  ADAPTER_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/outrigger-metrics-adapter
fi

work=$(mktemp -d /tmp/metrics-adapter-bench.XXXXXX)
started=()
cleanup() {
  for pid in "${started[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "[bench] nothing listens on $1" >&2
  exit 1
}
clk_tck=$(getconf CLK_TCK)
# CPU seconds (user + system) of a process so far.
cpu_seconds() { awk -v t="$clk_tck" '{printf "%.4f", ($14 + $15) / t}' "/proc/$1/stat"; }
peak_rss_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
started+=($!)
wait_port "$redis_port"
echo "[bench] loading $KEYS keys" >&2
awk -v n="$KEYS" 'BEGIN {
  for (i = 0; i < n; i++) {
    if (i % 10 == 0) printf "SET key:%d value-%d EX 86400\r\n", i, i
    else printf "SET key:%d value-%d\r\n", i, i
  }
  printf "SELECT 1\r\n"
  for (i = 0; i < 10; i++) printf "SET other:%d x\r\n", i
}' | redis-cli -p "$redis_port" --pipe >/dev/null

exporter_port=$(free_port)
prometheus-redis-exporter --redis.addr="redis://127.0.0.1:$redis_port" \
  --web.listen-address="127.0.0.1:$exporter_port" >"$work/exporter.log" 2>&1 &
exporter_pid=$!
started+=("$exporter_pid")

adapter_port=$(free_port)
statsd_port=$(free_port)
OUTRIGGER_SETTINGS="{\"redis\":\"127.0.0.1:$redis_port\",\"statsd\":\"127.0.0.1:$statsd_port\",\"statsdMaxSeries\":\"100000\"}" \
  OUTRIGGER_ADMIN_ADDR="127.0.0.1:$adapter_port" OUTRIGGER_LOG=warn "$ADAPTER_BIN" >"$work/adapter.log" 2>&1 &
adapter_pid=$!
started+=("$adapter_pid")
wait_port "$exporter_port"
wait_port "$adapter_port"

# --- scrapes ----------------------------------------------------------------------------------
# One curl per batch: BATCH scrapes of one URL over one connection, time_total of each.
scrape_batch() {
  local url=$1 out=$2 args=() i
  for ((i = 0; i < BATCH; i++)); do args+=("$url" -o /dev/null); done
  curl -s -w '%{time_total}\n' "${args[@]}" >>"$out"
}
# Warm both up (connections, first INFO) before measuring.
curl -s -o /dev/null "http://127.0.0.1:$adapter_port/metrics"
curl -s -o /dev/null "http://127.0.0.1:$exporter_port/metrics"
adapter_series=$(curl -s "http://127.0.0.1:$adapter_port/metrics" | grep -vc '^#')
exporter_series=$(curl -s "http://127.0.0.1:$exporter_port/metrics" | grep -vc '^#')

adapter_cpu=0
exporter_cpu=0
batches=$(((SCRAPES + BATCH - 1) / BATCH))
echo "[bench] $((batches * BATCH)) scrapes of each, interleaved in batches of $BATCH" >&2
for ((b = 0; b < batches; b++)); do
  before=$(cpu_seconds "$adapter_pid")
  scrape_batch "http://127.0.0.1:$adapter_port/metrics" "$work/adapter.times"
  adapter_cpu=$(awk -v a="$adapter_cpu" -v b="$before" -v c="$(cpu_seconds "$adapter_pid")" 'BEGIN {print a + c - b}')
  before=$(cpu_seconds "$exporter_pid")
  scrape_batch "http://127.0.0.1:$exporter_port/metrics" "$work/exporter.times"
  exporter_cpu=$(awk -v a="$exporter_cpu" -v b="$before" -v c="$(cpu_seconds "$exporter_pid")" 'BEGIN {print a + c - b}')
done

# Prints "p50 p90 p99" in milliseconds.
percentiles() {
  sort -g "$1" | awk 'function at(q,  i) { i = int(NR * q + 0.5); if (i < 1) i = 1; if (i > NR) i = NR; return v[i] * 1000 }
    {v[NR] = $1} END { printf "%.3f %.3f %.3f", at(0.50), at(0.90), at(0.99) }'
}
scrapes_done=$((batches * BATCH))
printf '\n%-28s %10s %10s %10s %14s %12s %9s\n' "scrapes (Redis, $KEYS keys)" "p50 ms" "p90 ms" "p99 ms" "CPU ms/scrape" "peak RSS MB" "series"
for tool in adapter exporter; do
  if [ "$tool" = adapter ]; then pid=$adapter_pid cpu=$adapter_cpu series=$adapter_series name=outrigger-metrics-adapter
  else pid=$exporter_pid cpu=$exporter_cpu series=$exporter_series name=prometheus-redis-exporter; fi
  read -r p50 p90 p99 <<<"$(percentiles "$work/$tool.times")"
  printf '%-28s %10s %10s %10s %14.3f %12.1f %9s\n' "$name" "$p50" "$p90" "$p99" \
    "$(awk -v c="$cpu" -v n="$scrapes_done" 'BEGIN {print c * 1000 / n}')" \
    "$(awk -v k="$(peak_rss_kb "$pid")" 'BEGIN {print k / 1024}')" "$series"
done

# --- StatsD ingestion -------------------------------------------------------------------------
echo "[bench] sending $LINES StatsD lines over $SERIES names" >&2
lines_before=$(curl -s "http://127.0.0.1:$adapter_port/metrics" | awk '$1 == "metrics_adapter_statsd_lines_total" {print $2}')
cpu_before=$(cpu_seconds "$adapter_pid")
python3 - "$statsd_port" "$LINES" "$SERIES" <<'PY'
import socket, sys, time
port, lines, series = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
kinds = ["{n}.requests:1|c", "{n}.inflight:{v}|g", "{n}.latency:{v}|ms|#route:r{r},method:GET"]
batch = []
for i in range(lines):
    name = "app.svc%d" % (i % series)
    batch.append(kinds[i % 3].format(n=name, v=i % 500, r=i % 7))
    if len(batch) == 20:
        sock.sendto("\n".join(batch).encode(), ("127.0.0.1", port))
        batch = []
        # A short pause now and then keeps the socket buffer from overflowing; the rate is per
        # CPU-second of the adapter, so the pauses do not count.
        if i % 2000 == 1999:
            time.sleep(0.002)
if batch:
    sock.sendto("\n".join(batch).encode(), ("127.0.0.1", port))
PY
sleep 0.5
cpu_after=$(cpu_seconds "$adapter_pid")
metrics=$(curl -s "http://127.0.0.1:$adapter_port/metrics")
lines_after=$(awk '$1 == "metrics_adapter_statsd_lines_total" {print $2}' <<<"$metrics")
statsd_series=$(awk '$1 == "metrics_adapter_statsd_series" {print $2}' <<<"$metrics")
received=$(awk -v a="${lines_after:-0}" -v b="${lines_before:-0}" 'BEGIN {print a - b}')
printf '\n%-28s %12s %12s %10s %18s %10s %9s\n' "StatsD ingestion" "sent" "received" "CPU s" "lines/CPU-second" "RSS MB" "series"
printf '%-28s %12s %12s %10.3f %18.0f %10.1f %9s\n' outrigger-metrics-adapter "$LINES" "$received" \
  "$(awk -v a="$cpu_after" -v b="$cpu_before" 'BEGIN {print a - b}')" \
  "$(awk -v r="$received" -v a="$cpu_after" -v b="$cpu_before" 'BEGIN {c = a - b; print (c > 0 ? r / c : 0)}')" \
  "$(awk -v k="$(rss_kb "$adapter_pid")" 'BEGIN {print k / 1024}')" "$statsd_series"
