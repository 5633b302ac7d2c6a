#!/usr/bin/env bash
# Benchmark of the config sync sidecar on the local cluster: how long an edit of a ConfigMap takes
# to reach the app through the sidecar, against a kubelet-mounted volume of the same ConfigMap in the
# same pod.
#
# One pod, three containers: the sidecar (settings in its environment, as injection would set them;
# no operator needed) writing into an emptyDir at /etc/synced; the test app; and a watcher (the test
# app's `watch` mode) polling /etc/synced/stamp and /etc/kubelet/stamp every 5 ms and printing each
# change with a timestamp. The pod shares its process namespace, so the watcher also reads the
# sidecar's RSS and CPU time from /proc. The script edits the ConfigMap EDITS times, PAUSE seconds
# apart, writing the edit's number and its wall-clock time into the key `stamp`; for each edit and
# each path, the latency is the watcher's time of the change minus the time of the edit (host and
# node share a clock on the local cluster). It reports p50, p99 and max per path, the edits a path
# never showed (the kubelet skips versions edited faster than it syncs), and the sidecar's RSS and
# CPU time after the run. The goal: p99 under 1 s through the sidecar.
#
# Usage: bench/config-sync.sh                  (images: OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh config-sync testapp)
#        EDITS=5 PAUSE=2 bench/config-sync.sh  a short run
# Environment: EDITS (50), PAUSE (1.5, seconds between edits), SETTLE (90, seconds to wait for the
#              kubelet's volume after the last edit), KEEP (1 to keep the namespace).
# This is a benchmark, not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(hack/cluster.sh env)"

EDITS=${EDITS:-50}
PAUSE=${PAUSE:-1.5}
SETTLE=${SETTLE:-90}
NS=bench-config-sync-$$
LOG=$(mktemp)
trap '[[ ${KEEP:-} == 1 ]] || kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1; rm -f "$LOG"' EXIT

now_ms() { date +%s%3N; }

kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" create configmap bench --from-literal=stamp="0 $(now_ms)" >/dev/null
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: config-sync}
rules:
  - {apiGroups: [""], resources: [configmaps], resourceNames: [bench], verbs: [get, list, watch]}
  - {apiGroups: [""], resources: [pods], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: config-sync}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: config-sync}
subjects: [{kind: ServiceAccount, name: default, namespace: $NS}]
---
apiVersion: v1
kind: Pod
metadata: {name: bench}
spec:
  shareProcessNamespace: true
  securityContext: {runAsUser: 65534, runAsGroup: 65534}
  volumes:
    - {name: synced, emptyDir: {}}
    - {name: kubelet, configMap: {name: bench}}
  containers:
    - name: config-sync
      image: outrigger/config-sync:dev
      imagePullPolicy: Never
      env:
        - {name: OUTRIGGER_SETTINGS, value: '{"configMaps":"bench","mountPath":"/etc/synced","types":"stamp=text"}'}
        - {name: OUTRIGGER_CONFIG_SYNC_DIR, value: /etc/synced}
        - {name: OUTRIGGER_ADMIN_ADDR, value: "0.0.0.0:9901"}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
      volumeMounts: [{name: synced, mountPath: /etc/synced}]
      readinessProbe: {httpGet: {path: /readyz, port: 9901}, periodSeconds: 1}
    - name: app
      image: outrigger/testapp:dev
      imagePullPolicy: Never
      volumeMounts:
        - {name: synced, mountPath: /etc/synced, readOnly: true}
        - {name: kubelet, mountPath: /etc/kubelet, readOnly: true}
    - name: watcher
      image: outrigger/testapp:dev
      imagePullPolicy: Never
      command: [/outrigger-testapp, watch, /etc/synced/stamp, /etc/kubelet/stamp]
      volumeMounts:
        - {name: synced, mountPath: /etc/synced, readOnly: true}
        - {name: kubelet, mountPath: /etc/kubelet, readOnly: true}
YAML
kubectl -n "$NS" wait --for=condition=Ready pod/bench --timeout=180s >/dev/null
echo "[bench] pod ready; $EDITS edits, ${PAUSE}s apart" >&2

: >"$LOG"
for i in $(seq 1 "$EDITS"); do
  at=$(now_ms)
  kubectl -n "$NS" patch configmap bench --type merge -p "{\"data\":{\"stamp\":\"$i $at\"}}" >/dev/null
  echo "edit $i $at" >>"$LOG"
  sleep "$PAUSE"
done
echo "[bench] edits done; waiting up to ${SETTLE}s for the kubelet's volume" >&2
deadline=$(( $(date +%s) + SETTLE ))
while (( $(date +%s) < deadline )); do
  kubectl -n "$NS" logs bench -c watcher | grep -q "/etc/kubelet/stamp $EDITS " && break
  sleep 2
done
kubectl -n "$NS" logs bench -c watcher | sed 's/^/seen /' >>"$LOG"
stats=$(kubectl -n "$NS" exec bench -c watcher -- /outrigger-testapp procstat outrigger-config-sync || true)

# Per path: latency of each edit = first time the path showed that edit's number - edit time.
python3 - "$LOG" "$EDITS" "$stats" <<'PY'
import sys
log, edits, stats = sys.argv[1], int(sys.argv[2]), sys.argv[3]
edit_at, seen = {}, {}
for line in open(log):
    parts = line.split()
    if parts[0] == "edit":
        edit_at[int(parts[1])] = int(parts[2])
    elif parts[0] == "seen" and len(parts) >= 4:
        at, path, number = int(parts[1]), parts[2], int(parts[3])
        seen.setdefault(path, {}).setdefault(number, at)
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
print(f"{'path':<22} {'seen':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for label, path in [("config-sync", "/etc/synced/stamp"), ("kubelet volume", "/etc/kubelet/stamp")]:
    latencies = [seen.get(path, {})[n] - edit_at[n] for n in range(1, edits + 1) if n in seen.get(path, {})]
    if latencies:
        print(f"{label:<22} {len(latencies):>3}/{edits:<2} {pct(latencies, 50):>8} {pct(latencies, 99):>8} {max(latencies):>8}")
    else:
        print(f"{label:<22} {0:>3}/{edits:<2} {'-':>8} {'-':>8} {'-':>8}")
for line in stats.splitlines():
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    ticks = int(fields.get("cpu_ticks", "0") or 0)
    print(f"sidecar pid {fields.get('pid')}: RSS {fields.get('rss_kb')} kB, CPU {ticks / 100:.2f} s over the run")
PY
