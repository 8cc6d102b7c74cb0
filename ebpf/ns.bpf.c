/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * ns.bpf.c: namespace joins. A process on the node that enters a container's namespaces
 * (nsenter, setns) keeps its host cgroup: this event is how such a session is recognised.
 * The namespaces are read from the task after a successful setns(2), so the event says where
 * the process (and its future children) really are. Included by podtrail.bpf.c.
 */
#include "common.h"

struct ns_before {
	__u64 nstype;
	__u32 pidns_for_children_ino;
	__u32 mntns_ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ns_before);
} setns_inflight SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_setns")
int pt_sys_enter_setns(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	if (t->tgid == self_tgid)
		return 0;
	__u32 tid = t->pid;
	struct ns_before b = {};
	b.nstype = ctx->args[1];
	b.pidns_for_children_ino = BPF_CORE_READ(t, nsproxy, pid_ns_for_children, ns.inum);
	b.mntns_ino = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	if (bpf_map_update_elem(&setns_inflight, &tid, &b, BPF_ANY) == 0)
		inflight_count(PT_INFLIGHT_SETNS_STARTED);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_setns")
int pt_sys_exit_setns(struct trace_event_raw_sys_exit *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	__u32 tid = t->pid;
	struct ns_before *b = bpf_map_lookup_elem(&setns_inflight, &tid);
	if (!b)
		return 0;
	struct ns_before before = *b;
	bpf_map_delete_elem(&setns_inflight, &tid);
	inflight_count(PT_INFLIGHT_SETNS_FINISHED);
	if (ctx->ret != 0)
		return 0;

	struct pt_ns_join j = {};
	fill_header(&j.h, PT_KIND_NS_JOIN, sizeof(j), t, bpf_get_current_cgroup_id());
	j.nstype = before.nstype;
	j.old_pidns_for_children_ino = before.pidns_for_children_ino;
	j.old_mntns_ino = before.mntns_ino;
	j.pidns_for_children_ino = BPF_CORE_READ(t, nsproxy, pid_ns_for_children, ns.inum);
	j.mntns_ino = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	j.netns_ino = BPF_CORE_READ(t, nsproxy, net_ns, ns.inum);
	j.loginuid = BPF_CORE_READ(t, loginuid.val);
	j.uid = BPF_CORE_READ(t, real_cred, uid.val);
	emit(&j, sizeof(j));
	return 0;
}
