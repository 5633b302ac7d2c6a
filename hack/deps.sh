#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine with Rust:
# the cluster's Debian packages (and its cached build), curl, and the Rust components.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# redis-server, redis-tools and nutcracker: the sharding ambassador's tests run against real Redis
# shards and check key placement against twemproxy. prometheus (for promtool) and
# prometheus-redis-exporter: the metrics adapter's tests check its exposition with promtool and its
# Redis metrics against the exporter's. varnish and wrk: the request splitter's cache benchmark
# (bench/cache.sh) measures its hit path against Varnish's; openssl: the front tier's TLS test makes
# certificates and handshakes with it.
for pkg in curl ca-certificates redis-server redis-tools nutcracker prometheus prometheus-redis-exporter \
  varnish wrk openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
hack/cluster.sh deps
hack/cluster.sh build
