# Shared helpers for tests/harness/*.sh. Sourced, not executed.
# Why: jaeger.sh and collector.sh build Go binaries once into a cache and run them as
# background daemons on free loopback ports; the plumbing is the same for both.

PODTRAIL_CACHE="${PODTRAIL_CACHE:-/var/cache/podtrail}"
export PODTRAIL_CACHE

log() { echo "[$(basename "$0")] $*" >&2; }
die() { log "error: $*"; exit 1; }

# find_go: prints a Go >= 1.24.6 toolchain, installing Debian's golang-go as a last resort.
find_go() {
    local g
    for g in "${GO:-}" /usr/local/go/bin/go "$(command -v go 2>/dev/null)" /usr/lib/go/bin/go; do
        [ -n "$g" ] && [ -x "$g" ] || continue
        if "$g" version >/dev/null 2>&1; then echo "$g"; return 0; fi
    done
    log "no Go toolchain found; installing Debian's golang-go"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >&2 \
        || die "could not install Go"
    # Debian's Go may be older than Jaeger/collector need: GOTOOLCHAIN=auto fetches a newer
    # toolchain as a Go module from the module proxy.
    export GOTOOLCHAIN=auto
    command -v go
}

# free_port: an unused TCP port on 127.0.0.1 (bound and released by the kernel's allocator).
free_port() {
    python3 - <<'PY' 2>/dev/null || { echo $((20000 + RANDOM % 20000)); }
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# wait_http URL SECONDS: 0 once URL answers 200, 1 after SECONDS.
wait_http() {
    local url=$1 secs=${2:-60} i=0
    while [ "$i" -lt $((secs * 5)) ]; do
        if python3 - "$url" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1).read()
PY
        then return 0; fi
        sleep 0.2; i=$((i + 1))
    done
    return 1
}

# stop_pidfile DIR: stop the daemon whose pid is in DIR/pid (TERM, then KILL after 10 s).
stop_pidfile() {
    local dir=$1 pid i
    [ -f "$dir/pid" ] || return 0
    pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        for i in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$dir/pid"
}

# build_lock NAME: serialise concurrent builds of the same binary (several test suites may
# call build at once in CI); holds an flock on fd 9 until the calling script exits.
build_lock() {
    mkdir -p "$PODTRAIL_CACHE/bin" "$PODTRAIL_CACHE/build"
    exec 9>"$PODTRAIL_CACHE/build/$1.lock"
    flock 9
}
