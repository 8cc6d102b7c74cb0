#!/usr/bin/env bash
# disk_check.sh: fails, with the figures, when the disk cannot hold what scripts/test.sh is
# about to build. Without it a short disk shows up half an hour later as a linker killed by
# SIGBUS or a Go build's "no space left on device", after the work is spent.
#
# What a run on a fresh machine wrote (measured 2026-12-07, `du -sm` at the end of a full
# scripts/test.sh from nothing):
#   Go module cache   4.4 GB  (GOMODCACHE, the backends' sources)
#   Go build cache    7.4 GB  (GOCACHE: Jaeger, the collector, Kubernetes, Tempo, helm)
#   target/           5.6 GB  (release build of every target, line tables only)
#   $PODTRAIL_CACHE   1.1 GB  (the built backends, images, the Python venv)
#   the rest          under 1 GB (containers' rootfs, the cluster's state, logs in /tmp)
# What is already there is subtracted, so a second run on the same machine needs little.
# PODTRAIL_DISK_CHECK_MB=N replaces the estimate (N megabytes), for a disk you know better.
set -euo pipefail
cd "$(dirname "$0")/.."
PODTRAIL_CACHE="${PODTRAIL_CACHE:-/var/cache/podtrail}"

TARGET_MB=6000
GO_MB=12000
CACHE_MB=1200
REST_MB=1500

# megabytes used under PATH (0 if absent)
used() { if [ -e "$1" ]; then du -sm "$1" 2>/dev/null | cut -f1; else echo 0; fi; }
# the nearest existing directory at or above PATH (what df and stat can ask about)
existing() { local p=$1; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; echo "$p"; }

gocache=${GOCACHE:-$HOME/.cache/go-build}
gomod=${GOMODCACHE:-${GOPATH:-$HOME/go}/pkg/mod}
# every Go-built backend already cached: the Go caches will not grow
go_built=1
for b in jaeger- otelcol-podtrail- tempo- helm- k8s-; do
    compgen -G "$PODTRAIL_CACHE/bin/$b*" >/dev/null || go_built=0
done

declare -A need=() where=()
add() { # add PATH MB: MB more will be written on PATH's filesystem
    local dir dev
    dir=$(existing "$1")
    dev=$(stat -c %d "$dir")
    need[$dev]=$(( ${need[$dev]:-0} + $2 ))
    where[$dev]=$dir
}
target=${CARGO_TARGET_DIR:-$PWD/target}
t=$(used "$target")
add "$target" $(( t < TARGET_MB ? TARGET_MB - t : 0 ))
if [ "$go_built" = 0 ]; then
    g=$(( $(used "$gocache") + $(used "$gomod") ))
    add "$gocache" $(( g < GO_MB ? GO_MB - g : 0 ))
fi
c=$(used "$PODTRAIL_CACHE")
add "$PODTRAIL_CACHE" $(( c < CACHE_MB ? CACHE_MB - c : 0 ))
add /tmp "$REST_MB"

status=0
for dev in "${!need[@]}"; do
    mb=${PODTRAIL_DISK_CHECK_MB:-${need[$dev]}}
    avail=$(df -Pm "${where[$dev]}" | awk 'NR == 2 { print $4 }')
    if [ "$avail" -lt "$mb" ]; then
        echo "disk_check: ${where[$dev]}'s filesystem has $avail MB free; this run will write about $mb MB there ($target holds $t MB now, Go backends cached: $([ "$go_built" = 1 ] && echo yes || echo no)); free space or point PODTRAIL_CACHE, GOCACHE, GOMODCACHE or CARGO_TARGET_DIR elsewhere" >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "disk_check: ok" >&2
exit "$status"
