#!/usr/bin/env bash
# tests/image/compare.sh: proves the repository's Dockerfile and scripts/image.sh give the same
# image, so people with Docker and the tests (which have none) run the same files.
#
# Usage: tests/image/compare.sh [--binary PATH]     (default target/release/podtrail)
# 1. scripts/image.sh writes its OCI archive, and stages target/image/rootfs for the Dockerfile;
# 2. Debian's buildah builds the Dockerfile offline (FROM scratch: nothing to pull), vfs
#    storage and chroot isolation under a temporary root (the machine's container storage is
#    never touched), and exports it with `buildah push ... oci-archive:`;
# 3. both archives' layers are flattened and compared entry by entry: path, type, mode,
#    owner, size, sha256 of contents, link target; then Entrypoint, Cmd, Env, User, WorkingDir.
# Exit 0 when they agree; 1 with every difference listed otherwise. buildah is installed with
# apt-get when missing; if that fails the test fails (it never skips).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BINARY="$REPO/target/release/podtrail"
[ "${1:-}" = --binary ] && BINARY=${2:?--binary needs a path}
fail() { echo "tests/image/compare.sh: FAIL: $*" >&2; exit 1; }

if ! command -v buildah >/dev/null; then
    echo "tests/image/compare.sh: installing Debian's buildah" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2; } || true
    command -v buildah >/dev/null || fail "buildah is missing and apt-get could not install it"
fi
[ -x "$BINARY" ] || fail "no podtrail binary at $BINARY: run cargo build --release first"

work=$(mktemp -d)
# containers/image keeps a blob-info cache in /var/lib/containers/cache whatever --root says:
# remove it afterwards when this test is what created it.
[ -e /var/lib/containers ] && had_containers_dir=1 || had_containers_dir=0
B=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
cleanup() {
    "${B[@]}" rm --all >/dev/null 2>&1 || true
    "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$work"
    [ "$had_containers_dir" = 1 ] || rm -rf /var/lib/containers
}
trap cleanup EXIT
# Our own signature policy: the host's /etc/containers/policy.json may be absent or strict,
# and nothing here is pulled or signed.
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$work/policy.json"

"$REPO/scripts/image.sh" --binary "$BINARY" --ref podtrail.test/podtrail:compare \
    --out "$work/script.tar" >&2 || fail "scripts/image.sh failed"
"$REPO/scripts/image.sh" --binary "$BINARY" --stage "$REPO/target/image/rootfs" >/dev/null \
    || fail "scripts/image.sh --stage failed"
"${B[@]}" build --signature-policy "$work/policy.json" --isolation chroot --pull-never \
    --layers=false -f "$REPO/Dockerfile" -t localhost/podtrail:compare "$REPO" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log" >&2; fail "buildah build of the Dockerfile failed"; }
"${B[@]}" push --signature-policy "$work/policy.json" localhost/podtrail:compare \
    "oci-archive:$work/buildah.tar:podtrail:compare" >"$work/push.log" 2>&1 \
    || { cat "$work/push.log" >&2; fail "buildah push to an OCI archive failed"; }

python3 - "$work/script.tar" "$work/buildah.tar" <<'PY'
import hashlib, json, stat, sys, tarfile

def image(path):
    """(files, config) of an OCI archive: files maps path -> what the comparison checks,
    after applying every layer in order (whiteouts remove entries)."""
    outer = tarfile.open(path)
    def blob(digest):
        return outer.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
    index = json.load(outer.extractfile("index.json"))
    if len(index["manifests"]) != 1:
        sys.exit(f"{path}: expected one manifest, found {len(index['manifests'])}")
    manifest = json.load(blob(index["manifests"][0]["digest"]))
    config = json.load(blob(manifest["config"]["digest"]))
    files = {}
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=blob(layer["digest"]), mode="r|*") as t:
            for m in t:
                name = (m.name[2:] if m.name.startswith("./") else m.name).strip("/")
                if not name:
                    continue
                base = name.rsplit("/", 1)[-1]
                if base.startswith(".wh."):
                    files.pop(name[: -len(base)] + base[4:], None)
                    continue
                kind = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
                        tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}.get(m.type, repr(m.type))
                # buildah writes the file-type bits into the tar mode too: compare permissions only
                entry = {"type": kind, "mode": oct(stat.S_IMODE(m.mode)), "uid": m.uid, "gid": m.gid}
                if m.isreg():
                    entry["size"] = m.size
                    entry["sha256"] = hashlib.sha256(t.extractfile(m).read()).hexdigest()
                elif m.issym() or m.islnk():
                    entry["link"] = m.linkname
                files[name] = entry
    keys = ("Entrypoint", "Cmd", "Env", "User", "WorkingDir")
    return files, {k: config.get("config", {}).get(k) or None for k in keys}

(sf, sc), (bf, bc) = image(sys.argv[1]), image(sys.argv[2])
diffs = []
for p in sorted(set(sf) | set(bf)):
    if sf.get(p) != bf.get(p):
        diffs.append(f"  {p}:\n    image.sh:   {sf.get(p)}\n    Dockerfile: {bf.get(p)}")
for k in sc:
    if sc[k] != bc[k]:
        diffs.append(f"  config {k}: image.sh {sc[k]!r}, Dockerfile {bc[k]!r}")
if diffs:
    print("tests/image/compare.sh: FAIL: the two images differ:\n" + "\n".join(diffs), file=sys.stderr)
    sys.exit(1)
files = sum(1 for e in sf.values() if e["type"] == "file")
size = sum(e.get("size", 0) for e in sf.values())
print(f"tests/image/compare.sh: ok: {len(sf)} entries ({files} files, {size} bytes) and the "
      f"config {sc} are identical in both images")
PY
