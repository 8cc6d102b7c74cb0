/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * process.bpf.c: exec, fork and exit. Everything is read from kernel structures after the
 * fact (the new image's mm, the binprm, the task), never from syscall arguments, which a
 * process can change between entry and use. Included by podtrail.bpf.c.
 */
#include "common.h"

#define SIGNAL_GROUP_EXIT 0x00000004 /* include/linux/sched/signal.h */

/* "KUBERNETES_EXEC_AUDIT_ID=": three little-endian words and a byte. */
#define AUDIT_KEY_LEN 25
#define AUDIT_KEY_W0 0x54454e524542554bULL /* "KUBERNET" */
#define AUDIT_KEY_W1 0x5f434558455f5345ULL /* "ES_EXEC_" */
#define AUDIT_KEY_W2 0x44495f5449445541ULL /* "AUDIT_ID" */

static __always_inline bool is_audit_key(const __u8 *s)
{
	/* compare 8 + 8 + 8 + 1 bytes: cheaper for the verifier than a byte loop */
	const __u64 *w = (const __u64 *)s;
	return w[0] == AUDIT_KEY_W0 && w[1] == AUDIT_KEY_W1 && w[2] == AUDIT_KEY_W2 &&
	       s[24] == '=';
}

/*
 * Find KUBERNETES_EXEC_AUDIT_ID in the new image's environment. Strings are read 256 bytes
 * at a time into the scratch's PT_BUILD_ENV; a longer string is skipped in steps, so only
 * real string starts are compared.
 */
static __always_inline void scan_audit_id(__u8 *buf, struct pt_exec *e, struct mm_struct *mm)
{
	unsigned long p = BPF_CORE_READ(mm, env_start);
	unsigned long end = BPF_CORE_READ(mm, env_end);
	__u8 *tmp = buf + PT_BUILD_ENV;
	bool at_start = true;
	int i;

	e->flags |= PT_EXEC_F_ENV_SCANNED;
	for (i = 0; i < 512; i++) {
		if (p >= end)
			return;
		long n = bpf_probe_read_user_str(tmp, PT_NAME_READ, (void *)p);
		if (n <= 0)
			return;
		if (at_start && n > AUDIT_KEY_LEN && is_audit_key(tmp)) {
			long v = bpf_probe_read_kernel_str(buf + PT_BUILD_AUDIT_ID, PT_AUDIT_ID_MAX,
							   tmp + AUDIT_KEY_LEN);
			if (v > 0)
				e->audit_id_len = v - 1;
			if (n == PT_NAME_READ || v == PT_AUDIT_ID_MAX)
				e->flags |= PT_EXEC_F_AUDIT_ID_TRUNC;
			return;
		}
		if (n == PT_NAME_READ) {
			at_start = false;
			p += PT_NAME_READ - 1;
		} else {
			at_start = true;
			p += n;
		}
	}
	e->flags |= PT_EXEC_F_ENV_TRUNCATED;
}

/*
 * Copy a part's `len` bytes from its build slot `src` to the record at `off`; evaluates to
 * where the next part goes. `mask` is the part's limit minus one, a literal: every limit is a
 * power of two and no part reaches its limit (the string reads keep a NUL, the path walks
 * mask their offset), so the mask never changes a length. It bounds the copy, and so every
 * later offset, for the verifier: a compare would not do, clang makes it on a copy of the
 * register and passes the unbounded original to the helper.
 */
#define PACK(rec, off, src, len, mask)                                                   \
	({                                                                               \
		__u64 __len = (len);                                                     \
		asm volatile("%[l] &= " #mask : [l] "+r"(__len));                        \
		if (__len)                                                               \
			bpf_probe_read_kernel((rec) + (off), __len, (src));              \
		(off) + __len;                                                           \
	})
_Static_assert(PT_FILENAME_MAX - 1 == 255 && PT_INTERP_MAX - 1 == 255, "PACK masks");
_Static_assert(PT_EXE_PATH_MAX - 1 == 1023 && PT_AUDIT_ID_MAX - 1 == 127 && PT_CWD_MAX - 1 == 511,
	       "PACK masks");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(pt_sched_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	__u32 pidns = task_pidns_ino(p);
	__u64 cgid = bpf_get_current_cgroup_id();

	if (!traced(p, tgid, pidns, cgid))
		return 0;
	__u8 *buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf)
		return 0;
	struct pt_exec *e = (struct pt_exec *)buf;
	__builtin_memset(e, 0, sizeof(*e));
	fill_header(&e->h, PT_KIND_EXEC, 0, p, cgid);

	struct task_struct *parent = BPF_CORE_READ(p, real_parent);
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->parent_start_ns = task_start_ns(parent);
	e->parent_cgroup_id = task_cgroup_id(parent);
	e->parent_pidns_ino = task_pidns_ino(parent);
	e->pidns_ino = pidns;
	e->nspid = task_nspid(p);
	e->mntns_ino = BPF_CORE_READ(p, nsproxy, mnt_ns, ns.inum);
	e->uid = BPF_CORE_READ(p, real_cred, uid.val);
	e->gid = BPF_CORE_READ(p, real_cred, gid.val);
	e->euid = BPF_CORE_READ(p, real_cred, euid.val);
	e->loginuid = BPF_CORE_READ(p, loginuid.val);
	e->argc = BPF_CORE_READ(bprm, argc);
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
	if (BPF_CORE_READ(p, signal, tty))
		e->flags |= PT_EXEC_F_TTY;
	if (e->parent_cgroup_id != cgid)
		e->flags |= PT_EXEC_F_PARENT_OTHER_CGROUP;
	if (e->parent_pidns_ino != pidns)
		e->flags |= PT_EXEC_F_PARENT_OTHER_PIDNS;

	/* filename as passed to execve (may be /proc/self/exe or /dev/fd/N) */
	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(buf + PT_BUILD_FILENAME, PT_FILENAME_MAX, filename);
	if (n > 0)
		e->filename_len = n - 1;
	if (n == PT_FILENAME_MAX)
		e->flags |= PT_EXEC_F_FILENAME_TRUNC;
	/* interp differs from filename for #! scripts and binfmt_misc */
	const char *interp = BPF_CORE_READ(bprm, interp);
	if (interp && interp != filename) {
		n = bpf_probe_read_kernel_str(buf + PT_BUILD_INTERP, PT_INTERP_MAX, interp);
		if (n > 0)
			e->interp_len = n - 1;
	}

	/* the executable the kernel actually runs: the new mm's exe_file */
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	struct file *exe = BPF_CORE_READ(mm, exe_file);
	if (exe) {
		struct inode *ino = BPF_CORE_READ(exe, f_inode);
		e->exe_ino = BPF_CORE_READ(ino, i_ino);
		e->exe_dev = BPF_CORE_READ(ino, i_sb, s_dev);
		e->exe_nlink = BPF_CORE_READ(ino, __i_nlink);
		if (e->exe_nlink == 0)
			e->flags |= PT_EXEC_F_FILELESS;
		/* multigrain timestamps (6.13+) keep a flag in bit 31 of i_ctime_nsec
		 * (I_CTIME_QUERIED: set once stat read it), which would add 2.147 s;
		 * nanoseconds never reach bit 30, so masking is right on every kernel */
		e->exe_ctime_ns = BPF_CORE_READ(ino, i_ctime_sec) * 1000000000ULL +
				  (BPF_CORE_READ(ino, i_ctime_nsec) & 0x3fffffffU);
		bool cut = false;
		e->exe_path_len = resolve_path(buf + PT_BUILD_EXE_PATH, BPF_CORE_READ(exe, f_path.dentry),
					       BPF_CORE_READ(exe, f_path.mnt), PT_EXE_PATH_MAX, &cut);
		if (cut)
			e->flags |= PT_EXEC_F_EXE_TRUNCATED;
	}

	/* the working directory the program starts in (process.working_directory) */
	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	if (fs) {
		bool cwd_cut = false;
		e->cwd_len = resolve_path(buf + PT_BUILD_CWD, BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt),
					  PT_CWD_MAX, &cwd_cut);
		if (cwd_cut)
			e->flags |= PT_EXEC_F_CWD_TRUNCATED;
	}

	/* the audit id is only ever trusted on a session's first image: look where a process
	 * arrives from outside its cgroup or pid namespace, or is about to be judged as such */
	if (scan_env && (e->flags & (PT_EXEC_F_PARENT_OTHER_CGROUP | PT_EXEC_F_PARENT_OTHER_PIDNS)))
		scan_audit_id(buf, e, mm);

	/* pack the parts behind the fixed part, in the ABI's order */
	__u64 off = PT_EXEC_VAR_OFF;
	off = PACK(buf, off, buf + PT_BUILD_FILENAME, e->filename_len, 255);
	off = PACK(buf, off, buf + PT_BUILD_INTERP, e->interp_len, 255);
	off = PACK(buf, off, buf + PT_BUILD_EXE_PATH, e->exe_path_len, 1023);
	off = PACK(buf, off, buf + PT_BUILD_AUDIT_ID, e->audit_id_len, 127);
	off = PACK(buf, off, buf + PT_BUILD_CWD, e->cwd_len, 511);

	/* argv, as the kernel copied it onto the new stack: read straight behind the cwd */
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > PT_ARGV_MAX) {
		len = PT_ARGV_MAX;
		e->flags |= PT_EXEC_F_ARGV_TRUNCATED;
	}
	asm volatile("%[len] &= 0x1fff" : [len] "+r"(len)); /* bound for the verifier */
	if (len > PT_ARGV_MAX)
		len = PT_ARGV_MAX;
	if (len && bpf_probe_read_user(buf + off, len, (void *)arg_start) != 0)
		len = 0;
	e->argv_len = len;

	__u64 size = off + len;
	e->h.len = size;
	emit(buf, size);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(pt_sched_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 tgid = BPF_CORE_READ(child, tgid);
	if (BPF_CORE_READ(child, pid) != tgid)
		return 0; /* a new thread, not a new process */
	__u32 pidns = task_pidns_ino(child);
	__u64 cgid = task_cgroup_id(child);
	if (!traced(child, tgid, pidns, cgid))
		return 0;

	struct pt_fork f = {};
	fill_header(&f.h, PT_KIND_FORK, sizeof(f), child, cgid);
	struct task_struct *rp = BPF_CORE_READ(child, real_parent);
	f.ppid = BPF_CORE_READ(rp, tgid);
	f.parent_start_ns = task_start_ns(rp);
	f.creator_pid = BPF_CORE_READ(parent, tgid);
	f.pidns_ino = pidns;
	f.nspid = task_nspid(child);
	f.uid = BPF_CORE_READ(child, real_cred, uid.val);
	emit(&f, sizeof(f));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(pt_sched_exit, struct task_struct *p)
{
	struct signal_struct *sig = BPF_CORE_READ(p, signal);
	if (BPF_CORE_READ(sig, live.counter) != 0)
		return 0; /* other threads of the process are still running */
	__u32 tgid = BPF_CORE_READ(p, tgid);
	__u64 cgid = bpf_get_current_cgroup_id();
	if (!traced(p, tgid, task_pidns_ino(p), cgid))
		return 0;

	struct pt_exit x = {};
	fill_header(&x.h, PT_KIND_EXIT, sizeof(x), p, cgid);
	x.h.pid = tgid;
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		x.exit_code = BPF_CORE_READ(sig, group_exit_code);
	else
		x.exit_code = BPF_CORE_READ(p, exit_code);
	emit(&x, sizeof(x));
	return 0;
}
