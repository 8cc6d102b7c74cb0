#!/usr/bin/env bash
# test.sh: the whole test suite, as the README and .ci/run run it. Needs root: the kernel and
# container tests load BPF programs and start containerd themselves, and fail (never skip)
# without what they need.
#   1. setup.sh installs what is missing (clang, libbpf-dev, containerd, runc, busybox, ...),
#      and disk_check.sh fails the run at once if the disk cannot hold what it will build;
#   2. the Go-built backends (Jaeger, the collector) and the Python venv are built once and
#      cached in $PODTRAIL_CACHE, in the background while Rust compiles;
#   3. the gates: cargo fmt --check, cargo clippy -D warnings;
#   4. cargo test (unit, kernel, container, OTLP, Jaeger end-to-end), then the stack suite,
#      then the real-cluster suite (tests/cluster: a real one-node Kubernetes, Tempo, Jaeger,
#      the collector and podtrail installed with its Helm chart); it runs last and alone because the
#      agent it installs sees the whole host.
set -euo pipefail
cd "$(dirname "$0")/.."
export PODTRAIL_CACHE="${PODTRAIL_CACHE:-/var/cache/podtrail}"
start=$(date +%s)
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/disk_check.sh

# Backends build on Go while cargo compiles: two cores, two toolchains.
prep_log=$(mktemp)
# The first run builds Jaeger, the collector, Kubernetes, Tempo and helm (README: "What the
# first run builds"); later runs find them in $PODTRAIL_CACHE.
( bash tests/harness/jaeger.sh build && bash tests/harness/pyenv.sh \
    && bash tests/harness/collector.sh build && bash tests/harness/kube.sh build \
    && bash tests/harness/kube.sh images && bash tests/harness/tempo.sh build \
    && bash tests/harness/helm.sh build && bash tests/harness/helm.sh cert-manager-crds ) >"$prep_log" 2>&1 &
prep=$!

cargo build --release --all-targets
# The gates: the tree as rustfmt.toml formats it, and no clippy warning (the lints the project
# allows are in Cargo.toml's [lints] table, each with its reason). Either fails the run here,
# before the long suites.
if ! cargo fmt --check; then
    echo "test.sh: cargo fmt --check failed: run \`cargo fmt\` and commit the result (the diff above is what it changes)" >&2
    exit 1
fi
if ! cargo clippy --release --all-targets -- -D warnings; then
    echo "test.sh: cargo clippy --release --all-targets -- -D warnings failed: fix the warnings above (or, for a lint the project disagrees with, allow it in Cargo.toml's [lints] table with the reason)" >&2
    exit 1
fi
if ! wait "$prep"; then
    echo "test.sh: building the test backends failed:" >&2
    tail -n 50 "$prep_log" >&2
    exit 1
fi
# both are cached now: these calls only print the paths
JAEGER_BIN=$(bash tests/harness/jaeger.sh build); export JAEGER_BIN
PODTRAIL_PYTHON=$(bash tests/harness/pyenv.sh); export PODTRAIL_PYTHON
rm -f "$prep_log"
echo "test.sh: built in $(( $(date +%s) - start ))s" >&2

status=0
cargo test --release --no-fail-fast -- --test-threads=2 || status=$?
bash tests/stack/run.sh || status=$?
# the image the cluster suite installs, and proof that the Dockerfile builds the same one
bash tests/image/compare.sh || status=$?
bash tests/cluster/run.sh || status=$?
echo "test.sh: finished in $(( $(date +%s) - start ))s with status $status" >&2
exit $status
