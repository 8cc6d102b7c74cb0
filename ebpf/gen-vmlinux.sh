#!/bin/sh
# Regenerates ebpf/vmlinux.h from a running kernel's BTF. The committed copy was made on
# Linux 6.18 (x86_64); CO-RE relocations make the object portable to other kernels, so this
# only needs re-running when a program starts using a type or field that kernel lacks.
set -eu
bpftool btf dump file "${1:-/sys/kernel/btf/vmlinux}" format c > "$(dirname "$0")/vmlinux.h"
