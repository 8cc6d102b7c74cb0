#!/usr/bin/env bash
# collector.sh: podtrail's own OpenTelemetry Collector (otel-collector/), built with the
# OpenTelemetry Collector Builder from otel-collector/builder-config.yaml and run with
# otel-collector/config.yaml, for tests.
#
# Usage:
#   collector.sh build        Build (once per builder-config.yaml content); print the binary path.
#   collector.sh start DIR    Start the collector; write its state into DIR; return once healthy.
#   collector.sh stop DIR     Stop it (SIGTERM: the collector drains/persists its queues).
#   collector.sh env DIR      Print DIR/env again.
#   collector.sh validate [CONFIG]  Run `otelcol validate` on CONFIG (default config.yaml).
#
# Environment in:
#   PODTRAIL_CACHE        cache root (default /var/cache/podtrail); binary cached as
#                         $PODTRAIL_CACHE/bin/otelcol-podtrail-0.165.0-<hash of builder config>
#   COLLECTOR_BIN         use this binary instead of building one.
#   COLLECTOR_CONFIG      config file (default otel-collector/config.yaml of this repo).
#   TEMPO_ENDPOINT, JAEGER_ENDPOINT  host:port of the two OTLP/gRPC backends (required for
#                         start; point both at local Jaegers from jaeger.sh in tests).
#   COLLECTOR_OTLP_GRPC_PORT, COLLECTOR_OTLP_HTTP_PORT, COLLECTOR_HEALTH_PORT,
#   COLLECTOR_METRICS_PORT  fixed ports; each one unset gets a free port on 127.0.0.1.
#   QUEUE_DIRECTORY       persistent queue directory (default DIR/queue, so a restart with the
#                         same DIR resumes the queue). Any other variable of config.yaml
#                         (QUEUE_SPANS, MEMORY_LIMIT_MIB, LOG_LEVEL, ...) passes through.
#   OTLP_TLS_CERT_FILE, OTLP_TLS_KEY_FILE, OTLP_TLS_CLIENT_CA_FILE  the OTLP receiver's TLS
#                         (config.yaml requires TLS with client certificates); unset: a
#                         throwaway CA, server and client certificate are made in DIR/tls
#                         (openssl) and used.
#
# Output of `start` (stdout, and the same lines in DIR/env):
#   COLLECTOR_PID=<pid>
#   COLLECTOR_OTLP_GRPC=127.0.0.1:<port>
#   COLLECTOR_OTLP_HTTP=http://127.0.0.1:<port>
#   COLLECTOR_HEALTH=http://127.0.0.1:<port>/
#   COLLECTOR_METRICS=http://127.0.0.1:<port>/metrics   the collector's own Prometheus metrics
#   COLLECTOR_QUEUE_DIR=<dir>
#   COLLECTOR_TLS_CA=<file>            CA that signed the receiver's certificate
#   COLLECTOR_TLS_CLIENT_CERT=<file>   a client certificate the receiver accepts (and its key:)
#   COLLECTOR_TLS_CLIENT_KEY=<file>    (both empty when OTLP_TLS_* were given)
# DIR also holds: pid, collector.log.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
REPO=$(cd "$HERE/../.." && pwd)
BUILDER_CONFIG="$REPO/otel-collector/builder-config.yaml"
OCB_VERSION=0.165.0

binpath() {
    local h
    h=$(sha256sum "$BUILDER_CONFIG" | cut -c1-12)
    echo "$PODTRAIL_CACHE/bin/otelcol-podtrail-$OCB_VERSION-$h"
}

build() {
    if [ -n "${COLLECTOR_BIN:-}" ]; then echo "$COLLECTOR_BIN"; return; fi
    local bin; bin=$(binpath)
    if [ -x "$bin" ]; then echo "$bin"; return; fi
    build_lock otelcol
    if [ -x "$bin" ]; then echo "$bin"; return; fi
    local go gobin work
    go=$(find_go)
    gobin="$PODTRAIL_CACHE/build/gobin"
    work="$PODTRAIL_CACHE/build/otelcol"
    mkdir -p "$gobin" "$work"
    if [ ! -x "$gobin/builder-$OCB_VERSION" ]; then
        log "installing the OpenTelemetry Collector Builder v$OCB_VERSION"
        GOBIN="$gobin" "$go" install "go.opentelemetry.io/collector/cmd/builder@v$OCB_VERSION" >&2 \
            || die "could not install the collector builder"
        mv "$gobin/builder" "$gobin/builder-$OCB_VERSION"
    fi
    log "building the collector from $BUILDER_CONFIG (a few minutes on 2 cores; cached afterwards)"
    rm -rf "$work/_build"
    # output_path in the manifest is relative: run from the scratch dir so sources land there.
    ( cd "$work" && PATH="$(dirname "$go"):$PATH" "$gobin/builder-$OCB_VERSION" \
        --config "$BUILDER_CONFIG" >&2 ) || die "collector build failed"
    cp "$work/_build/otelcol-podtrail" "$bin.tmp" && mv "$bin.tmp" "$bin"
    echo "$bin"
}

start() {
    local dir=${1:?usage: collector.sh start DIR}
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        cat "$dir/env"; return
    fi
    : "${TEMPO_ENDPOINT:?set TEMPO_ENDPOINT (host:port of an OTLP/gRPC backend)}"
    : "${JAEGER_ENDPOINT:?set JAEGER_ENDPOINT (host:port of an OTLP/gRPC backend)}"
    local bin grpc http health metrics queue
    bin=$(build)
    grpc=${COLLECTOR_OTLP_GRPC_PORT:-$(free_port)}
    http=${COLLECTOR_OTLP_HTTP_PORT:-$(free_port)}
    health=${COLLECTOR_HEALTH_PORT:-$(free_port)}
    metrics=${COLLECTOR_METRICS_PORT:-$(free_port)}
    queue=${QUEUE_DIRECTORY:-$dir/queue}
    mkdir -p "$queue"
    local ca="" ccert="" ckey=""
    if [ -z "${OTLP_TLS_CERT_FILE:-}" ]; then
        bash "$REPO/scripts/otlp-certs.sh" "$dir/tls" || die "could not make test certificates (openssl)"
        export OTLP_TLS_CERT_FILE=$dir/tls/tls.crt OTLP_TLS_KEY_FILE=$dir/tls/tls.key \
            OTLP_TLS_CLIENT_CA_FILE=$dir/tls/ca.crt
        ca=$dir/tls/ca.crt ccert=$dir/tls/client.crt ckey=$dir/tls/client.key
    fi
    OTLP_GRPC_ENDPOINT=127.0.0.1:$grpc OTLP_HTTP_ENDPOINT=127.0.0.1:$http \
    HEALTH_ENDPOINT=127.0.0.1:$health METRICS_HOST=127.0.0.1 METRICS_PORT=$metrics \
    QUEUE_DIRECTORY=$queue \
        setsid "$bin" --config "${COLLECTOR_CONFIG:-$REPO/otel-collector/config.yaml}" \
        >"$dir/collector.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    cat >"$dir/env" <<ENV
COLLECTOR_PID=$(cat "$dir/pid")
COLLECTOR_OTLP_GRPC=127.0.0.1:$grpc
COLLECTOR_OTLP_HTTP=https://127.0.0.1:$http
COLLECTOR_HEALTH=http://127.0.0.1:$health/
COLLECTOR_METRICS=http://127.0.0.1:$metrics/metrics
COLLECTOR_QUEUE_DIR=$queue
COLLECTOR_TLS_CA=$ca
COLLECTOR_TLS_CLIENT_CERT=$ccert
COLLECTOR_TLS_CLIENT_KEY=$ckey
ENV
    if ! wait_http "http://127.0.0.1:$health/" "${COLLECTOR_START_TIMEOUT:-60}"; then
        tail -n 40 "$dir/collector.log" >&2 || true
        stop_pidfile "$dir"
        die "collector did not become healthy (log: $dir/collector.log)"
    fi
    cat "$dir/env"
}

validate() {
    local bin; bin=$(build)
    TEMPO_ENDPOINT=${TEMPO_ENDPOINT:-127.0.0.1:1} JAEGER_ENDPOINT=${JAEGER_ENDPOINT:-127.0.0.1:1} \
    OTLP_TLS_CERT_FILE=${OTLP_TLS_CERT_FILE:-/dev/null} OTLP_TLS_KEY_FILE=${OTLP_TLS_KEY_FILE:-/dev/null} \
    OTLP_TLS_CLIENT_CA_FILE=${OTLP_TLS_CLIENT_CA_FILE:-/dev/null} \
        "$bin" validate --config "${1:-$REPO/otel-collector/config.yaml}"
}

case "${1:-}" in
    build) build ;;
    start) start "${2:-}" ;;
    stop) stop_pidfile "${2:?usage: collector.sh stop DIR}" ;;
    env) cat "${2:?usage: collector.sh env DIR}/env" ;;
    validate) validate "${2:-}" ;;
    *) sed -n '2,44p' "$0" >&2; exit 2 ;;
esac
