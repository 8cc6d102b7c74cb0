/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * tty.bpf.c: the terminal transcript. What a session with a terminal typed (read from its
 * terminal) and, when configured, what it was shown (written to it), at the syscall's exit.
 *
 * Which terminals: the one a possible session root has when it execs (its controlling tty;
 * its parent in another cgroup while it is in a container's pid namespace, or in a
 * `traced_cgroups` cgroup, or its parent in another pid namespace: runc exec, nsenter). The
 * kernel decides this itself at the exec, so the first key typed is not lost waiting for user
 * space; user space joins each record to its session by pid and drops what belongs to none.
 * The terminal is keyed by its `tty_struct` (never sent out); the entry names the root
 * process and its cgroup, and only that cgroup's processes are recorded on it.
 *
 * Cost on every read and write of the host: the exit tracepoint, the current task's
 * controlling tty (a field load: most daemons have none) and, for a process that has one,
 * one hash lookup. Only a call on that very terminal (its file's tty is the controlling tty)
 * copies anything, at most PT_TTY_DATA_MAX bytes, while the session's budget lasts.
 *
 * Secrets: a read in canonical mode with ECHO off is a password prompt's shape (getpass,
 * sudo, ssh, `read -s`): its bytes are never copied, only its length. A line editor (bash's
 * readline, busybox ash, vi) turns ECHO and ICANON off together and echoes by itself: its
 * input is recorded. Included by podtrail.bpf.c after file.bpf.c, whose fd_file it uses.
 */
#include "common.h"

#define PT_TC_ICANON 0000002
#define PT_TC_ECHO 0000010
#define PT_S_IFMT 00170000
#define PT_S_IFCHR 0020000

/* Budget of copied bytes per session and direction (set by user space before load). */
const volatile __u64 tty_input_budget = 64 * 1024;
const volatile __u64 tty_output_budget = 256 * 1024;

struct tty_session {
	__u64 root_start_ns;
	__u64 cgroup_id;
	__s64 left[2];   /* bytes that may still be copied: input, output */
	__u64 cut[2];    /* bytes refused by the budget */
	__u32 root_pid;
	__u32 cut_sent;  /* bit per direction: its CUT record was sent */
};

/* terminal (tty_struct address) -> its session. LRU: a terminal whose root never exits
 * (its exit lost) is forgotten when room is needed, not kept forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct tty_session);
} tty_sessions SEC(".maps");

/* root tgid -> its terminal, so the root's exit ends the entry whatever the tty is then. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u64);
} tty_roots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pt_tty);
} tty_scratch SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(pt_tty_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct tty_struct *tty = BPF_CORE_READ(p, signal, tty);
	if (!tty)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if (tgid == self_tgid)
		return 0;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct task_struct *parent = BPF_CORE_READ(p, real_parent);
	__u32 pidns = task_pidns_ino(p);
	bool other_cg = task_cgroup_id(parent) != cgid;
	bool other_ns = task_pidns_ino(parent) != pidns;
	bool container = pidns != host_pidns_ino || bpf_map_lookup_elem(&traced_cgroups, &cgid);
	if (!((other_cg && container) || other_ns))
		return 0;
	__u64 key = (__u64)tty;
	__u64 start = task_start_ns(p);
	struct tty_session *old = bpf_map_lookup_elem(&tty_sessions, &key);
	if (old && old->root_pid == tgid && old->root_start_ns == start)
		return 0; /* the root exec'd again: same session, same budget */
	struct tty_session s = {
		.root_start_ns = start,
		.cgroup_id = cgid,
		.left = { (__s64)tty_input_budget, (__s64)tty_output_budget },
		.root_pid = tgid,
	};
	bpf_map_update_elem(&tty_sessions, &key, &s, BPF_ANY);
	bpf_map_update_elem(&tty_roots, &tgid, &key, BPF_ANY);
	return 0;
}

static __always_inline void tty_header(struct pt_tty *r, struct task_struct *t, __u64 cgid, __u32 flags)
{
	fill_header(&r->h, PT_KIND_TTY, PT_TTY_DATA_OFF, t, cgid);
	r->bytes = 0;
	r->data_len = 0;
	r->flags = flags;
	r->lflag = 0;
	r->cut_in = 0;
	r->cut_out = 0;
}

/* The root exited: its terminal is no longer traced; what the budget cut is said once. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(pt_tty_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	__u64 *key = bpf_map_lookup_elem(&tty_roots, &tgid);
	if (!key)
		return 0;
	__u64 k = *key;
	bpf_map_delete_elem(&tty_roots, &tgid);
	struct tty_session *s = bpf_map_lookup_elem(&tty_sessions, &k);
	if (!s || s->root_pid != tgid || s->root_start_ns != task_start_ns(p))
		return 0;
	if (s->cut[0] || s->cut[1]) {
		__u32 zero = 0;
		struct pt_tty *r = bpf_map_lookup_elem(&tty_scratch, &zero);
		if (r) {
			tty_header(r, p, s->cgroup_id, PT_TTY_F_END);
			r->h.pid = tgid;
			r->cut_in = s->cut[0];
			r->cut_out = s->cut[1];
			emit(r, PT_TTY_DATA_OFF);
		}
	}
	bpf_map_delete_elem(&tty_sessions, &k);
	return 0;
}

/* A read (dir 0) or write (dir 1) returned `ret` bytes: record it if it was on the
 * session's terminal. The fd and buffer are read back from the syscall's saved registers. */
static __always_inline int tty_io(long ret, __u32 dir)
{
	if (ret <= 0)
		return 0;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	struct tty_struct *tty = t->signal->tty;
	if (!tty)
		return 0;
	__u64 key = (__u64)tty;
	struct tty_session *s = bpf_map_lookup_elem(&tty_sessions, &key);
	if (!s)
		return 0;
	__u64 cgid = bpf_get_current_cgroup_id();
	if (s->cgroup_id != cgid)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	long fd = (long)PT_REGS_PARM1_CORE_SYSCALL(regs);
	const void *buf = (const void *)PT_REGS_PARM2_CORE_SYSCALL(regs);
	struct file *f = fd_file(t, fd);
	if (!f)
		return 0;
	/* the terminal itself (its slave side, or /dev/tty): a tty file's private data names it */
	if ((BPF_CORE_READ(f, f_inode, i_mode) & PT_S_IFMT) != PT_S_IFCHR)
		return 0;
	struct tty_file_private *priv = BPF_CORE_READ(f, private_data);
	if (!priv || BPF_CORE_READ(priv, tty) != tty)
		return 0;

	__u32 zero = 0;
	struct pt_tty *r = bpf_map_lookup_elem(&tty_scratch, &zero);
	if (!r)
		return 0;
	__u32 lflag = BPF_CORE_READ(tty, termios.c_lflag);
	__u32 n = ret > 0x7fffffff ? 0x7fffffff : (__u32)ret;
	__u32 d = dir & 1;
	tty_header(r, t, cgid, d ? PT_TTY_F_OUTPUT : 0);
	r->bytes = n;
	r->lflag = lflag;
	if (!d && !(lflag & PT_TC_ECHO) && (lflag & PT_TC_ICANON)) {
		/* only whether the line ended (its last byte), so user space can tell where one
		 * secret stops when it is read a byte at a time (busybox `read -s`) */
		char last = 0;
		bpf_probe_read_user(&last, 1, (const char *)buf + n - 1);
		r->flags |= PT_TTY_F_SECRET | (last == '\n' ? PT_TTY_F_EOL : 0);
		emit(r, PT_TTY_DATA_OFF);
		return 0;
	}
	__u32 want = n > PT_TTY_DATA_MAX ? PT_TTY_DATA_MAX : n;
	__s64 left = __sync_fetch_and_add(&s->left[d], -(__s64)want);
	if (left <= 0) {
		__sync_fetch_and_add(&s->cut[d], n);
		if (s->cut_sent & (1u << d))
			return 0;
		s->cut_sent |= 1u << d; /* a race sends a second CUT record at worst */
		r->flags |= PT_TTY_F_CUT;
		emit(r, PT_TTY_DATA_OFF);
		return 0;
	}
	__u64 copy = want;
	if ((__s64)copy > left)
		copy = (__u64)left;
	if (copy < n) {
		r->flags |= PT_TTY_F_PARTIAL;
		__sync_fetch_and_add(&s->cut[d], n - copy);
	}
	/* the verifier must see the bound on the very register the helpers get: keep the
	 * compiler from checking one copy of it and passing another */
	asm volatile("" : "+r"(copy));
	if (copy > PT_TTY_DATA_MAX)
		return 0;
	if (bpf_probe_read_user(r->data, copy, buf) != 0)
		copy = 0;
	r->data_len = copy;
	__u64 size = PT_TTY_DATA_OFF + copy;
	asm volatile("" : "+r"(size));
	if (size > sizeof(*r))
		return 0;
	r->h.len = size;
	emit(r, size);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int pt_tty_read(struct trace_event_raw_sys_exit *ctx)
{
	return tty_io(ctx->ret, 0);
}

SEC("tracepoint/syscalls/sys_exit_write")
int pt_tty_write(struct trace_event_raw_sys_exit *ctx)
{
	return tty_io(ctx->ret, 1);
}
