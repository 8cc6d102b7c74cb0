#!/usr/bin/env bash
# helm.sh: Helm v4 for the chart's tests (deploy/helm/podtrail), and cert-manager's CRDs to
# validate the chart's optional Certificates and Issuers against.
#
# Usage:
#   helm.sh build               Build (once) and print the helm binary's absolute path.
#   helm.sh cert-manager-crds   Download (once) cert-manager's Go module and print the absolute
#                               path of its deploy/crds directory (one CRD per file).
#
# Environment in:
#   PODTRAIL_CACHE   cache root (default /var/cache/podtrail); the binary is cached as
#                    $PODTRAIL_CACHE/bin/helm-v4.3.2, so a second call is instant.
#   HELM_BIN         use this binary instead of building one.
#   GO               Go toolchain to use (default /usr/local/go/bin/go, else PATH, else
#                    Debian's golang-go is installed).
#
# How: helm becomes a tool of a scratch module in $PODTRAIL_CACHE/build (as Jaeger is, jaeger.sh),
# so the requirements it was built with stay recorded in that go.mod; its version string,
# otherwise just "v4.3", is set with -X. ~3 minutes on 2 cores (6 beside a cargo build),
# 67 MB stripped.
# cert-manager's CRDs come from its module zip (github.com/cert-manager/cert-manager), which
# carries deploy/crds: no download outside the Go module proxy.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

HELM_VERSION=v4.3.2
CERT_MANAGER_VERSION=v1.21.2
BIN="$PODTRAIL_CACHE/bin/helm-$HELM_VERSION"

build() {
    if [ -n "${HELM_BIN:-}" ]; then echo "$HELM_BIN"; return; fi
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    build_lock "helm-$HELM_VERSION"
    if [ -x "$BIN" ]; then echo "$BIN"; return; fi
    local go src
    go=$(find_go)
    src="$PODTRAIL_CACHE/build/helm-$HELM_VERSION"
    mkdir -p "$src"
    log "building helm $HELM_VERSION with $go (~3 minutes on 2 cores; cached afterwards)"
    (
        cd "$src"
        [ -f go.mod ] || "$go" mod init podtrail.local/helm-build >&2
        GOWORK=off "$go" get -tool "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
        GOWORK=off CGO_ENABLED=0 "$go" build -trimpath \
            -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
            -o "$BIN.tmp" helm.sh/helm/v4/cmd/helm >&2
    ) || die "helm build failed"
    "$BIN.tmp" version --short | grep -q "^$HELM_VERSION" \
        || die "the built helm reports $("$BIN.tmp" version --short), not $HELM_VERSION"
    mv "$BIN.tmp" "$BIN"
    echo "$BIN"
}

cert_manager_crds() {
    local go dir
    go=$(find_go)
    dir=$(cd / && GOWORK=off GOFLAGS=-mod=mod "$go" mod download -json \
        "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
        || die "go mod download github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION failed"
    [ -d "$dir/deploy/crds" ] || die "no deploy/crds in $dir"
    ls "$dir"/deploy/crds/*certificates*.yaml >/dev/null 2>&1 \
        || die "no Certificate CRD in $dir/deploy/crds"
    echo "$dir/deploy/crds"
}

case "${1:-}" in
    build) build ;;
    cert-manager-crds) cert_manager_crds ;;
    *) echo "usage: helm.sh build | cert-manager-crds" >&2; exit 2 ;;
esac
