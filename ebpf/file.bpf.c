/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * file.bpf.c: operations on watched files (shell histories, /etc/shadow, ssh keys, service
 * account tokens): open, unlink, rename, truncate, chmod, link, symlink. Filtered in the
 * kernel by base name (the `watched_names` map, filled by user space with an op mask per
 * name), so the cost of ordinary file activity is one string read and one hash lookup.
 *
 * Syscall tracepoints are what this kernel offers (no LSM, no fentry): the path is read at
 * syscall entry from user memory, so a racing thread could change it after we read it. A
 * call that returns a descriptor (open, openat, openat2, creat) is judged again at its exit
 * by the file the descriptor names, resolved from the kernel's dentries: a symlink, a hard
 * link or /proc/self/fd/N leads to the watched file whatever name was given. io_uring
 * submissions are seen at `io_uring_submit_req` (tp_btf). Path-only calls (unlink, rename,
 * chmod, truncate) through a link are judged by the name given: nothing here sees the final
 * file of those. docs/rules.md says what this can miss. Included by podtrail.bpf.c.
 */
#include "common.h"

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define FMODE_WRITE 0x2
#define REQ_F_FIXED_FILE 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[PT_WATCH_NAME_MAX]);
	__type(value, __u32);
} watched_names SEC(".maps");

/* thread -> the record being built, sent at syscall exit with the result */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct pt_file);
} file_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pt_file);
} file_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[PT_WATCH_NAME_MAX]);
} name_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[PT_PATH_MAX]);
} dname_scratch SEC(".maps");

/* The watch mask for the base name of a path of `len` bytes held in `path`. The '/' is
 * searched backwards and the loop stops at the first one, so the verifier sees one path per
 * iteration rather than one per possible base offset. */
static __always_inline __u32 watch_mask_inline(const char *path, __u32 len)
{
	__u32 zero = 0;
	char *key = bpf_map_lookup_elem(&name_scratch, &zero);
	if (!key || len == 0 || len >= PT_PATH_MAX)
		return 0;
	__u32 base = 0;
	for (int i = 1; i < PT_PATH_MAX; i++) {
		if ((__u32)i > len)
			break;
		if (path[(len - i) & (PT_PATH_MAX - 1)] == '/') {
			base = len - i + 1;
			break;
		}
	}
	__builtin_memset(key, 0, PT_WATCH_NAME_MAX);
	for (int j = 0; j < PT_WATCH_NAME_MAX - 1; j++) {
		if (base + j >= len)
			break;
		key[j] = path[(base + j) & (PT_PATH_MAX - 1)];
	}
	__u32 *mask = bpf_map_lookup_elem(&watched_names, key);
	return mask ? *mask : 0;
}

/* Fixed-size views of the record's slots, so that a global function (verified once, on its
 * own, whatever calls it: what keeps the open exit's program under the verifier's budget)
 * may be handed one. */
struct pt_path_buf {
	char b[PT_PATH_MAX];
};
struct pt_dir_buf {
	__u8 b[PT_DIR_MAX];
};

/* watch_mask_inline, as a global function. */
__noinline __u32 pt_watch_mask(struct pt_path_buf *path, __u32 len)
{
	if (!path)
		return 0;
	return watch_mask_inline(path->b, len);
}

#define watch_mask(p, len) pt_watch_mask((struct pt_path_buf *)(p), (len))

/* resolve_path into a directory-sized slot, as a global function: the length, with bit 16
 * set when the path was cut. Pointers travel as numbers (they are only ever read through
 * bpf_probe_read_kernel). */
__noinline __u32 pt_resolve_dir_path(struct pt_dir_buf *out, __u64 dentry, __u64 vfsmount)
{
	if (!out)
		return 0;
	bool cut = false;
	__u32 n = resolve_path(out->b, (struct dentry *)dentry, (struct vfsmount *)vfsmount, PT_DIR_MAX, &cut);
	return n | (cut ? 1u << 16 : 0);
}

static __always_inline __u16 resolve_into(char *out, struct dentry *d, struct vfsmount *m, __u32 *fflags)
{
	__u32 v = pt_resolve_dir_path((struct pt_dir_buf *)out, (__u64)d, (__u64)m);
	if (v >> 16)
		*fflags |= PT_FILE_F_TRUNCATED;
	return v & 0xffff;
}

/* The open file behind descriptor `fd` of `t`, or NULL. */
static __always_inline struct file *fd_file(struct task_struct *t, long fd)
{
	if (fd < 0)
		return NULL;
	struct file **fds = BPF_CORE_READ(t, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(t, files, fdt, max_fds);
	if ((unsigned long)fd >= max)
		return NULL;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The directory a relative path is resolved against: the cwd, or the dirfd's file. */
static __always_inline __u16 resolve_dir(char *out, struct task_struct *t, int dfd, __u32 *fflags)
{
	struct dentry *d;
	struct vfsmount *m;
	if (dfd == AT_FDCWD) {
		d = BPF_CORE_READ(t, fs, pwd.dentry);
		m = BPF_CORE_READ(t, fs, pwd.mnt);
	} else {
		struct file *f = fd_file(t, dfd);
		if (!f)
			return 0;
		d = BPF_CORE_READ(f, f_path.dentry);
		m = BPF_CORE_READ(f, f_path.mnt);
	}
	return resolve_into(out, d, m, fflags);
}

/* Is the base name of dentry `d` watched for `want`? */
static __always_inline bool dentry_watched(struct dentry *d, __u32 want)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&dname_scratch, &zero);
	if (!buf)
		return false;
	long n = bpf_probe_read_kernel_str(buf, PT_PATH_MAX, BPF_CORE_READ(d, d_name.name));
	return n > 1 && (watch_mask(buf, n - 1) & want) == want;
}

#define PT_ALIAS_SCAN 8

/*
 * The dentry of the open file `f` that is watched for `want`: its own, or, for a file with
 * more than one link, another name of its inode in the dentry cache (a hard link made to
 * reach a history file under a name nobody watches: creating the link looked the old name
 * up, so it is cached). 0 when neither is. A global function: verified once.
 */
__noinline __u64 pt_file_watched(__u64 file, __u32 want)
{
	struct file *f = (struct file *)file;
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	if (dentry_watched(d, want))
		return (__u64)d;
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	if (BPF_CORE_READ(ino, __i_nlink) < 2)
		return 0;
	struct hlist_node *n = BPF_CORE_READ(ino, i_dentry.first);
	__u64 off = bpf_core_field_offset(struct dentry, d_u.d_alias);
	for (int i = 0; i < PT_ALIAS_SCAN && n; i++) {
		struct dentry *a = (struct dentry *)((char *)n - off);
		if (a != d && dentry_watched(a, want))
			return (__u64)a;
		n = BPF_CORE_READ(n, next);
	}
	return 0;
}

static __always_inline struct dentry *file_watched(struct file *f, __u32 want, __u32 *fflags)
{
	struct dentry *d = (struct dentry *)pt_file_watched((__u64)f, want);
	if (d && d != BPF_CORE_READ(f, f_path.dentry))
		*fflags |= PT_FILE_F_ALIAS;
	return d;
}

/* The path of `d` (on f's mount) into dir2, leaf first. */
static __always_inline void add_resolved(struct pt_file *r, struct file *f, struct dentry *d)
{
	r->dir2_len = resolve_into(r->dir2, d, BPF_CORE_READ(f, f_path.mnt), &r->fflags);
	r->fflags |= PT_FILE_F_RESOLVED;
}

#define PT_TAIL_STEPS 16 /* PATH_MAX (4096) in steps of PT_PATH_MAX - 1 */

/*
 * A path longer than its slot: its last PT_PATH_MAX - 1 bytes, where its base name is, read
 * into `out` (NUL-terminated). The end is found by reading on in slot-sized steps. Returns
 * the bytes kept, or 0 when the path could not be read to its end.
 */
static __always_inline __u16 read_tail(char *out, const char *p)
{
	long off = 0;
	for (int i = 0; i < PT_TAIL_STEPS; i++) {
		long n = bpf_probe_read_user_str(out, PT_PATH_MAX, p + off);
		if (n <= 0)
			return 0;
		if (n < PT_PATH_MAX) {
			long end = off + n - 1;
			if (end < PT_PATH_MAX - 1 ||
			    bpf_probe_read_user(out, PT_PATH_MAX - 1, p + end - (PT_PATH_MAX - 1)) != 0)
				return 0;
			out[PT_PATH_MAX - 1] = 0;
			return PT_PATH_MAX - 1;
		}
		off += PT_PATH_MAX - 1;
	}
	return 0;
}

/* Reads a user path into `out`; a longer one keeps its tail (and sets `tail_flag`). */
static __always_inline long read_path(char *out, const char *p, __u32 *fflags, __u32 tail_flag)
{
	long n = bpf_probe_read_user_str(out, PT_PATH_MAX, p);
	if (n <= 0)
		return -1;
	if (n < PT_PATH_MAX)
		return n - 1;
	*fflags |= PT_FILE_F_TRUNCATED;
	__u16 t = read_tail(out, p);
	if (t) {
		*fflags |= tail_flag;
		return t;
	}
	/* unreadable to its end: the head, flagged */
	n = bpf_probe_read_user_str(out, PT_PATH_MAX, p);
	return n > 0 ? n - 1 : -1;
}

/*
 * Records one operation if a name it touches is watched for it. `p1`/`p2` are the user
 * pointers of the first and second path (p2 NULL when there is none); `d1`/`d2` their dirfds;
 * `fd` >= 0 names the file by descriptor instead (ftruncate, fchmod).
 */
static __always_inline int file_enter(__u32 op, int d1, const char *p1, int d2, const char *p2, int fd, __u32 flags)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	__u32 tgid = t->tgid;
	__u64 cgid = bpf_get_current_cgroup_id();
	if (!traced(t, tgid, task_pidns_ino(t), cgid))
		return 0;
	__u32 zero = 0;
	struct pt_file *r = bpf_map_lookup_elem(&file_scratch, &zero);
	if (!r)
		return 0;
	r->fflags = 0;
	r->path_len = r->path2_len = r->dir_len = r->dir2_len = 0;
	r->path[0] = r->path2[0] = 0;

	bool write = op != PT_FILE_OPEN || (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC));
	__u32 want = write ? (1u << op) : ((1u << op) | PT_WATCH_READ);
	bool hit = false;

	if (fd >= 0) {
		/* by descriptor: the file's own path, in dir */
		struct file *f = fd_file(t, fd);
		if (!f)
			return 0;
		/* the base name is the dentry's own name */
		const unsigned char *nm = BPF_CORE_READ(f, f_path.dentry, d_name.name);
		long nl = bpf_probe_read_kernel_str(r->path, PT_PATH_MAX, nm);
		if (nl <= 0 || (watch_mask(r->path, nl - 1) & want) != want)
			return 0;
		r->dir_len = resolve_into(r->dir, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt), &r->fflags);
		r->path[0] = 0;
		r->fflags |= PT_FILE_F_PATH_FD;
		hit = true;
	} else {
		long n = read_path(r->path, p1, &r->fflags, PT_FILE_F_PATH_TAIL);
		if (n < 0)
			return 0;
		r->path_len = n;
		/* for symlink the watched name is the new link (p2), not its target */
		if (op != PT_FILE_SYMLINK && (watch_mask(r->path, r->path_len) & want) == want)
			hit = true;
		if (p2) {
			n = read_path(r->path2, p2, &r->fflags, PT_FILE_F_PATH2_TAIL);
			if (n >= 0) {
				r->path2_len = n;
				if ((watch_mask(r->path2, r->path2_len) & want) == want)
					hit = true;
			}
		}
		/* an open whose name is not watched is judged again at exit, by its file */
		if (!hit)
			return 0;
		if (r->path[0] != '/' && op != PT_FILE_SYMLINK && !(r->fflags & PT_FILE_F_PATH_TAIL))
			r->dir_len = resolve_dir(r->dir, t, d1, &r->fflags);
		if (p2 && r->path2_len && r->path2[0] != '/' && !(r->fflags & PT_FILE_F_PATH2_TAIL))
			r->dir2_len = resolve_dir(r->dir2, t, d2, &r->fflags);
	}

	fill_header(&r->h, PT_KIND_FILE, sizeof(*r), t, cgid);
	r->op = op;
	r->flags = flags;
	r->result = 0;
	r->uring_op = 0;
	if (write)
		r->fflags |= PT_FILE_F_WRITE;
	__u32 tid = t->pid;
	if (bpf_map_update_elem(&file_inflight, &tid, r, BPF_ANY) == 0)
		inflight_count(PT_INFLIGHT_FILE_STARTED);
	return 0;
}

#define ARG(i) ((void *)ctx->args[i])
#define IARG(i) ((int)ctx->args[i])

SEC("tracepoint/syscalls/sys_enter_openat")
int pt_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_OPEN, IARG(0), ARG(1), 0, NULL, -1, (__u32)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_open")
int pt_enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_OPEN, AT_FDCWD, ARG(0), 0, NULL, -1, (__u32)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int pt_enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	__u64 flags = 0;
	bpf_probe_read_user(&flags, sizeof(flags), ARG(2)); /* struct open_how starts with flags */
	return file_enter(PT_FILE_OPEN, IARG(0), ARG(1), 0, NULL, -1, (__u32)flags);
}

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int pt_enter_unlinkat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_UNLINK, IARG(0), ARG(1), 0, NULL, -1, (__u32)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_unlink")
int pt_enter_unlink(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_UNLINK, AT_FDCWD, ARG(0), 0, NULL, -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_renameat2")
int pt_enter_renameat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_RENAME, IARG(0), ARG(1), IARG(2), ARG(3), -1, (__u32)ctx->args[4]);
}

SEC("tracepoint/syscalls/sys_enter_renameat")
int pt_enter_renameat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_RENAME, IARG(0), ARG(1), IARG(2), ARG(3), -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_rename")
int pt_enter_rename(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_RENAME, AT_FDCWD, ARG(0), AT_FDCWD, ARG(1), -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_truncate")
int pt_enter_truncate(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_TRUNCATE, AT_FDCWD, ARG(0), 0, NULL, -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_ftruncate")
int pt_enter_ftruncate(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_TRUNCATE, 0, NULL, 0, NULL, IARG(0), 0);
}

SEC("tracepoint/syscalls/sys_enter_fchmodat")
int pt_enter_fchmodat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_CHMOD, IARG(0), ARG(1), 0, NULL, -1, (__u32)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_chmod")
int pt_enter_chmod(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_CHMOD, AT_FDCWD, ARG(0), 0, NULL, -1, (__u32)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_fchmod")
int pt_enter_fchmod(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_CHMOD, 0, NULL, 0, NULL, IARG(0), (__u32)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_linkat")
int pt_enter_linkat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_LINK, IARG(0), ARG(1), IARG(2), ARG(3), -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_link")
int pt_enter_link(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_LINK, AT_FDCWD, ARG(0), AT_FDCWD, ARG(1), -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_symlinkat")
int pt_enter_symlinkat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_SYMLINK, AT_FDCWD, ARG(0), IARG(1), ARG(2), -1, 0);
}

SEC("tracepoint/syscalls/sys_enter_symlink")
int pt_enter_symlink(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_SYMLINK, AT_FDCWD, ARG(0), AT_FDCWD, ARG(1), -1, 0);
}

/* One program for every exit: attached to each sys_exit_* above. */
SEC("tracepoint/syscalls/sys_exit_file")
int pt_exit_file(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pt_file *r = bpf_map_lookup_elem(&file_inflight, &tid);
	if (!r)
		return 0;
	r->result = ctx->ret;
	emit(r, sizeof(*r));
	bpf_map_delete_elem(&file_inflight, &tid);
	inflight_count(PT_INFLIGHT_FILE_FINISHED);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_creat")
int pt_enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_OPEN, AT_FDCWD, ARG(0), 0, NULL, -1, O_CREAT | O_WRONLY | O_TRUNC);
}

SEC("tracepoint/syscalls/sys_enter_fchmodat2")
int pt_enter_fchmodat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(PT_FILE_CHMOD, IARG(0), ARG(1), 0, NULL, -1, (__u32)ctx->args[2]);
}

/* How an open-like syscall passes its arguments (in the registers saved at entry). */
enum open_args {
	OPEN_ARGS_OPEN,    /* open(path, flags, mode) */
	OPEN_ARGS_OPENAT,  /* openat(dfd, path, flags, mode) */
	OPEN_ARGS_OPENAT2, /* openat2(dfd, path, struct open_how *, size) */
	OPEN_ARGS_CREAT,   /* creat(path, mode) */
};

/*
 * An open-like syscall returned. A record its entry started (the name given is watched)
 * gets the file the descriptor names, resolved from its dentries. Otherwise the file itself
 * is judged: its own name, or another link of it; the name given and the flags are read
 * back from the syscall's saved registers, which the call does not change.
 */
static __always_inline int open_exit(struct trace_event_raw_sys_exit *ctx, enum open_args how)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	__u32 tid = t->pid;
	long ret = ctx->ret;
	struct pt_file *r = bpf_map_lookup_elem(&file_inflight, &tid);
	if (r) {
		r->result = ret;
		struct file *f = fd_file(t, ret);
		if (f)
			add_resolved(r, f, BPF_CORE_READ(f, f_path.dentry));
		emit(r, sizeof(*r));
		bpf_map_delete_elem(&file_inflight, &tid);
		inflight_count(PT_INFLIGHT_FILE_FINISHED);
		return 0;
	}
	if (ret < 0)
		return 0;
	__u32 tgid = t->tgid;
	__u64 cgid = bpf_get_current_cgroup_id();
	if (!traced(t, tgid, task_pidns_ino(t), cgid))
		return 0;
	struct file *f = fd_file(t, ret);
	if (!f)
		return 0;
	bool write = BPF_CORE_READ(f, f_mode) & FMODE_WRITE;
	__u32 want = write ? (1u << PT_FILE_OPEN) : ((1u << PT_FILE_OPEN) | PT_WATCH_READ);
	__u32 zero = 0;
	r = bpf_map_lookup_elem(&file_scratch, &zero);
	if (!r)
		return 0;
	r->fflags = 0;
	r->path_len = r->path2_len = r->dir_len = r->dir2_len = 0;
	r->path[0] = r->path2[0] = 0;
	struct dentry *d = file_watched(f, want, &r->fflags);
	if (!d)
		return 0;
	add_resolved(r, f, d);

	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	int dfd = AT_FDCWD;
	const char *given;
	__u32 flags;
	if (how == OPEN_ARGS_OPEN || how == OPEN_ARGS_CREAT) {
		given = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs);
		flags = how == OPEN_ARGS_CREAT ? (O_CREAT | O_WRONLY | O_TRUNC) : (__u32)PT_REGS_PARM2_CORE_SYSCALL(regs);
	} else {
		dfd = (int)PT_REGS_PARM1_CORE_SYSCALL(regs);
		given = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs);
		if (how == OPEN_ARGS_OPENAT2) {
			__u64 f64 = 0;
			bpf_probe_read_user(&f64, sizeof(f64), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
			flags = (__u32)f64;
		} else {
			flags = (__u32)PT_REGS_PARM3_CORE_SYSCALL(regs);
		}
	}
	long n = read_path(r->path, given, &r->fflags, PT_FILE_F_PATH_TAIL);
	if (n > 0) {
		r->path_len = n;
		if (r->path[0] != '/' && !(r->fflags & PT_FILE_F_PATH_TAIL))
			r->dir_len = resolve_dir(r->dir, t, dfd, &r->fflags);
	}
	fill_header(&r->h, PT_KIND_FILE, sizeof(*r), t, cgid);
	r->op = PT_FILE_OPEN;
	r->flags = flags;
	r->result = ret;
	r->uring_op = 0;
	r->fflags |= PT_FILE_F_FOLLOWED | (write ? PT_FILE_F_WRITE : 0);
	emit(r, sizeof(*r));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_open")
int pt_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx, OPEN_ARGS_OPEN);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int pt_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx, OPEN_ARGS_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int pt_exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx, OPEN_ARGS_OPENAT2);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int pt_exit_creat(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx, OPEN_ARGS_CREAT);
}
