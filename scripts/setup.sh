#!/usr/bin/env bash
# setup.sh: installs what podtrail needs to build, run and be tested on a fresh Debian machine,
# and prepares the kernel filesystems it uses. Idempotent and quick when everything is there.
# Needs root (apt-get, mounts). Used by the README's two commands and by .ci/run.
set -euo pipefail

need_pkgs=()
want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$1"); }
# build: clang for the BPF object, libbpf-dev for bpf_helpers.h
want clang; want llvm; want libbpf-dev
# the linker Rust uses (cc), and a static libc for the flood test's connect program
want gcc; want libc6-dev
# tests: real containers (containerd + runc), a busybox rootfs, namespace tools, OTLP decoding
want containerd; want runc; want busybox-static; want util-linux; want iproute2
want python3; want python3-venv; want tcpdump; want bpftool; want libbpf-tools; want ca-certificates
# a real DNS server (destination names, tests/e2e_dns_names.rs): the binary only, no service
want dnsmasq-base
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: no Rust toolchain (cargo) found: install rustup's stable toolchain (1.87 or newer)" >&2
        exit 1
    fi
fi

# kernel filesystems the agent reads: tracefs (tracepoint ids), bpffs
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
echo "setup: ok" >&2
