#!/usr/bin/env bash
# tempo.sh: a real Grafana Tempo (single binary, local storage) for podtrail's tests, run with
# the repository's own grafana/stack/tempo.yaml so the tests exercise the shipped config.
#
# Usage:
#   tempo.sh build          Build (once) and print the binary's absolute path on stdout.
#   tempo.sh start DIR      Start Tempo; its config, data and log live in DIR; return once
#                           /ready answers 200.
#   tempo.sh stop DIR       Stop the Tempo started with DIR (no-op if not running).
#   tempo.sh env DIR        Print DIR/env (the lines below) again.
#
# Environment in:
#   PODTRAIL_CACHE       cache root (default /var/cache/podtrail); the binary is cached as
#                        $PODTRAIL_CACHE/bin/tempo-<pinned version>, so a rebuild is instant.
#   TEMPO_BIN            use this binary instead of building one.
#   TEMPO_CONFIG         base config (default grafana/stack/tempo.yaml of this repo).
#   TEMPO_OTLP_GRPC_PORT, TEMPO_OTLP_HTTP_PORT, TEMPO_HTTP_PORT
#                        fixed ports; each one unset gets a free port on 127.0.0.1 (so do
#                        Tempo's internal gRPC and memberlist ports).
#   TEMPO_START_TIMEOUT  seconds to wait for /ready (default 60).
#   GO                   Go toolchain (default /usr/local/go/bin/go, else PATH, else Debian's).
#
# Output of `start` (stdout, and the same lines in DIR/env, shell- and dotenv-compatible):
#   TEMPO_PID=<pid>
#   TEMPO_OTLP_GRPC=127.0.0.1:<port>         OTLP/gRPC receiver (no TLS)
#   TEMPO_OTLP_HTTP=http://127.0.0.1:<port>  OTLP/HTTP receiver (POST /v1/traces)
#   TEMPO_HTTP=http://127.0.0.1:<port>       HTTP API: /ready, /api/search?q=<TraceQL>&start=&end=,
#                                            /api/traces/<32 hex, no dashes>, /api/search/tags
# DIR also holds: pid, tempo.yaml (the config actually run), tempo.log, data/ (WAL, blocks,
# generator). `start` wipes DIR/data: every start begins with an empty Tempo.
#
# The config run = TEMPO_CONFIG with every path under /var/tempo moved to DIR/data, every
# listener on 127.0.0.1 at the ports above, and the settings of "Real Tempo here" in the field
# notes that make a test fast (see OVERLAY below). Nothing else of the shipped file changes, so
# a setting of the shipped file that real Tempo refuses fails `start`.
# Stop: SIGTERM, then SIGKILL after 3 s: after any query Tempo's SIGTERM hangs
# (upstream grafana/tempo#5733), and a test must not wait for it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
REPO=$(cd "$HERE/../.." && pwd)

# Tempo's module path has no /v2, so its v2 tags are not module versions; this pseudo-version
# (main of 2025-05-29, about Tempo 2.8) is one the Go module proxy serves.
TEMPO_VERSION=v1.5.1-0.20250529124718-87c2dc380cec
BIN="$PODTRAIL_CACHE/bin/tempo-$TEMPO_VERSION"

build() {
    if [ -n "${TEMPO_BIN:-}" ]; then echo "$TEMPO_BIN"; return; fi
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    build_lock "tempo-$TEMPO_VERSION"
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    local go src moddir
    go=$(find_go)
    src="$PODTRAIL_CACHE/build/tempo-$TEMPO_VERSION"
    log "building Tempo $TEMPO_VERSION with $go (~4 minutes on 2 cores, ~2 GB of modules; cached afterwards)"
    if [ ! -f "$src/go.mod" ]; then
        moddir=$(cd / && GOWORK=off GOFLAGS=-mod=mod "$go" mod download -json \
            "github.com/grafana/tempo@$TEMPO_VERSION" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
            || die "go mod download github.com/grafana/tempo@$TEMPO_VERSION failed"
        # Built as the main module, in a writable copy, so Tempo's own replace directives apply
        # (as a dependency of a scratch module they would be ignored and the build fails).
        rm -rf "$src.tmp"
        cp -r "$moddir" "$src.tmp"
        chmod -R u+w "$src.tmp"
        mv "$src.tmp" "$src"
    fi
    (cd "$src" && GOWORK=off CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" \
        -o "$BIN.tmp" ./cmd/tempo >&2) || die "Tempo build failed"
    mv "$BIN.tmp" "$BIN"
    echo "$BIN"
}

# render_config SRC OUT DATA: writes the config Tempo runs (see the header). Ports come from
# the environment variables P_* set by start.
render_config() {
    local py
    py=$("$HERE/pyenv.sh") # PyYAML; the standard library has no YAML parser
    "$py" - "$@" <<'PY'
import os, sys, yaml

src, out, data = sys.argv[1:4]
cfg = yaml.safe_load(open(src)) or {}
P = {k[2:]: int(v) for k, v in os.environ.items() if k.startswith("P_")}

def relocate(v):
    if isinstance(v, dict):
        return {k: relocate(x) for k, x in v.items()}
    if isinstance(v, list):
        return [relocate(x) for x in v]
    if isinstance(v, str) and (v == "/var/tempo" or v.startswith("/var/tempo/")):
        return data + v[len("/var/tempo"):]
    return v

def put(path, value):
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            sys.exit(f"tempo.sh: {path}: {k} is not a mapping in {src}")
    node[keys[-1]] = value

cfg = relocate(cfg)
# OVERLAY: loopback listeners on free ports (several Tempos may run at once) ...
put("server.http_listen_address", "127.0.0.1")
put("server.http_listen_port", P["HTTP"])
put("server.grpc_listen_address", "127.0.0.1")
put("server.grpc_listen_port", P["GRPC"])
put("distributor.receivers.otlp.protocols.grpc.endpoint", f"127.0.0.1:{P['OTLP_GRPC']}")
put("distributor.receivers.otlp.protocols.http.endpoint", f"127.0.0.1:{P['OTLP_HTTP']}")
put("memberlist.bind_addr", ["127.0.0.1"])
put("memberlist.bind_port", P["MEMBERLIST"])
put("memberlist.advertise_addr", "127.0.0.1")
put("memberlist.advertise_port", P["MEMBERLIST"])
# ... rings that would otherwise look for an address on eth0/en0 ...
put("ingester.lifecycler.address", "127.0.0.1")
put("metrics_generator.ring.instance_addr", "127.0.0.1")
put("compactor.ring.instance_addr", "127.0.0.1")
# ... ready at once (else /ready is 503 for 15 s), a trace searchable ~1 s after its last span
# (else ~10 s), and no traffic to Grafana's usage endpoint.
put("ingester.lifecycler.min_ready_duration", "0s")
put("ingester.trace_idle_period", "1s")
put("ingester.flush_check_period", "1s")
# The local-blocks processor (TraceQL metrics) holds a trace for its own idle period (10 s)
# before counting it: 1 s here too, so a metrics query sees a span as soon as search does.
put("metrics_generator.processor.local_blocks.trace_idle_period", "1s")
put("metrics_generator.processor.local_blocks.flush_check_period", "1s")
put("usage_report.reporting_enabled", False)
with open(out, "w") as f:
    f.write(f"# Generated by tests/harness/tempo.sh from {src}; do not edit.\n")
    yaml.safe_dump(cfg, f, sort_keys=False)
PY
}

start() {
    local dir=${1:?usage: tempo.sh start DIR}
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        cat "$dir/env"; return
    fi
    local bin src
    bin=$(build)
    src=${TEMPO_CONFIG:-$REPO/grafana/stack/tempo.yaml}
    [ -f "$src" ] || die "no Tempo config at $src"
    export P_OTLP_GRPC=${TEMPO_OTLP_GRPC_PORT:-$(free_port)}
    export P_OTLP_HTTP=${TEMPO_OTLP_HTTP_PORT:-$(free_port)}
    export P_HTTP=${TEMPO_HTTP_PORT:-$(free_port)}
    export P_GRPC=$(free_port) P_MEMBERLIST=$(free_port)
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    render_config "$src" "$dir/tempo.yaml" "$dir/data" || die "could not render $src"
    # setsid: own process group, so a test runner's Ctrl-C does not kill it half-way.
    setsid "$bin" -config.file="$dir/tempo.yaml" >"$dir/tempo.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    cat >"$dir/env" <<ENV
TEMPO_PID=$(cat "$dir/pid")
TEMPO_OTLP_GRPC=127.0.0.1:$P_OTLP_GRPC
TEMPO_OTLP_HTTP=http://127.0.0.1:$P_OTLP_HTTP
TEMPO_HTTP=http://127.0.0.1:$P_HTTP
ENV
    if ! wait_http "http://127.0.0.1:$P_HTTP/ready" "${TEMPO_START_TIMEOUT:-60}"; then
        tail -n 40 "$dir/tempo.log" >&2 || true
        stop "$dir"
        die "Tempo did not become ready (config: $dir/tempo.yaml, log: $dir/tempo.log)"
    fi
    cat "$dir/env"
}

stop() {
    local dir=${1:?usage: tempo.sh stop DIR} pid i
    [ -f "$dir/pid" ] || return 0
    pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 15); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "Tempo $pid ignored SIGTERM for 3 s (grafana/tempo#5733); killing it"
            kill -KILL "$pid" 2>/dev/null || true
            for i in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
    fi
    rm -f "$dir/pid"
}

case "${1:-}" in
    build) build ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    env) cat "${2:?usage: tempo.sh env DIR}/env" ;;
    *) sed -n '2,36p' "$0" >&2; exit 2 ;;
esac
