#!/usr/bin/env bash
# kustomize.sh: prints a command line that renders a kustomization (append the directory),
# e.g. `kubectl kustomize` or `/var/cache/podtrail/bin/kustomize-v5.7.1`.
#   $(tests/harness/kustomize.sh) deploy/
# Uses kubectl when its embedded kustomize is v4 or newer (Debian's old kubernetes-client
# ships v2, which cannot render current bases); otherwise builds kustomize v5 with Go once
# into $PODTRAIL_CACHE/bin. KUSTOMIZE overrides the choice.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
KUSTOMIZE_VERSION=v5.7.1

if [ -n "${KUSTOMIZE:-}" ]; then echo "$KUSTOMIZE"; exit 0; fi
if command -v kubectl >/dev/null 2>&1; then
    v=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p' || true)
    if [ -n "$v" ] && [ "$v" -ge 4 ]; then echo "kubectl kustomize"; exit 0; fi
fi
BIN="$PODTRAIL_CACHE/bin/kustomize-$KUSTOMIZE_VERSION"
if [ ! -x "$BIN" ]; then
    build_lock kustomize
    if [ ! -x "$BIN" ]; then
        go=$(find_go)
        log "building kustomize $KUSTOMIZE_VERSION with Go"
        GOBIN="$PODTRAIL_CACHE/build/gobin" "$go" install \
            "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2 || die "kustomize build failed"
        mv "$PODTRAIL_CACHE/build/gobin/kustomize" "$BIN"
    fi
fi
echo "$BIN build"
