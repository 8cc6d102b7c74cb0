/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * cgroup.bpf.c: each new cgroup2 cgroup's id and path, told at its mkdir. User space resolves
 * a cgroup id to its container by the cgroup's path; looking the path up in cgroupfs when the
 * first event of that id is read fails for a container that started, ran and was removed in
 * less than a drain of the ring (a pod's command that exits at once): its processes were
 * taken for the host's. The record is written in the mkdir, so it is in the ring ahead of
 * every record of a process that runs in the new cgroup (ring order is reservation order),
 * and user space learns the path before it needs it, whether the directory is still there or
 * not.
 *
 * Only the default (cgroup2) hierarchy: its hierarchy id is 0; a v1 hierarchy's mkdir (a
 * hybrid node's runtime makes one per controller) is left at once. Cost: one record per
 * cgroup created on the node, nothing per exec. The header is the creating task's, so a
 * mkdir storm is charged to the creator's cgroup and subject to its fair share of a filling
 * ring like a connect storm (`over_share` in common.h); a refused or lost record only means
 * the path is looked up in cgroupfs as before. Included by podtrail.bpf.c.
 */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pt_cgroup_mkdir);
} cgroup_scratch SEC(".maps");

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(pt_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	__u32 zero = 0;
	struct pt_cgroup_mkdir *r = bpf_map_lookup_elem(&cgroup_scratch, &zero);
	if (!r)
		return 0;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	fill_header(&r->h, PT_KIND_CGROUP_MKDIR, 0, t, bpf_get_current_cgroup_id());
	r->id = BPF_CORE_READ(cgrp, kn, id);
	r->level = BPF_CORE_READ(cgrp, level);
	r->flags = 0;
	long n = bpf_probe_read_kernel_str(r->path, PT_CGROUP_PATH_MAX, path);
	if (n <= 0) {
		r->path_len = 0;
		r->flags = PT_CGROUP_F_TRUNCATED;
		n = 1;
	}
	/* n counts the NUL; a full slot means the path may go on past it */
	__u32 len = (__u32)(n - 1) & (PT_CGROUP_PATH_MAX - 1);
	if (n >= PT_CGROUP_PATH_MAX)
		r->flags = PT_CGROUP_F_TRUNCATED;
	r->path_len = len;
	__u32 size = PT_CGROUP_PATH_OFF + len;
	r->h.len = size;
	emit(r, size);
	return 0;
}
