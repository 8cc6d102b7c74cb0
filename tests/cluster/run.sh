#!/usr/bin/env bash
# tests/cluster/run.sh: the real-cluster suite. One real one-node Kubernetes (kube-apiserver,
# controller-manager, scheduler, etcd, kubelet on its own containerd), a real Tempo, Jaeger and
# podtrail's collector, and podtrail installed into it with `helm install` of its chart
# (deploy/helm/podtrail; test_chart.py checks the kustomize base deploy/ against it).
# Run it after the other suites, never beside them: the agent sees the whole host.
#
# Builds what it needs first (cached in $PODTRAIL_CACHE, default /var/cache/podtrail): the
# Kubernetes binaries, Tempo, Jaeger, the collector, helm and cert-manager's CRDs (its Go
# module), the busybox and pause images, the Python venv; and podtrail's image from target/release/podtrail (cargo build --release first).
# Exit status is pytest's; a missing prerequisite fails, never skips.
# Extra arguments go to pytest, e.g.  tests/cluster/run.sh -k interactive
# PODTRAIL_KEEP_CLUSTER=1 leaves the cluster running for a look (its directory is printed).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HARNESS="$REPO/tests/harness"
export PODTRAIL_CACHE="${PODTRAIL_CACHE:-/var/cache/podtrail}"
start=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "tests/cluster: needs root (kubelet, containerd, the agent's BPF programs)" >&2; exit 1; }
[ -x "$REPO/target/release/podtrail" ] || { echo "tests/cluster: no target/release/podtrail: run cargo build --release first" >&2; exit 1; }

PY=$(bash "$HARNESS/pyenv.sh")
# Each build is cached; the first run builds Kubernetes (~10 min on 2 cores) and Tempo (~4 min).
logs=$(mktemp -d)
for s in "kube.sh build" "kube.sh images" "tempo.sh build" "jaeger.sh build" "collector.sh build" \
         "helm.sh build" "helm.sh cert-manager-crds"; do
    # shellcheck disable=SC2086
    if ! bash "$HARNESS/"$s >"$logs/out" 2>"$logs/err"; then
        echo "tests/cluster: $s failed:" >&2; tail -n 60 "$logs/err" >&2; exit 1
    fi
done
# podtrail's own image, from the release binary the suites above tested (the first line of
# image.sh's output is the archive; the second its size)
image_out=$(bash "$REPO/scripts/image.sh" --ref podtrail.test/podtrail:dev \
    --out "$REPO/target/image/podtrail-test.oci.tar") \
    || { echo "tests/cluster: scripts/image.sh failed" >&2; exit 1; }
PODTRAIL_IMAGE_ARCHIVE=$(sed -n 1p <<<"$image_out")
export PODTRAIL_IMAGE_ARCHIVE
rm -rf "$logs"
echo "tests/cluster: prerequisites ready in $(( $(date +%s) - start ))s" >&2

cd "$HERE"
set +e
"$PY" -m pytest -p no:cacheprovider -v -rA "$@"
status=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass
[ "$status" = 5 ] && { echo "tests/cluster: no test ran" >&2; status=1; }
echo "tests/cluster: finished in $(( $(date +%s) - start ))s with status $status" >&2
exit $status
