#!/usr/bin/env bash
# pyenv.sh: the one Python environment podtrail's tests share.
#
# Usage:   PY=$(tests/harness/pyenv.sh)      prints the venv's python (absolute path) on stdout
# Creates or reuses a venv with the pinned packages of tests/harness/requirements.txt
# (pytest, protobuf, opentelemetry-proto/-api/-sdk/-exporter-otlp-proto-grpc, grpcio,
# kubernetes-validate, jsonschema, PyYAML). The venv is rebuilt only when that file changes,
# so a second call costs well under a second. Installs python3 + venv support with apt-get
# when missing (fresh Debian, as root).
#
# Environment in:
#   PODTRAIL_CACHE   cache root (default /var/cache/podtrail); venv at $PODTRAIL_CACHE/venv
#   PODTRAIL_VENV    use this venv directory instead
#   PYTHON           base interpreter to create the venv with (default: python3 on PATH)
# Output: one line, the python path. Progress goes to stderr.
# Decoding OTLP in a test:  "$PY" -c 'from opentelemetry.proto.collector.trace.v1 import
#   trace_service_pb2 as t; r = t.ExportTraceServiceRequest(); r.ParseFromString(...)'
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

REQ="$HERE/requirements.txt"
VENV="${PODTRAIL_VENV:-$PODTRAIL_CACHE/venv}"
STAMP="$VENV/.podtrail-requirements"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP" \
    && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "$VENV/bin/python"; exit 0
fi

mkdir -p "$PODTRAIL_CACHE/build"
exec 9>"$PODTRAIL_CACHE/build/venv.lock"
flock 9
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP"; then
    echo "$VENV/bin/python"; exit 0
fi

base=${PYTHON:-$(command -v python3 || true)}
if [ -z "$base" ] || ! "$base" -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3 and python3-venv with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq python3 python3-venv python3-pip >&2 \
        || die "could not install python3-venv"
    base=${PYTHON:-/usr/bin/python3}
fi

log "creating $VENV with $base"
rm -rf "$VENV"
"$base" -m venv "$VENV" >&2 || die "venv creation failed"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2 \
    || log "pip upgrade failed; continuing with the bundled pip"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2 \
    || die "pip install -r $REQ failed"
cp "$REQ" "$STAMP"
echo "$VENV/bin/python"
