#!/usr/bin/env bash
# tests/stack/run.sh: the investigation-stack suite (collector, Jaeger, Grafana, Compose,
# deploy/, docs). Builds what it needs first (cached in $PODTRAIL_CACHE, default
# /var/cache/podtrail: Jaeger, the collector, composecheck, the Python venv), then runs pytest.
# Exit status is pytest's (non-zero on any failure; "no tests ran" is a failure too).
# A missing prerequisite fails the suite (never a skip), in CI or not.
# Extra arguments go to pytest, e.g.  tests/stack/run.sh -k collector
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HARNESS="$HERE/../harness"
export PODTRAIL_CACHE="${PODTRAIL_CACHE:-/var/cache/podtrail}"
start=$(date +%s)

PY=$("$HARNESS/pyenv.sh")

# The two Go builds take minutes on 2 cores the first time: run them side by side (most of
# the first part is module download) and fail early with their logs if one breaks.
logs=$(mktemp -d)
pids=()
for s in jaeger.sh collector.sh composecheck.sh tempo.sh; do
    bash "$HARNESS/$s" build >"$logs/$s.out" 2>"$logs/$s.err" &
    pids+=($!)
done
failed=0
i=0
for s in jaeger.sh collector.sh composecheck.sh tempo.sh; do
    if ! wait "${pids[$i]}"; then
        echo "tests/stack: $s build failed:" >&2
        tail -n 40 "$logs/$s.err" >&2
        failed=1
    fi
    i=$((i + 1))
done
rm -rf "$logs"
echo "tests/stack: prerequisites ready in $(( $(date +%s) - start ))s" >&2
# In CI a failed build is a failure; elsewhere the tests that need it report it themselves.
if [ "$failed" = 1 ] && [ -n "${CI:-}" ]; then exit 1; fi

cd "$HERE"
set +e
"$PY" -m pytest -p no:cacheprovider -rs -q --durations=5 "$@" .
rc=$?
set -e
echo "tests/stack: finished in $(( $(date +%s) - start ))s (pytest exit $rc)" >&2
if [ "$rc" = 5 ]; then echo "tests/stack: no tests ran" >&2; exit 1; fi
exit "$rc"
