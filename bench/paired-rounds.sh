#!/usr/bin/env bash
# Pools the rounds of several runs of bench/request-splitter.sh: the splitter's requests/s over each
# anchor's in the same round, per worker count. One run's nine rounds on two shared cores leave the
# comparison with a close anchor to the luck of that run (the machine's load moves every target by
# ±10% from one run to the next); pooled rounds of runs of the same code say more.
#
# Usage: bench/request-splitter.sh 2>run-a.log; ...; bench/paired-rounds.sh run-a.log run-b.log ...
# Reads the `[bench] <target>-<workers>: <requests/s> req/s ...` lines each run writes to stderr.
# Prints, per worker count and anchor: the rounds pooled, the median ratio with its quartiles, the
# range, and in how many rounds the splitter served more.
set -euo pipefail
if (($# == 0)); then
  echo "usage: $0 <stderr of bench/request-splitter.sh>..." >&2
  exit 2
fi

awk '
  FNR == 1 { run++ }
  /^\[bench\] [a-z-]+-[0-9]+: [0-9]+ req\/s/ {
    key = $2; sub(/:$/, "", key)
    n = split(key, parts, "-"); workers = parts[n]
    counts[workers + 0] = 1
    target = substr(key, 1, length(key) - length(workers) - 1)
    # A target is measured once per round, so its count so far numbers the round.
    round = ++seen[run, key]
    rps[run, round, target, workers] = $3
    if (round > rounds[run, workers]) rounds[run, workers] = round
  }
  END {
    split("nginx haproxy nginx-headers haproxy-headers baseline", anchors, " ")
    label["nginx"] = "nginx"; label["haproxy"] = "HAProxy"
    label["nginx-headers"] = "nginx adding the splitter'"'"'s headers"
    label["haproxy-headers"] = "HAProxy adding the splitter'"'"'s headers"
    label["baseline"] = "the splitter built from BASELINE_BIN"
    print "| workers | over | rounds (runs) | median | quartiles | range | rounds the splitter served more |"
    print "| --- | --- | --- | --- | --- | --- | --- |"
    for (workers = 1; workers <= max_workers(); workers++) {
      if (!(workers in counts)) continue
      for (a = 1; a <= 5; a++) {
        anchor = anchors[a]; count = 0; won = 0; runs = 0
        delete ratio
        for (r = 1; r <= run; r++) {
          used = 0
          for (round = 1; round <= rounds[r, workers]; round++) {
            ours = rps[r, round, "splitter", workers]; theirs = rps[r, round, anchor, workers]
            if (ours == "" || theirs == "") continue
            ratio[++count] = ours / theirs; used = 1
            if (ours + 0 >= theirs + 0) won++
          }
          runs += used
        }
        if (count == 0) continue
        # Insertion sort: a few dozen rounds at most.
        for (i = 2; i <= count; i++) {
          v = ratio[i]
          for (j = i - 1; j >= 1 && ratio[j] > v; j--) ratio[j + 1] = ratio[j]
          ratio[j + 1] = v
        }
        printf "| %d | %s | %d (%d) | %.2f | %.2f–%.2f | %.2f–%.2f | %d of %d |\n", workers, label[anchor],
          count, runs, quantile(ratio, count, 0.5), quantile(ratio, count, 0.25),
          quantile(ratio, count, 0.75), ratio[1], ratio[count], won, count
      }
    }
  }
  function max_workers(    w, most) {
    for (w in counts) if (w + 0 > most) most = w + 0
    return most
  }
  # Linear interpolation between the order statistics (the median of an even count is the mean of
  # the middle two).
  function quantile(sorted, n, q,    position, low) {
    position = 1 + (n - 1) * q
    low = int(position)
    if (low >= n) return sorted[n]
    return sorted[low] + (position - low) * (sorted[low + 1] - sorted[low])
  }
' "$@"
