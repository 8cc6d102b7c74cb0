/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * common.h: maps, settings and helpers shared by every podtrail program. There is one ring
 * buffer for all event kinds so that events stay globally ordered (a fork is always read
 * before the child's exec).
 */
#ifndef PODTRAIL_COMMON_H
#define PODTRAIL_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "podtrail.h"

/* Settings written by user space before load (EbpfLoader::set_global). */
/* Anchors podtrail.h's enums in the object's BTF: a type reaches BTF only through something
 * that uses it, and user space reads the enums' values from there to compare them with its
 * mirror (src/capture/btf.rs). Never read by a program. */
struct pt_abi_enums {
	enum pt_abi abi;
	enum pt_kind kind;
	enum pt_limits limits;
	enum pt_exec_flags exec_flags;
	enum pt_exec_slots exec_slots;
	enum pt_result_phase result_phase;
	enum pt_file_op file_op;
	enum pt_file_flags file_flags;
	enum pt_file_limits file_limits;
	enum pt_filter_mode filter_mode;
	enum pt_inflight inflight;
	enum pt_sock_op sock_op;
	enum pt_dns_limits dns_limits;
	enum pt_dns_flags dns_flags;
	enum pt_tty_flags tty_flags;
	enum pt_tty_limits tty_limits;
	enum pt_cgroup_limits cgroup_limits;
	enum pt_cgroup_flags cgroup_flags;
};
const volatile struct pt_abi_enums pt_abi_anchor = { .abi = PT_ABI_VERSION };

const volatile __u32 filter_mode = PT_FILTER_ALL;
const volatile __u32 host_pidns_ino = 0;    /* the host's pid namespace: filter reference */
const volatile __u32 self_tgid = 0;         /* podtrail itself: never traced */
const volatile __u32 scan_env = 1;          /* look for KUBERNETES_EXEC_AUDIT_ID */
const volatile __u64 wakeup_bytes = 256 * 1024; /* wake the reader once this much is queued */
/* Each cgroup's fair share of the ring (see emit): bytes of network records per window once
 * the ring is half full; 0 turns the share off. */
const volatile __u64 cgroup_share_bytes = 0;
const volatile __u64 cgroup_share_window_ns = 100 * 1000 * 1000;
/* The kinds user space asked for, one bit per enum pt_kind (`podtrail capture --kinds`): a
 * record of another kind is never written, so the reader neither wakes for it nor decodes it.
 * Not a loss: neither sent nor dropped is counted. */
const volatile __u32 kind_mask = 0xffffffff;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024); /* resized by user space before load */
} events SEC(".maps");

/* Failed ring buffer writes, per event kind (index) and per cgroup. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PT_KIND_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops_by_kind SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pt_cgroup_drops);
} drops_by_cgroup SEC(".maps");

/* Records refused because their cgroup was over its share of a filling ring, per kind (also
 * counted in drops_by_kind and drops_by_cgroup: they are lost events of that cgroup). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PT_KIND_MAX);
	__type(key, __u32);
	__type(value, __u64);
} refused_by_kind SEC(".maps");

/* Network record bytes each cgroup wrote in its current window. Kernel-only state. */
struct cgroup_share {
	__u64 window_start_ns;
	__u64 bytes;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct cgroup_share);
} share_by_cgroup SEC(".maps");

/* Records written, per event kind: with drops_by_kind, the loss ratio. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PT_KIND_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sent_by_kind SEC(".maps");

/* In-flight entries started and finished, per map (enum pt_inflight). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PT_INFLIGHT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} inflight SEC(".maps");

static __always_inline void inflight_count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&inflight, &what);
	if (n)
		(*n)++;
}

/* cgroups user space asked to trace in PT_FILTER_CONTAINERS mode (hostPID containers). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} traced_cgroups SEC(".maps");

#define PT_NAME_READ 256 /* bytes read per path component or environment string */

/* Scratch space for building an exec record too big for the BPF stack. The first
 * PT_EXEC_MAX_LEN bytes are the record as it is sent: its fixed part, then its variable parts
 * packed (podtrail.h). Past them, each variable part is first read into a slot of its own at a
 * fixed offset (PT_BUILD_*: not part of the ABI), whose length is known only afterwards; then
 * it is copied behind the previous part. Reading straight to a packed offset would put every
 * path walk at an offset that depends on the walks before it. */
#define PT_BUILD_FILENAME PT_EXEC_MAX_LEN
#define PT_BUILD_INTERP (PT_BUILD_FILENAME + PT_FILENAME_MAX)
#define PT_BUILD_EXE_PATH (PT_BUILD_INTERP + PT_INTERP_MAX)
#define PT_BUILD_AUDIT_ID (PT_BUILD_EXE_PATH + PT_EXE_PATH_MAX)
#define PT_BUILD_CWD (PT_BUILD_AUDIT_ID + PT_AUDIT_ID_MAX)
#define PT_BUILD_ENV (PT_BUILD_CWD + PT_CWD_MAX) /* one environment string being searched */
#define PT_SCRATCH_LEN (PT_BUILD_ENV + PT_NAME_READ)
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[PT_SCRATCH_LEN]);
} scratch SEC(".maps");

/* Anchors every record type in the object's BTF, so the ABI test can read each layout back
 * from the compiled file (clang only writes BTF for types that maps, globals or function
 * signatures use). One entry, never written. */
struct pt_abi_anchor {
	struct pt_header header;
	struct pt_exec exec;
	struct pt_fork fork;
	struct pt_exit exit;
	struct pt_ns_join ns_join;
	struct pt_connect connect;
	struct pt_connect_result connect_result;
	struct pt_udp_send udp_send;
	struct pt_cgroup_drops cgroup_drops;
	struct pt_file file;
	struct pt_sock sock;
	struct pt_dns dns;
	struct pt_tty tty;
	struct pt_cgroup_mkdir cgroup_mkdir;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pt_abi_anchor);
} abi_anchor SEC(".maps");

static __always_inline void count(void *map, __u32 kind)
{
	__u64 *n = bpf_map_lookup_elem(map, &kind);
	if (n)
		*n += 1;
}

static __always_inline void count_drop(__u32 kind, __u64 cgroup_id, __u64 ts)
{
	count(&drops_by_kind, kind);
	struct pt_cgroup_drops *d = bpf_map_lookup_elem(&drops_by_cgroup, &cgroup_id);
	if (d) {
		__sync_fetch_and_add(&d->events, 1);
		d->last_ts_ns = ts;
	} else {
		struct pt_cgroup_drops init = { .events = 1, .last_ts_ns = ts };
		bpf_map_update_elem(&drops_by_cgroup, &cgroup_id, &init, BPF_NOEXIST);
	}
}

/* Set by user space (src/capture/reader.rs) while the reader, having found the ring empty,
 * sleeps on its descriptor instead of draining it every poll interval. One u32 entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} reader_parked SEC(".maps");

/* Batch wakeups: a wakeup per event costs user space ~10x the event itself. While records
 * flow the reader drains on a short timer and is woken only when wakeup_bytes are queued. A
 * parked reader (idle: no timer) is woken by the first record (the default flag wakes a
 * reader that has caught up), so an idle node costs no polls and a lone record waits for
 * none. */
static __always_inline __u64 wakeup_flag(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	__u32 zero = 0;
	__u32 *parked = bpf_map_lookup_elem(&reader_parked, &zero);
	return parked && *parked ? 0 : BPF_RB_NO_WAKEUP;
}

/* The ring is shared by every container, so one container's flood of connects would leave no
 * room for another's exec, fork and exit records (and its session would lose events). Network
 * and file records (connects, their results, datagrams, accepts, watched-file operations,
 * io_uring submissions and DNS answers) are what a flood is made of, and so are cgroup
 * mkdirs (cgroup.bpf.c): each
 * cgroup may write cgroup_share_bytes of them per
 * window, counted always and enforced only while the ring is at least half full. What is over
 * is refused and counted as that cgroup's loss (its sessions are marked). Process records are
 * never refused here: without them sessions would not end. */
static __always_inline bool over_share(struct pt_header *h, __u64 size)
{
	if (cgroup_share_bytes == 0)
		return false;
	/* datagrams, accepts and raw sockets (PT_KIND_SOCK) flood like connects do; so do file
	 * records (a loop over a watched file, io_uring submissions), 1.6 KB each, and cgroup
	 * mkdirs (a container with a delegated subtree creating nested cgroups in a loop) */
	if (h->kind != PT_KIND_CONNECT && h->kind != PT_KIND_CONNECT_RESULT && h->kind != PT_KIND_UDP_SEND &&
	    h->kind != PT_KIND_SOCK && h->kind != PT_KIND_FILE && h->kind != PT_KIND_DNS &&
	    h->kind != PT_KIND_CGROUP_MKDIR)
		return false;
	__u64 cg = h->cgroup_id;
	struct cgroup_share *s = bpf_map_lookup_elem(&share_by_cgroup, &cg);
	if (!s) {
		struct cgroup_share init = { .window_start_ns = h->ts_ns, .bytes = size };
		bpf_map_update_elem(&share_by_cgroup, &cg, &init, BPF_ANY);
		return false;
	}
	if (h->ts_ns - s->window_start_ns >= cgroup_share_window_ns) {
		s->window_start_ns = h->ts_ns;
		s->bytes = 0;
	}
	__u64 used = __sync_fetch_and_add(&s->bytes, size);
	if (used + size <= cgroup_share_bytes)
		return false;
	__u64 queued = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 ring = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	return queued * 2 >= ring;
}

/* Write a record (its header's kind and len already set) or count its loss. */
static __always_inline int emit(void *rec, __u64 size)
{
	struct pt_header *h = rec;
	if (h->kind < 32 && !(kind_mask & (1U << h->kind)))
		return 0;
	if (over_share(h, size)) {
		count(&refused_by_kind, h->kind);
		count_drop(h->kind, h->cgroup_id, h->ts_ns);
		return -1;
	}
	if (bpf_ringbuf_output(&events, rec, size, wakeup_flag()) != 0) {
		count_drop(h->kind, h->cgroup_id, h->ts_ns);
		return -1;
	}
	count(&sent_by_kind, h->kind);
	return 0;
}

static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

static __always_inline struct upid *task_upid(struct task_struct *t)
{
	struct pid *p = BPF_CORE_READ(t, thread_pid);
	unsigned int level = BPF_CORE_READ(p, level);
	return &p->numbers[level];
}

static __always_inline __u32 task_pidns_ino(struct task_struct *t)
{
	struct upid *u = task_upid(t);
	struct pid_namespace *ns = BPF_CORE_READ(u, ns);
	return BPF_CORE_READ(ns, ns.inum);
}

static __always_inline __u32 task_nspid(struct task_struct *t)
{
	struct upid *u = task_upid(t);
	return BPF_CORE_READ(u, nr);
}

static __always_inline __u64 task_start_ns(struct task_struct *t)
{
	return BPF_CORE_READ(t, group_leader, start_boottime);
}

/* Should this process be reported at all? */
static __always_inline bool traced(struct task_struct *t, __u32 tgid, __u32 pidns_ino, __u64 cgid)
{
	if (tgid == self_tgid)
		return false;
	if (filter_mode == PT_FILTER_ALL)
		return true;
	if (pidns_ino != host_pidns_ino)
		return true;
	return bpf_map_lookup_elem(&traced_cgroups, &cgid) != NULL;
}

static __always_inline void fill_header(struct pt_header *h, __u32 kind, __u32 len,
					struct task_struct *t, __u64 cgroup_id)
{
	h->kind = kind;
	h->len = len;
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->pid = BPF_CORE_READ(t, tgid);
	h->tid = BPF_CORE_READ(t, pid);
	h->start_ns = task_start_ns(t);
	h->cgroup_id = cgroup_id;
}

#define PT_PATH_DEPTH 32

/*
 * Resolve a path (dentry, mount) by walking dentries to the root of its mount, crossing
 * mounts upwards. Components are written leaf first, each NUL-terminated; user space reverses
 * them. For a file in a container the walk stops at the container's root mount, so the path
 * is the one seen inside the container. `max` must be a power of two (a constant after
 * inlining): masking the offset with it keeps every path's offset in one range, which lets
 * the verifier prune. Sets *cut when the path was too deep or too long.
 */
static __always_inline __u32 resolve_path(__u8 *out, struct dentry *d, struct vfsmount *vmnt, __u32 max, bool *cut)
{
	struct mount *mnt = container_of(vmnt, struct mount, mnt);
	__u32 off = 0;
	bool done = false;

	for (int i = 0; i < PT_PATH_DEPTH; i++) {
		struct dentry *mnt_root = BPF_CORE_READ(vmnt, mnt_root);
		struct dentry *parent = BPF_CORE_READ(d, d_parent);
		if (d == mnt_root) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
			if (up == mnt) {
				done = true;
				break;
			}
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vmnt = &up->mnt;
			continue;
		}
		if (off >= max - PT_NAME_READ)
			break;
		const unsigned char *name = BPF_CORE_READ(d, d_name.name);
		long n = bpf_probe_read_kernel_str(out + off, PT_NAME_READ, name);
		if (n <= 0) {
			done = true;
			break;
		}
		off = (off + n) & (max - 1);
		if (d == parent) {
			/* a pseudo file (memfd, anonymous inode): its name is all there is */
			done = true;
			break;
		}
		d = parent;
	}
	if (!done)
		*cut = true;
	return off;
}

#endif /* PODTRAIL_COMMON_H */
