#!/usr/bin/env bash
# image.sh: podtrail's container image, built without Docker or a registry.
#
# Usage:
#   scripts/image.sh [--dist] [--ref REF] [--binary PATH] [--out FILE]   build the OCI image archive
#   scripts/image.sh --stage DIR [--dist] [--binary PATH]                only stage its file tree in
#                                                                         DIR (what the Dockerfile COPYs)
# Defaults: REF podtrail:<version of Cargo.toml>, PATH target/release/podtrail (build it first:
# `cargo build --release`), FILE target/image/podtrail-<version>.oci.tar.
# --dist: the binary of a release to publish: builds Cargo.toml's `dist` profile (the release
# profile with fat LTO and one codegen unit: a smaller, whole-program optimised binary, but a
# build several times longer, so the tests and CI image the `--release` build instead) and
# uses target/dist/podtrail (BENCHMARKS.md, issue 15, export15: sizes and build times).
# Output: the archive's path and size on stdout (stage mode: the directory). Import it with
# `ctr -n k8s.io images import FILE` (or `docker load`/`podman load` of an OCI archive); for a
# kubelet use a qualified ref such as `--ref podtrail.test/podtrail:dev` (tests/harness/oci.py
# explains why).
#
# What the image holds, and nothing else:
#   /usr/local/bin/podtrail        the release binary without debug info (strip --strip-debug:
#                                  symbol names stay so a panic's backtrace stays readable):
#                                  ~33 MB against ~157 MB with the release profile's line tables
#                                  (--dist: smaller, see BENCHMARKS.md)
# The debug info is split off beside the archive, not shipped: FILE with `.debug` for
# `.oci.tar` (`objcopy --only-keep-debug`; the binary keeps its GNU build id, so
# `perf buildid-cache --add FILE.debug` or a copy under /usr/lib/debug/.build-id/ lets perf and
# gdb read a profile or a core of the shipped binary with line numbers).
#   the shared libraries `ldd` lists for it (glibc's loader, libc, libm, libgcc_s ...), copied
#   from this host at the same paths, with the host's /lib and /lib64 symlinks
#   /etc/ssl/certs/ca-certificates.crt  Debian's ca-certificates bundle, from the package's
#                                  files, not this host's bundle (which may hold local CAs);
#                                  the OTLP exporter may verify against system roots
#   /etc/passwd, /etc/group        root and nonroot (65532), the receiver's user
#   /etc/nsswitch.conf             files, then DNS: glibc reads it to resolve the collector's name
#   /tmp                           1777
#   /usr/share/doc/<package>/copyright  for each Debian package a shipped file comes from
# Config: ENTRYPOINT ["podtrail"] found on PATH (the manifests run `podtrail run ...`), USER
# 65532:65532 (the agent's DaemonSet sets runAsUser 0 itself), no shell.
# Same input, same archive: tests/harness/oci.py writes sorted entries with fixed owners and
# times. tests/image/compare.sh proves the Dockerfile at the repository root yields the same
# files and config.
set -euo pipefail
export LC_ALL=C # byte order for globs: the CA bundle must not depend on the locale
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)
[ -n "$VERSION" ] || { echo "image.sh: no version in Cargo.toml" >&2; exit 1; }

REF="podtrail:$VERSION"
BINARY="$REPO/target/release/podtrail"
OUT="$REPO/target/image/podtrail-$VERSION.oci.tar"
STAGE=""
DIST=0
BINARY_SET=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dist) DIST=1; shift ;;
        --ref) REF=${2:?--ref needs a value}; shift 2 ;;
        --binary) BINARY=${2:?--binary needs a value}; BINARY_SET=1; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --stage) STAGE=${2:?--stage needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
        *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "image.sh: error: $*" >&2; exit 1; }

if [ "$DIST" = 1 ]; then
    [ "$BINARY_SET" = 0 ] || die "--dist builds its own binary: give --dist or --binary, not both"
    # cargo's output goes to stderr: stdout stays the archive's path and size
    (cd "$REPO" && cargo build --profile dist --bin podtrail) || die "cargo build --profile dist failed"
    BINARY="$REPO/target/dist/podtrail"
fi

# The image's config, shared with the Dockerfile (tests/image/compare.sh checks they agree).
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
IMAGE_USER=65532:65532
IMAGE_ENTRYPOINT='["podtrail"]'

[ -x "$BINARY" ] || die "no binary at $BINARY: run cargo build --release first"
command -v strip >/dev/null || die "strip (binutils) is missing: apt-get install binutils"
ls /usr/share/ca-certificates/mozilla/*.crt >/dev/null 2>&1 \
    || die "Debian's CA certificates are missing: apt-get install ca-certificates"

stage() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs" "$dir/tmp"
    chmod 0755 "$dir" "$dir/usr" "$dir/usr/local" "$dir/usr/local/bin" "$dir/etc" \
        "$dir/etc/ssl" "$dir/etc/ssl/certs"
    chmod 1777 "$dir/tmp"
    strip --strip-debug -o "$dir/usr/local/bin/podtrail" "$BINARY"
    chmod 0755 "$dir/usr/local/bin/podtrail"
    # The bundle update-ca-certificates builds on a clean Debian host (every certificate of the
    # package, sorted, each ending in a newline), made here from the package's files: the
    # host's own /etc/ssl/certs/ca-certificates.crt also holds any CA the host added under
    # /usr/local/share/ca-certificates, which must not leak into an image others pull.
    local crt
    for crt in /usr/share/ca-certificates/mozilla/*.crt; do
        cat "$crt"
        [ -z "$(tail -c 1 "$crt")" ] || echo
    done >"$dir/etc/ssl/certs/ca-certificates.crt"
    chmod 0644 "$dir/etc/ssl/certs/ca-certificates.crt"
    printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >"$dir/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$dir/etc/group"
    printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$dir/etc/nsswitch.conf"
    chmod 0644 "$dir/etc/passwd" "$dir/etc/group" "$dir/etc/nsswitch.conf"

    # Shared libraries: exactly what the loader would map for this binary on this host. A
    # statically linked binary has none, and ldd says "not a dynamic executable".
    local libs
    libs=$(ldd "$BINARY" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^\s*\(\/[^ ]*\) (0x.*/\1/p') || true
    python3 - "$dir" $libs <<'PY'
import os, shutil, subprocess, sys

stage, libs = sys.argv[1], sys.argv[2:]
copied = []

def copy_path(p):
    """Copy host path p into the stage at the same path, recreating every symlink met on the
    way (Debian's /lib -> usr/lib), so the loader finds it where the binary's ELF header says."""
    parts = p.strip("/").split("/")
    cur = "/"
    for i, c in enumerate(parts):
        host = os.path.join(cur, c)
        dst = stage + host
        if os.path.islink(host):
            target = os.readlink(host)
            if not os.path.lexists(dst):
                os.symlink(target, dst)
            resolved = os.path.normpath(target if target.startswith("/") else os.path.join(cur, target))
            return copy_path("/".join([resolved] + parts[i + 1:]))
        if i == len(parts) - 1:
            shutil.copyfile(host, dst)
            os.chmod(dst, 0o755 if os.access(host, os.X_OK) else 0o644)
            copied.append(host)
        elif not os.path.isdir(dst):
            os.mkdir(dst)
            os.chmod(dst, 0o755)
        cur = host

for lib in libs:
    copy_path(lib)

# Licences: the copyright file of every Debian package a shipped file comes from.
pkgs = {"ca-certificates"}
for f in copied:
    out = subprocess.run(["dpkg", "-S", f], capture_output=True, text=True).stdout
    if not out:  # merged /usr: dpkg may know the file under /lib rather than /usr/lib
        alt = f.replace("/usr/lib/", "/lib/", 1)
        out = subprocess.run(["dpkg", "-S", alt], capture_output=True, text=True).stdout
    if not out:
        sys.exit(f"image.sh: no Debian package owns {f}; cannot ship its licence")
    pkgs.add(out.split(":")[0])
for pkg in sorted(pkgs):
    src = f"/usr/share/doc/{pkg}/copyright"
    if not os.path.isfile(src):
        sys.exit(f"image.sh: {src} is missing")
    for d in ("usr/share", "usr/share/doc", f"usr/share/doc/{pkg}"):
        os.makedirs(os.path.join(stage, d), mode=0o755, exist_ok=True)
        os.chmod(os.path.join(stage, d), 0o755)
    shutil.copyfile(src, os.path.join(stage, "usr/share/doc", pkg, "copyright"))
    os.chmod(os.path.join(stage, "usr/share/doc", pkg, "copyright"), 0o644)
PY
}

if [ -n "$STAGE" ]; then
    stage "$STAGE"
    echo "$STAGE"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage "$tmp/rootfs"
mkdir -p "$(dirname "$OUT")"
DEBUG="${OUT%.oci.tar}.debug"
objcopy --only-keep-debug "$BINARY" "$DEBUG"
python3 "$REPO/tests/harness/oci.py" --ref "$REF" --rootfs "$tmp/rootfs" \
    --entrypoint "$IMAGE_ENTRYPOINT" --env "PATH=$IMAGE_PATH" --user "$IMAGE_USER" \
    --out "$OUT" >/dev/null
size=$(stat -c %s "$OUT")
echo "$OUT"
echo "$REF: $size bytes ($(( (size + 524288) / 1048576 )) MiB compressed; $(du -sm --apparent-size "$tmp/rootfs" | cut -f1) MiB unpacked)"
echo "$DEBUG: the debug info, $(stat -c %s "$DEBUG") bytes (not in the image)"
