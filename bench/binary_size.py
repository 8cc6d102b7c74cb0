#!/usr/bin/env python3
"""Where a podtrail binary's bytes go (BENCHMARKS.md, issue 15): file size, size without debug
info and without symbols, the big sections, and the function text grouped by crate.

Usage: python3 bench/binary_size.py [BINARY...]   (default target/release/podtrail)

Function symbols come from `nm --size-sort -C -S`; each is billed to the first crate its
demangled name names that is in a group below (so a serde_json function instantiated for a
podtrail type counts as serde_json's), else to std/core/alloc when it names only those.
Needs binutils (nm, size, strip)."""
import collections
import os
import re
import subprocess
import sys
import tempfile

GROUPS = {
    "podtrail's own code": ["podtrail"],
    "HTTP (h2, hyper, hyper-util, http, tower, axum, reqwest)": [
        "h2", "hyper", "hyper_util", "http", "http_body", "tower", "tower_http", "axum", "reqwest",
        "hyper_rustls", "hyper_timeout", "tower_layer", "axum_core", "matchit"],
    "Kubernetes client (kube-*, k8s-openapi, jsonpath-rust)": [
        "kube_client", "kube_runtime", "kube_core", "k8s_openapi", "jsonpath_rust", "kube"],
    "YAML (serde-saphyr, granit-parser, annotate-snippets; serde_norway)": [
        "serde_saphyr", "granit_parser", "annotate_snippets", "serde_norway", "unsafe_libyaml"],
    "serde, serde_json": ["serde", "serde_core", "serde_json", "serde_path_to_error", "serde_urlencoded"],
    "TLS (rustls, ring, webpki, x509-parser)": [
        "rustls", "ring", "webpki", "rustls_webpki", "x509_parser", "der_parser", "asn1_rs",
        "rustls_pki_types", "tokio_rustls", "rustls_native_certs"],
    "tokio": ["tokio", "tokio_util", "mio", "tokio_stream"],
    "OpenTelemetry, tonic, prost": [
        "opentelemetry", "opentelemetry_sdk", "opentelemetry_otlp", "opentelemetry_proto", "tonic",
        "prost", "tracing_opentelemetry", "tonic_prost"],
    "regex": ["regex", "regex_automata", "regex_syntax", "aho_corasick", "memchr"],
    "aya, object": ["aya", "aya_obj", "object"],
    "config and CLI (toml, toml_edit, clap)": [
        "toml", "toml_edit", "toml_datetime", "winnow", "clap", "clap_builder", "clap_lex",
        "toml_parser", "toml_writer"],
    "tracing, tracing-subscriber": ["tracing", "tracing_subscriber", "tracing_core", "sharded_slab"],
}
STD = "std, core, alloc, hashbrown (generic code named by no crate above)"
OWNER = {c: g for g, cs in GROUPS.items() for c in cs}
for c in ("std", "core", "alloc", "hashbrown"):
    OWNER[c] = STD


def sections(path):
    out = subprocess.run(["size", "-A", path], capture_output=True, text=True, check=True).stdout
    return {p[0]: int(p[1]) for p in (l.split() for l in out.splitlines()) if len(p) >= 2 and p[1].isdigit()}


def stripped(path, how):
    with tempfile.NamedTemporaryFile(delete=False) as t:
        name = t.name
    subprocess.run(["strip", how, "-o", name, path], check=True)
    n = os.path.getsize(name)
    os.unlink(name)
    return n


def crates(path):
    out = subprocess.run(["nm", "--size-sort", "-C", "-S", path], capture_output=True, text=True, check=True).stdout
    by = collections.Counter()
    total = 0
    for line in out.splitlines():
        p = line.split(" ", 3)
        if len(p) < 4 or p[2] not in "tTwW":
            continue
        size = int(p[1], 16)
        total += size
        names = re.findall(r"(?<![A-Za-z0-9_])([a-z_][a-z0-9_]*)::", p[3])
        group = next((OWNER[x] for x in names if OWNER.get(x) not in (None, STD)), None)
        if group is None:
            group = OWNER.get(names[0], "other") if names else "other"
        by[group] += size
    return total, by


def main():
    for path in sys.argv[1:] or ["target/release/podtrail"]:
        s = sections(path)
        debug = sum(v for k, v in s.items() if k.startswith(".debug"))
        print(f"{path}: {os.path.getsize(path):,} bytes, debug info {debug:,}; "
              f"strip --strip-debug {stripped(path, '--strip-debug'):,}; strip --strip-all {stripped(path, '--strip-all'):,}")
        print("  " + ", ".join(f"{k} {s.get(k, 0):,}" for k in (".text", ".rodata", ".eh_frame", ".gcc_except_table", ".data.rel.ro")))
        total, by = crates(path)
        print(f"  function text by crate ({total / 1e6:.2f} MB):")
        for g, n in by.most_common():
            print(f"  | {g} | {n / 1e6:.2f} MB | {100 * n / total:.0f}% |")


if __name__ == "__main__":
    main()
