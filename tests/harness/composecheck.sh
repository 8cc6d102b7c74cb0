#!/usr/bin/env bash
# composecheck.sh: validate Compose files against the Compose Specification schema and the
# Compose loader's rules, with compose-spec/compose-go v2 (the library Docker Compose uses;
# its schema package embeds compose-spec.json). No Docker engine needed.
#
# Usage:
#   composecheck.sh build              build (once per source hash); print the binary path
#   composecheck.sh [-schema-only] [-print] FILE...   exit 0 if all valid, 1 with reasons
# Environment: PODTRAIL_CACHE (default /var/cache/podtrail), GO.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
SRC="$HERE/composecheck"

build() {
    local h bin go
    h=$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-12)
    bin="$PODTRAIL_CACHE/bin/composecheck-$h"
    if [ -x "$bin" ]; then echo "$bin"; return; fi
    build_lock composecheck
    if [ ! -x "$bin" ]; then
        go=$(find_go)
        log "building composecheck (compose-go) with $go"
        (cd "$SRC" && GOFLAGS=-mod=mod "$go" build -o "$bin.tmp" .) >&2 || die "composecheck build failed"
        mv "$bin.tmp" "$bin"
    fi
    echo "$bin"
}

case "${1:-}" in
    build) build ;;
    "") sed -n '2,11p' "$0" >&2; exit 2 ;;
    *) bin=$(build); exec "$bin" "$@" ;;
esac
