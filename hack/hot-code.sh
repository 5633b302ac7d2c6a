#!/usr/bin/env bash
# Regenerates sidecars/sharding-ambassador/hot-code.txt: the functions the sharding ambassador runs
# while it serves, which its build.rs has lld place together at the start of the binary's code in
# optimized builds (`--symbol-ordering-file`).
#
# Why: the kernel maps a binary's code in blocks of 64 KiB or more around each page that runs, so
# hot code spread over the whole binary keeps megabytes resident. Gathered, it keeps a few hundred
# KiB. Run this after changes to the ambassador's serving path; a stale list still links (symbols
# it names that no longer exist are skipped), it just gathers less.
#
# How: builds the release binary exactly as hack/images.sh does, with the current list and a link
# map (symbol names carry a hash of the profile, so the list must come from the shipped profile),
# serves it load from loopback redis-servers (plain and pipelined SET/GET, multi-key commands,
# metrics scrapes, health probes, shard-map polls while idle) and adds to the list, after what it
# holds:
#  - the functions perf samples on the CPU (every 50 µs);
#  - the functions whose code pages fault in while it serves. The ambassador unmaps its code 200 ms
#    after start-up, so every page it runs afterwards faults once and names its function.
# Each new order moves the remaining functions, so this runs ITERATIONS (3) rounds. Functions the
# last build no longer has are dropped.
#
# Usage: hack/hot-code.sh      Environment: ITERATIONS (3), BASE_PORT (17480)
# Installs redis-server, redis-tools, linux-perf, curl and python3 with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ITERATIONS=${ITERATIONS:-3}
BASE_PORT=${BASE_PORT:-17480}
LIST=$PWD/sidecars/sharding-ambassador/hot-code.txt
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BINARY=$TARGET_DIR/x86_64-unknown-linux-gnu/release/outrigger-sharding-ambassador
SHARDS=2
AMBASSADOR_PORT=$((BASE_PORT + 10))
ADMIN_PORT=$((BASE_PORT + 11))

log() { echo "[hot-code] $*" >&2; }

need=()
for command in redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools \
  perf:linux-perf curl:curl python3:python3; do
  command -v "${command%%:*}" >/dev/null 2>&1 || need+=("${command#*:}")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

shards=""
for ((i = 0; i < SHARDS; i++)); do
  port=$((BASE_PORT + i))
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --logfile "$work/redis-$i.log" &
  pids+=($!)
  shards+="${shards:+,}{\"name\":\"shard-$i\",\"endpoints\":[\"127.0.0.1:$port\"]}"
done
cat >"$work/shard-map.json" <<EOF
{"protocol":"redis","function":"ketama","hash":"fnv1a64","virtualNodes":160,"hashTag":"{}","shards":[$shards]}
EOF
touch "$LIST"

# Serves the load the list is made for.
serve_load() {
  redis-benchmark -h 127.0.0.1 -p "$AMBASSADOR_PORT" -t set,get -n 100000 -c 50 -r 1000000 -q >/dev/null 2>&1
  redis-benchmark -h 127.0.0.1 -p "$AMBASSADOR_PORT" -t set,get -n 200000 -c 50 -P 16 -r 1000000 -q >/dev/null 2>&1
  for _ in 1 2 3; do
    redis-cli -h 127.0.0.1 -p "$AMBASSADOR_PORT" MSET a 1 b 2 c 3 >/dev/null
    redis-cli -h 127.0.0.1 -p "$AMBASSADOR_PORT" MGET a b c >/dev/null
    redis-cli -h 127.0.0.1 -p "$AMBASSADOR_PORT" DEL a b c >/dev/null
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" >/dev/null
    curl -sf "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || true
    sleep 2.5
  done
}

for ((round = 1; round <= ITERATIONS; round++)); do
  log "round $round of $ITERATIONS: building with $(wc -l <"$LIST") listed functions"
  RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-Map=$work/link.map" cargo build -q \
    --profile release --target x86_64-unknown-linux-gnu -p outrigger-sharding-ambassador
  "$BINARY" --listen "127.0.0.1:$AMBASSADOR_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --shard-map "$work/shard-map.json" --log warn --log-format text 2>"$work/ambassador.log" &
  ambassador=$!
  for _ in $(seq 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$AMBASSADOR_PORT" SET hot:ready 1 2>/dev/null)" = OK ] && break
    sleep 0.1
  done
  # Past the unmapping that follows start-up.
  sleep 1
  perf record -q -F 20000 -p "$ambassador" -o "$work/cpu.data" >/dev/null 2>&1 &
  cpu=$!
  perf record -q -d -c 1 -e minor-faults -p "$ambassador" -o "$work/faults.data" >/dev/null 2>&1 &
  faults=$!
  sleep 0.5
  serve_load
  kill -INT "$cpu" "$faults"
  wait "$cpu" "$faults" 2>/dev/null || true
  # The binary is position independent: an address less the start of its first mapping is the
  # address the link map lists.
  base=$(awk -v binary="$BINARY" '$6 == binary && $3 == "00000000" { split($1, range, "-"); print range[1]; exit }' \
    "/proc/$ambassador/maps")
  kill "$ambassador"
  wait "$ambassador" 2>/dev/null || true
  perf script -i "$work/cpu.data" -F ip 2>/dev/null | awk '{ print $1 }' >"$work/sampled.txt"
  perf script -i "$work/faults.data" -F addr 2>/dev/null | awk '{ print $1 }' >"$work/faulted.txt"
  python3 - "$LIST" "$work/link.map" "$base" "$work/sampled.txt" "$work/faulted.txt" <<'PY'
import bisect
import re
import sys

listed_path, map_path, base, *address_paths = sys.argv[1:]
base = int(base, 16)
# lld's map: "VMA LMA Size Align" then an input section, `file:(.text.<symbol>)` for a Rust
# function; a C object's plain `(.text)` is named by the symbol lines under it.
section = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text(?:\.(\S+))?\)$")
symbol = re.compile(r"^\s*[0-9a-f]+\s+[0-9a-f]+\s+[0-9a-f]+\s+\d+\s{10,}(\S+)$")
code, unnamed = [], None
for line in open(map_path):
    if match := section.match(line):
        start, size, name = int(match[1], 16), int(match[2], 16), match[3]
        code.append([start, size, name])
        unnamed = None if name else code[-1]
    elif unnamed is not None and (match := symbol.match(line)):
        unnamed[2] = match[1]
        unnamed = None
for entry in code:
    # Hot/cold section prefixes are not part of the symbol's name.
    for prefix in ("unlikely.", "hot.", "startup.", "exit.", "split."):
        if entry[2] and entry[2].startswith(prefix):
            entry[2] = entry[2][len(prefix):]
code = sorted(entry for entry in code if entry[2])
starts = [start for start, _, _ in code]
names = {name for _, _, name in code}


def function_at(address):
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0 and code[i][0] <= address < code[i][0] + max(code[i][1], 1):
        return code[i][2]
    return None


listed = [line.strip() for line in open(listed_path) if line.strip()]
order = [name for name in listed if name in names]
known = set(order)
added = 0
for path in address_paths:
    for line in open(path):
        name = line.strip() and function_at(int(line, 16) - base)
        if name and name not in known:
            order.append(name)
            known.add(name)
            added += 1
with open(listed_path, "w") as out:
    out.write("".join(name + "\n" for name in order))
print(f"[hot-code] {added} functions added, {len(listed) - len(order) + added} dropped, {len(order)} listed",
      file=sys.stderr)
PY
done
log "wrote $LIST"
