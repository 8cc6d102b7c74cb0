/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * podtrail.bpf.c: the one object user space loads. The concerns live in their own files; they
 * are compiled as one unit because they must share one ring buffer (global event order) and
 * one set of loss counters, and aya 0.14 cannot hand a map from one object to another.
 */
#include "process.bpf.c"
#include "net.bpf.c"
#include "ns.bpf.c"
#include "file.bpf.c"
#include "sock.bpf.c"
#include "uring.bpf.c"
#include "dns.bpf.c"
#include "tty.bpf.c"
#include "cgroup.bpf.c"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
