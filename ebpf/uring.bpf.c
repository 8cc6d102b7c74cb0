/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * uring.bpf.c: operations submitted through io_uring, which no syscall tracepoint sees (the
 * work happens in the kernel, on behalf of an `io_uring_enter` or of a polling kernel thread
 * of the same process). `io_uring_submit_req` fires once per request after the kernel
 * prepared it, so the opcode and its arguments are in the request:
 *  - path operations (openat, openat2, unlinkat, renameat, linkat, symlinkat) are judged by
 *    the watched names like their syscalls, and reported as the same file operations;
 *  - operations on a descriptor are judged by the file it names (its own name or another
 *    link of it), reported with the opcode and the file's path;
 *  - socket set-up (socket, connect, accept, bind, listen) is reported by opcode (what it
 *    connects to is the cgroup hooks' to see, as for the syscalls).
 * Records are pt_file records (PT_FILE_F_URING) with result 0: the outcome completes later.
 * Included by podtrail.bpf.c after file.bpf.c, whose helpers it uses.
 */
#include "common.h"

/* A path operation's name (a kernel `struct filename`), judged and kept like a syscall's. */
static __always_inline bool uring_path(struct pt_file *r, struct task_struct *t, char *out, __u16 *len, char *dir,
				       __u16 *dir_len, int dfd, struct filename *fn, __u32 want, bool judge)
{
	long n = bpf_probe_read_kernel_str(out, PT_PATH_MAX, BPF_CORE_READ(fn, name));
	if (n <= 0)
		return false;
	*len = n - 1;
	if (n == PT_PATH_MAX)
		r->fflags |= PT_FILE_F_TRUNCATED;
	bool hit = judge && (watch_mask(out, *len) & want) == want;
	if (out[0] != '/')
		*dir_len = resolve_dir(dir, t, dfd, &r->fflags);
	return hit;
}

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(pt_uring_submit, struct io_kiocb *req)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	__u32 tgid = t->tgid;
	__u64 cgid = bpf_get_current_cgroup_id();
	if (!traced(t, tgid, task_pidns_ino(t), cgid))
		return 0;
	__u8 opc = BPF_CORE_READ(req, opcode);
	__u32 zero = 0;
	struct pt_file *r = bpf_map_lookup_elem(&file_scratch, &zero);
	if (!r)
		return 0;
	r->fflags = 0;
	r->path_len = r->path2_len = r->dir_len = r->dir2_len = 0;
	r->path[0] = r->path2[0] = 0;
	r->flags = 0;
	__u32 op = PT_FILE_URING;
	bool hit = false;
	void *cmd = &req->cmd;

	switch (opc) {
	case IORING_OP_OPENAT:
	case IORING_OP_OPENAT2: {
		struct io_open *o = cmd;
		__u32 flags = BPF_CORE_READ(o, how.flags);
		bool write = flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC);
		__u32 want = write ? (1u << PT_FILE_OPEN) : ((1u << PT_FILE_OPEN) | PT_WATCH_READ);
		op = PT_FILE_OPEN;
		r->flags = flags;
		if (write)
			r->fflags |= PT_FILE_F_WRITE;
		hit = uring_path(r, t, r->path, &r->path_len, r->dir, &r->dir_len, BPF_CORE_READ(o, dfd),
				 BPF_CORE_READ(o, filename), want, true);
		break;
	}
	case IORING_OP_UNLINKAT: {
		struct io_unlink *u = cmd;
		op = PT_FILE_UNLINK;
		hit = uring_path(r, t, r->path, &r->path_len, r->dir, &r->dir_len, BPF_CORE_READ(u, dfd),
				 BPF_CORE_READ(u, filename), 1u << PT_FILE_UNLINK, true);
		break;
	}
	case IORING_OP_RENAMEAT:
	case IORING_OP_LINKAT:
	case IORING_OP_SYMLINKAT: {
		/* renameat and linkat: old, new; symlinkat: the target (as given), the new link */
		struct io_link *l = cmd; /* struct io_rename has the same leading layout */
		op = opc == IORING_OP_RENAMEAT ? PT_FILE_RENAME : opc == IORING_OP_LINKAT ? PT_FILE_LINK : PT_FILE_SYMLINK;
		bool sym = opc == IORING_OP_SYMLINKAT;
		if (opc == IORING_OP_RENAMEAT) {
			struct io_rename *rn = cmd;
			hit = uring_path(r, t, r->path, &r->path_len, r->dir, &r->dir_len, BPF_CORE_READ(rn, old_dfd),
					 BPF_CORE_READ(rn, oldpath), 1u << op, true);
			hit |= uring_path(r, t, r->path2, &r->path2_len, r->dir2, &r->dir2_len, BPF_CORE_READ(rn, new_dfd),
					  BPF_CORE_READ(rn, newpath), 1u << op, true);
		} else {
			long n = bpf_probe_read_kernel_str(r->path, PT_PATH_MAX, BPF_CORE_READ(l, oldpath, name));
			if (n > 0) {
				r->path_len = n - 1;
				if (!sym) {
					hit = (watch_mask(r->path, r->path_len) & (1u << op)) == (1u << op);
					if (r->path[0] != '/')
						r->dir_len = resolve_dir(r->dir, t, BPF_CORE_READ(l, old_dfd), &r->fflags);
				}
			}
			hit |= uring_path(r, t, r->path2, &r->path2_len, r->dir2, &r->dir2_len, BPF_CORE_READ(l, new_dfd),
					  BPF_CORE_READ(l, newpath), 1u << op, true);
		}
		break;
	}
	case IORING_OP_SOCKET:
	case IORING_OP_CONNECT:
	case IORING_OP_ACCEPT:
	case IORING_OP_BIND:
	case IORING_OP_LISTEN:
		hit = true;
		break;
	default: {
		/* an operation on a descriptor: judged by the file it names */
		if (BPF_CORE_READ(req, flags) & REQ_F_FIXED_FILE)
			return 0; /* an index into the ring's own file table, not a descriptor */
		struct file *f = fd_file(t, BPF_CORE_READ(req, cqe.fd));
		if (!f)
			return 0;
		bool read = opc == IORING_OP_READ || opc == IORING_OP_READV || opc == IORING_OP_READ_FIXED ||
			    opc == IORING_OP_READ_MULTISHOT || opc == IORING_OP_READV_FIXED;
		__u32 want = read ? ((1u << PT_FILE_OPEN) | PT_WATCH_READ) : (1u << PT_FILE_OPEN);
		struct dentry *d = file_watched(f, want, &r->fflags);
		if (!d)
			return 0;
		add_resolved(r, f, d);
		r->fflags |= PT_FILE_F_FOLLOWED | (read ? 0 : PT_FILE_F_WRITE);
		if (opc == IORING_OP_FTRUNCATE)
			op = PT_FILE_TRUNCATE;
		hit = true;
	}
	}
	if (!hit)
		return 0;
	fill_header(&r->h, PT_KIND_FILE, sizeof(*r), t, cgid);
	r->op = op;
	r->result = 0;
	r->uring_op = opc;
	r->fflags |= PT_FILE_F_URING;
	emit(r, sizeof(*r));
	return 0;
}
