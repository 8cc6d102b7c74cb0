#!/usr/bin/env bash
# jaeger.sh: a real Jaeger v2 (all-in-one, in-memory storage) for podtrail's tests.
#
# Usage:
#   jaeger.sh build          Build (once) and print the binary's absolute path on stdout.
#   jaeger.sh start DIR      Start Jaeger; write its state into DIR; return once healthy.
#   jaeger.sh stop DIR       Stop the Jaeger started with DIR (no-op if not running).
#   jaeger.sh env DIR        Print DIR/env (the lines below) again.
#
# Environment in:
#   PODTRAIL_CACHE       cache root (default /var/cache/podtrail); the binary is cached as
#                        $PODTRAIL_CACHE/bin/jaeger-1.76.0, so a rebuild is instant.
#   JAEGER_BIN           use this binary instead of building one.
#   JAEGER_OTLP_GRPC_PORT, JAEGER_OTLP_HTTP_PORT, JAEGER_QUERY_PORT, JAEGER_HEALTH_PORT
#                        fixed ports; each one unset gets a free port on 127.0.0.1.
#   JAEGER_START_TIMEOUT seconds to wait for health (default 60).
#   GO                   Go toolchain to use (default /usr/local/go/bin/go, else PATH, else
#                        Debian's golang-go is installed).
#
# Output of `start` (stdout, and the same lines in DIR/env, shell- and dotenv-compatible):
#   JAEGER_PID=<pid>
#   JAEGER_OTLP_GRPC=127.0.0.1:<port>      OTLP/gRPC receiver (no TLS)
#   JAEGER_OTLP_HTTP=http://127.0.0.1:<port>   OTLP/HTTP receiver (POST /v1/traces)
#   JAEGER_QUERY=http://127.0.0.1:<port>   query API: /api/services, /api/traces?service=..,
#                                          /api/traces/<trace id hex>
#   JAEGER_HEALTH=http://127.0.0.1:<port>/status   health check
# DIR also holds: pid, config.yaml, jaeger.log (stdout+stderr of the daemon).
# Data lives in memory only: stop+start loses everything (tests rely on that to be clean).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

JAEGER_VERSION=1.76.0
BIN="$PODTRAIL_CACHE/bin/jaeger-$JAEGER_VERSION"

build() {
    if [ -n "${JAEGER_BIN:-}" ]; then echo "$JAEGER_BIN"; return; fi
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    build_lock "jaeger-$JAEGER_VERSION"
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    local go src
    go=$(find_go)
    src="$PODTRAIL_CACHE/build/jaeger-$JAEGER_VERSION"
    mkdir -p "$src"
    log "building Jaeger $JAEGER_VERSION with $go (several minutes on 2 cores; cached afterwards)"
    (
        cd "$src"
        [ -f go.mod ] || "$go" mod init podtrail.local/jaeger-build >&2
        # go install pkg@version refuses modules with replace directives: make Jaeger a tool
        # of this scratch module so its requirements are resolved here instead.
        "$go" get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@v$JAEGER_VERSION" >&2
        "$go" build -trimpath -o "$BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
    ) || die "Jaeger build failed"
    mv "$BIN.tmp" "$BIN"
    echo "$BIN"
}

start() {
    local dir=${1:?usage: jaeger.sh start DIR}
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        cat "$dir/env"; return
    fi
    local bin grpc http query health
    bin=$(build)
    grpc=${JAEGER_OTLP_GRPC_PORT:-$(free_port)}
    http=${JAEGER_OTLP_HTTP_PORT:-$(free_port)}
    query=${JAEGER_QUERY_PORT:-$(free_port)}
    health=${JAEGER_HEALTH_PORT:-$(free_port)}
    # Jaeger v2 is an OpenTelemetry Collector distribution: this is its all-in-one
    # configuration with every listener moved to loopback ports of our choosing, and its own
    # telemetry's metrics endpoint off (it would take the fixed port 8888).
    cat >"$dir/config.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    logs:
      level: info
    metrics:
      level: none
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:$health
  jaeger_query:
    # Off: Jaeger would otherwise trace itself to localhost:4317, which in a test may be
    # another test's collector, and it stalls 10 s at shutdown flushing to nobody.
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$query
    grpc:
      endpoint: 127.0.0.1:$(free_port)
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$grpc
      http:
        endpoint: 127.0.0.1:$http
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
    # setsid: the daemon gets its own process group, so a test runner's Ctrl-C does not
    # kill it half-way and `stop` remains the one way to end it.
    setsid "$bin" --config "$dir/config.yaml" >"$dir/jaeger.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    cat >"$dir/env" <<ENV
JAEGER_PID=$(cat "$dir/pid")
JAEGER_OTLP_GRPC=127.0.0.1:$grpc
JAEGER_OTLP_HTTP=http://127.0.0.1:$http
JAEGER_QUERY=http://127.0.0.1:$query
JAEGER_HEALTH=http://127.0.0.1:$health/status
ENV
    if ! wait_http "http://127.0.0.1:$health/status" "${JAEGER_START_TIMEOUT:-60}" \
        || ! wait_http "http://127.0.0.1:$query/api/services" 10; then
        tail -n 40 "$dir/jaeger.log" >&2 || true
        stop_pidfile "$dir"
        die "Jaeger did not become healthy (log: $dir/jaeger.log)"
    fi
    cat "$dir/env"
}

case "${1:-}" in
    build) build ;;
    start) start "${2:-}" ;;
    stop) stop_pidfile "${2:?usage: jaeger.sh stop DIR}" ;;
    env) cat "${2:?usage: jaeger.sh env DIR}/env" ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
