#!/usr/bin/env python3
"""oci.py: write a one-layer OCI image archive from a directory, with no Docker and no registry.

Usage:
  oci.py --ref NAME:TAG --rootfs DIR [--entrypoint JSON_ARRAY] [--cmd JSON_ARRAY]
         [--env K=V ...] [--workdir DIR] [--user UID:GID] [--no-gzip] --out FILE.tar

In:  DIR, the image's root file system (files, directories, symlinks, hard links; owners are
     ignored, every entry is written as uid/gid 0; modes and setuid bits are kept).
Out: FILE.tar, an OCI image layout (oci-layout, index.json, blobs/sha256/...) holding one
     layer (gzip unless --no-gzip), the image config (linux/amd64) and the manifest. The
     manifest's descriptor in index.json carries `org.opencontainers.image.ref.name` = the ref
     exactly as given. stdout: one line, the manifest digest.
Import: `ctr -n k8s.io images import FILE.tar` lists it under that ref. The kubelet (CRI)
     looks images up by their normalised name, so for pods pass a qualified ref
     (`docker.io/library/busybox:1.36`, `podtrail.test/podtrail:dev`), which a pod spec may
     then name as `busybox:1.36` / `podtrail.test/podtrail:dev` with imagePullPolicy: Never.
Deterministic: sorted entries, mtime 0, no user/group names, gzip header mtime 0, no
     `created` time in the config; the same DIR and options give the same digests.
Refused (exit 2): sockets, devices and FIFOs in DIR (an image layer may hold them, but none
     of our images needs them and silently dropping them would hide a mistake).
Python standard library only, so it runs before any venv exists.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import tempfile

MT_LAYOUT = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


class Refused(Exception):
    pass


def walk(root, rel=""):
    """Yields (relative path, absolute path) for every entry under root, depth first, each
    directory's entries in byte order of their names, without following symlinks."""
    absdir = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(absdir), key=os.fsencode):
        r = f"{rel}/{name}" if rel else name
        a = os.path.join(absdir, name)
        yield r, a
        if stat.S_ISDIR(os.lstat(a).st_mode):
            yield from walk(root, r)


def tarinfo(name, st, kind):
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    ti.type = kind
    return ti


def write_layer(rootfs, out):
    """Writes the uncompressed layer tar of rootfs into the binary file out."""
    seen_inodes = {}  # (dev, ino) -> first path: later names become hard links, not copies
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in walk(rootfs):
            st = os.lstat(path)
            m = st.st_mode
            if stat.S_ISDIR(m):
                tar.addfile(tarinfo(rel + "/", st, tarfile.DIRTYPE))
            elif stat.S_ISLNK(m):
                ti = tarinfo(rel, st, tarfile.SYMTYPE)
                ti.mode = 0o777
                ti.linkname = os.readlink(path)
                tar.addfile(ti)
            elif stat.S_ISREG(m):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    ti = tarinfo(rel, st, tarfile.LNKTYPE)
                    ti.linkname = seen_inodes[key]
                    tar.addfile(ti)
                    continue
                seen_inodes[key] = rel
                ti = tarinfo(rel, st, tarfile.REGTYPE)
                ti.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(ti, f)
            else:
                raise Refused(f"{path}: not a file, directory or symlink (mode {oct(m)})")


def digest_file(f):
    h = hashlib.sha256()
    f.seek(0)
    size = 0
    while True:
        b = f.read(CHUNK)
        if not b:
            break
        h.update(b)
        size += len(b)
    f.seek(0)
    return "sha256:" + h.hexdigest(), size


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def json_array(s, flag):
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise Refused(f"{flag}: not JSON: {e}")
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise Refused(f"{flag}: must be a JSON array of strings, got {s!r}")
    return v


def build(args):
    if not os.path.isdir(args.rootfs):
        raise Refused(f"--rootfs {args.rootfs}: not a directory")
    if ":" not in args.ref.rsplit("/", 1)[-1] and "@" not in args.ref:
        raise Refused(f"--ref {args.ref}: want NAME:TAG")
    for e in args.env:
        if "=" not in e:
            raise Refused(f"--env {e}: want K=V")

    with tempfile.TemporaryFile() as raw, tempfile.TemporaryFile() as gz:
        write_layer(args.rootfs, raw)
        diff_id, _ = digest_file(raw)
        if args.no_gzip:
            layer, layer_mt = raw, MT_LAYER
        else:
            # mtime=0 and no file name in the gzip header keep the digest reproducible
            with gzip.GzipFile(filename="", mode="wb", fileobj=gz, compresslevel=6, mtime=0) as z:
                while True:
                    b = raw.read(CHUNK)
                    if not b:
                        break
                    z.write(b)
            layer, layer_mt = gz, MT_LAYER_GZ
        layer_digest, layer_size = digest_file(layer)

        cfg = {}
        if args.entrypoint is not None:
            cfg["Entrypoint"] = json_array(args.entrypoint, "--entrypoint")
        if args.cmd is not None:
            cfg["Cmd"] = json_array(args.cmd, "--cmd")
        if args.env:
            cfg["Env"] = list(args.env)
        if args.workdir:
            cfg["WorkingDir"] = args.workdir
        if args.user:
            cfg["User"] = args.user
        config = canonical({
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/harness/oci.py", "comment": args.ref}],
        })
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = canonical({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": layer_mt, "digest": layer_digest, "size": layer_size}],
        })
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = canonical({
            "schemaVersion": 2,
            "mediaType": MT_LAYOUT,
            "manifests": [{
                "mediaType": MT_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {REF_NAME: args.ref},
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
        })

        tmp_out = args.out + ".tmp"
        with open(tmp_out, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                      format=tarfile.PAX_FORMAT) as t:
            def add_bytes(name, data):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
                t.addfile(ti, io.BytesIO(data))

            def add_dir(name):
                ti = tarfile.TarInfo(name)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                t.addfile(ti)

            add_bytes("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
            add_bytes("index.json", index)
            add_dir("blobs/")
            add_dir("blobs/sha256/")
            add_bytes("blobs/sha256/" + config_digest[7:], config)
            add_bytes("blobs/sha256/" + manifest_digest[7:], manifest)
            ti = tarfile.TarInfo("blobs/sha256/" + layer_digest[7:])
            ti.size, ti.mode, ti.mtime = layer_size, 0o644, 0
            layer.seek(0)
            t.addfile(ti, layer)
        os.replace(tmp_out, args.out)
    return manifest_digest


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="NAME:TAG, written as the ref.name annotation")
    p.add_argument("--rootfs", required=True, help="directory that becomes the layer")
    p.add_argument("--entrypoint", help='JSON array, e.g. ["/podtrail"]')
    p.add_argument("--cmd", help="JSON array")
    p.add_argument("--env", action="append", default=[], help="K=V (repeatable)")
    p.add_argument("--workdir")
    p.add_argument("--user", help="UID[:GID]")
    p.add_argument("--no-gzip", action="store_true", help="store the layer uncompressed")
    p.add_argument("--out", required=True, help="archive to write (replaced atomically)")
    args = p.parse_args()
    try:
        print(build(args))
    except (Refused, OSError) as e:
        print(f"oci.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
