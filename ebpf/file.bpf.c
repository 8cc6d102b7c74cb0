/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * file.bpf.c: operations on watched files (shell histories, /etc/shadow, ssh keys, service
 * account tokens): open, unlink, rename, truncate, chmod, link, symlink. Filtered in the
 * kernel by base name (the `watched_names` map, filled by user space with an op mask per
 * name), so the cost of ordinary file activity is one string read and one hash lookup.
 *
 * Syscall tracepoints are what this kernel offers (no LSM, no fentry): the path is read at
 * syscall entry from user memory, so a racing thread could change it after we read it, and
 * io_uring operations do not pass here at all. docs/rules.md says what this can miss.
 * Included by podtrail.bpf.c.
 */
#include "common.h"

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000

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

/* The watch mask for the base name of a path of `len` bytes held in `path`. The '/' is
 * searched backwards and the loop stops at the first one, so the verifier sees one path per
 * iteration rather than one per possible base offset. */
static __always_inline __u32 watch_mask(const char *path, __u32 len)
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

/* The directory a relative path is resolved against: the cwd, or the dirfd's file. */
static __always_inline __u16 resolve_dir(char *out, struct task_struct *t, int dfd, __u32 *fflags)
{
	struct dentry *d;
	struct vfsmount *m;
	if (dfd == AT_FDCWD) {
		d = BPF_CORE_READ(t, fs, pwd.dentry);
		m = BPF_CORE_READ(t, fs, pwd.mnt);
	} else {
		if (dfd < 0)
			return 0;
		struct file **fds = BPF_CORE_READ(t, files, fdt, fd);
		unsigned int max = BPF_CORE_READ(t, files, fdt, max_fds);
		if ((unsigned int)dfd >= max)
			return 0;
		struct file *f = NULL;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[dfd]);
		if (!f)
			return 0;
		d = BPF_CORE_READ(f, f_path.dentry);
		m = BPF_CORE_READ(f, f_path.mnt);
	}
	bool cut = false;
	__u32 n = resolve_path((__u8 *)out, d, m, PT_DIR_MAX, &cut);
	if (cut)
		*fflags |= PT_FILE_F_TRUNCATED;
	return n;
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
		struct file **fds = BPF_CORE_READ(t, files, fdt, fd);
		unsigned int max = BPF_CORE_READ(t, files, fdt, max_fds);
		if ((unsigned int)fd >= max)
			return 0;
		struct file *f = NULL;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
		if (!f)
			return 0;
		/* the base name is the dentry's own name */
		const unsigned char *nm = BPF_CORE_READ(f, f_path.dentry, d_name.name);
		long nl = bpf_probe_read_kernel_str(r->path, PT_PATH_MAX, nm);
		if (nl <= 0 || (watch_mask(r->path, nl - 1) & want) != want)
			return 0;
		bool cut = false;
		r->dir_len = resolve_path((__u8 *)r->dir, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt), PT_DIR_MAX, &cut);
		r->path[0] = 0;
		r->fflags |= PT_FILE_F_PATH_FD | (cut ? PT_FILE_F_TRUNCATED : 0);
		hit = true;
	} else {
		long n = bpf_probe_read_user_str(r->path, PT_PATH_MAX, p1);
		if (n <= 0)
			return 0;
		r->path_len = n - 1;
		if (n == PT_PATH_MAX)
			r->fflags |= PT_FILE_F_TRUNCATED;
		/* for symlink the watched name is the new link (p2), not its target */
		if (op != PT_FILE_SYMLINK && (watch_mask(r->path, r->path_len) & want) == want)
			hit = true;
		if (p2) {
			n = bpf_probe_read_user_str(r->path2, PT_PATH_MAX, p2);
			if (n > 0) {
				r->path2_len = n - 1;
				if (n == PT_PATH_MAX)
					r->fflags |= PT_FILE_F_TRUNCATED;
				if ((watch_mask(r->path2, r->path2_len) & want) == want)
					hit = true;
			}
		}
		if (!hit)
			return 0;
		if (r->path[0] != '/' && op != PT_FILE_SYMLINK)
			r->dir_len = resolve_dir(r->dir, t, d1, &r->fflags);
		if (p2 && r->path2_len && r->path2[0] != '/')
			r->dir2_len = resolve_dir(r->dir2, t, d2, &r->fflags);
	}

	fill_header(&r->h, PT_KIND_FILE, sizeof(*r), t, cgid);
	r->op = op;
	r->flags = flags;
	r->result = 0;
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
