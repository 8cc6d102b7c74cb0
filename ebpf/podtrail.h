/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * podtrail.h: the kernel/user contract. Every record that crosses the ring buffer is defined
 * here and nowhere else; src/capture/abi.rs mirrors it and tests/abi.rs proves the mirror
 * against the BTF that clang writes into the compiled object.
 *
 * Rules:
 *  - fixed-width types only, explicit padding, 8-byte aligned sizes;
 *  - a record kind number is never reused: retire it and take the next one;
 *  - variable-length data (paths, argv) follows the fixed part of a record, each part with an
 *    explicit length; the record's `len` says how many bytes were written;
 *  - every struct has a _Static_assert on its size, so a change is a deliberate one;
 *  - every number user space must agree on (version, kinds, flags, slot sizes and offsets)
 *    is an enum constant, not a #define: enums reach the object's BTF (a #define never
 *    does), so the loader and tests/abi.rs read their values back and compare them with
 *    src/capture/abi.rs. The enum types are anchored in BTF by `pt_abi_anchor` (common.h).
 */
#ifndef PODTRAIL_H
#define PODTRAIL_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum pt_kind {
	PT_KIND_EXEC = 1,
	PT_KIND_FORK = 2,
	PT_KIND_EXIT = 3,
	PT_KIND_CONNECT = 4,
	PT_KIND_CONNECT_RESULT = 5,
	PT_KIND_NS_JOIN = 6,
	PT_KIND_UDP_SEND = 7,
	PT_KIND_FILE = 8,
	PT_KIND_SOCK = 9,
	PT_KIND_DNS = 10,
	PT_KIND_TTY = 11,
	PT_KIND_CGROUP_MKDIR = 12,
	PT_KIND_MAX = 13, /* one past the last kind: sizes the per-kind counters */
};

/* Raised with every change of a record, a limit or a constant below. */
enum pt_abi {
	PT_ABI_VERSION = 8,
};

/* Limits of the variable parts. Raising one changes the ABI version. */
enum pt_limits {
	PT_FILENAME_MAX = 256,  /* bprm->filename, as passed to execve */
	PT_INTERP_MAX = 256,    /* bprm->interp: the interpreter of a #! script */
	PT_EXE_PATH_MAX = 1024, /* resolved executable path, components leaf first */
	PT_AUDIT_ID_MAX = 128,  /* value of KUBERNETES_EXEC_AUDIT_ID */
	PT_ARGV_MAX = 4096,     /* argv bytes kept; the rest is cut and flagged */
	PT_CWD_MAX = 512,       /* resolved working directory at exec, components leaf first */
	PT_COMM_LEN = 16,
};

/* Common header: (pid, start_ns) is a process's identity, safe against pid reuse. */
struct pt_header {
	__u32 kind;      /* enum pt_kind */
	__u32 len;       /* bytes of this record, header included */
	__u64 ts_ns;     /* bpf_ktime_get_boot_ns() when the event happened */
	__u32 pid;       /* tgid in the initial pid namespace (0 when not in process context) */
	__u32 tid;       /* thread id in the initial pid namespace */
	__u64 start_ns;  /* the process's start time: group leader's start_boottime, ns */
	__u64 cgroup_id; /* cgroup2 id (inode of its directory) of the process */
};
_Static_assert(sizeof(struct pt_header) == 40, "pt_header size");

/* pt_exec.flags */
enum pt_exec_flags {
	PT_EXEC_F_ARGV_TRUNCATED = 1 << 0,  /* argv longer than PT_ARGV_MAX */
	PT_EXEC_F_FILENAME_TRUNC = 1 << 1,  /* filename longer than its slot */
	PT_EXEC_F_EXE_TRUNCATED = 1 << 2,   /* exe path longer than its slot or too deep */
	PT_EXEC_F_FILELESS = 1 << 3,        /* executable has no link on disk (memfd, deleted) */
	PT_EXEC_F_TTY = 1 << 4,             /* the process has a controlling terminal */
	PT_EXEC_F_PARENT_OTHER_CGROUP = 1 << 5, /* real_parent is in another cgroup */
	PT_EXEC_F_PARENT_OTHER_PIDNS = 1 << 6,  /* real_parent is in another pid namespace */
	PT_EXEC_F_ENV_SCANNED = 1 << 7,     /* the environment was searched for the audit id */
	PT_EXEC_F_AUDIT_ID_TRUNC = 1 << 8,  /* audit id longer than its slot */
	PT_EXEC_F_ENV_TRUNCATED = 1 << 9,   /* env too long to search to its end */
	PT_EXEC_F_CWD_TRUNCATED = 1 << 10,  /* working directory longer than its slot or too deep */
};

/*
 * exec: the new image of a process, read from kernel structures after the exec succeeded
 * (tp_btf/sched_process_exec), never from syscall arguments.
 * Variable part, packed right after the fixed part (PT_EXEC_VAR_OFF) in this order, each
 * exactly its length in the fixed part, no padding between them: filename, interp, exe path,
 * audit id, cwd, argv. `len` is PT_EXEC_VAR_OFF plus the six lengths (argv last, so `len`
 * stops where argv stops). Only what is used crosses the ring: a storm's exec is ~220 bytes,
 * not the 2.3 KB of six slots at their maximum (ABI 6). exe path and cwd components are
 * written leaf first, each followed by a NUL: user space reverses them.
 */
struct pt_exec {
	struct pt_header h;
	__u32 ppid;             /* real_parent's tgid (initial pid namespace) */
	__u32 nspid;            /* pid in the process's own pid namespace */
	__u64 parent_start_ns;  /* real_parent's start time */
	__u64 parent_cgroup_id; /* real_parent's cgroup2 id */
	__u32 pidns_ino;        /* inode of the process's pid namespace */
	__u32 parent_pidns_ino; /* inode of real_parent's pid namespace */
	__u32 mntns_ino;        /* inode of the process's mount namespace */
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u32 loginuid;         /* audit login uid; 4294967295 when unset */
	__u32 flags;            /* PT_EXEC_F_* */
	__u64 exe_ino;          /* inode of the executable */
	__u32 exe_dev;          /* s_dev of the executable's filesystem */
	__u32 exe_nlink;        /* link count of the executable (0: fileless) */
	__u32 argc;             /* argc as the kernel counted it */
	__u16 filename_len;     /* bytes in the filename slot, no NUL */
	__u16 interp_len;       /* bytes in the interp slot, no NUL */
	__u16 exe_path_len;     /* bytes in the exe path slot */
	__u16 audit_id_len;     /* bytes in the audit id slot, no NUL */
	__u16 argv_len;         /* bytes in the argv slot: NUL-separated strings */
	__u16 cwd_len;          /* bytes in the cwd slot (the task's fs->pwd, resolved) */
	char comm[PT_COMM_LEN]; /* task comm after exec */
	__u64 exe_ctime_ns;     /* executable's inode change time, CLOCK_REALTIME ns: a file
	                           written after its container or session started shows it */
};
_Static_assert(sizeof(struct pt_exec) == 152, "pt_exec size");

enum pt_exec_slots {
	PT_EXEC_VAR_OFF = 152, /* the variable part starts right after the fixed part */
	PT_EXEC_MAX_LEN = PT_EXEC_VAR_OFF + PT_FILENAME_MAX + PT_INTERP_MAX + PT_EXE_PATH_MAX +
			  PT_AUDIT_ID_MAX + PT_CWD_MAX + PT_ARGV_MAX,
};
_Static_assert(PT_EXEC_VAR_OFF == sizeof(struct pt_exec), "pt_exec variable part");

/* fork: a new process (threads are not reported). The header names the child. */
struct pt_fork {
	struct pt_header h;
	__u32 ppid;            /* child's real_parent tgid (CLONE_PARENT makes it the caller's parent) */
	__u32 creator_pid;     /* tgid of the task that called fork/clone */
	__u64 parent_start_ns; /* real_parent's start time */
	__u32 pidns_ino;       /* child's pid namespace */
	__u32 nspid;           /* child's pid in that namespace */
	__u32 uid;
	__u32 _pad0;
};
_Static_assert(sizeof(struct pt_fork) == 72, "pt_fork size");

/* exit: the last thread of a process is gone. */
struct pt_exit {
	struct pt_header h;
	__u32 exit_code; /* wait(2) status: (code << 8) for exit(), the signal number (| 0x80 core) */
	__u32 _pad0;
};
_Static_assert(sizeof(struct pt_exit) == 48, "pt_exit size");

/* Namespace kinds for pt_ns_join.nstype: the CLONE_NEW* flags of setns(2). */
struct pt_ns_join {
	struct pt_header h;
	__u64 nstype;          /* setns(2) nstype argument (0: any, or the fd's kind) */
	__u32 pidns_for_children_ino; /* after the call: namespace its children will be in */
	__u32 mntns_ino;       /* after the call */
	__u32 netns_ino;       /* after the call */
	__u32 old_pidns_for_children_ino;
	__u32 old_mntns_ino;
	__u32 loginuid;
	__u32 uid;
	__u32 _pad0;
};
_Static_assert(sizeof(struct pt_ns_join) == 80, "pt_ns_join size");

/* connect: from cgroup/connect4|6, before the kernel tries. The socket cookie ties it to its
 * result and to the first UDP datagram. Addresses are in network byte order; an IPv4 address
 * is in the first 4 bytes of daddr. */
struct pt_connect {
	struct pt_header h;
	__u64 cookie;
	__u8 family;    /* 2 = AF_INET, 10 = AF_INET6 */
	__u8 protocol;  /* 6 = TCP, 17 = UDP */
	__u8 sock_type; /* 1 = SOCK_STREAM, 2 = SOCK_DGRAM */
	__u8 _pad0;
	__u16 dport;    /* host byte order */
	__u16 _pad1;
	__u8 daddr[16];
};
_Static_assert(sizeof(struct pt_connect) == 72, "pt_connect size");

enum pt_result_phase {
	PT_RESULT_SYSCALL = 1,   /* connect(2) returned (error 0, -EINPROGRESS, -ECONNREFUSED...) */
	PT_RESULT_TCP_STATE = 2, /* a TCP handshake finished: ESTABLISHED (error 0) or CLOSE */
};

/* connect result: how a connect ended. TCP_STATE results come from softirq context: their
 * header has pid 0; the cookie says which connect they finish. */
struct pt_connect_result {
	struct pt_header h;
	__u64 cookie;
	__s32 error;  /* 0 or a negative errno */
	__u8 phase;   /* PT_RESULT_* */
	__u8 family;  /* final destination from the socket (TCP_STATE only) */
	__u16 dport;  /* host byte order (TCP_STATE only) */
	__u8 daddr[16];
};
_Static_assert(sizeof(struct pt_connect_result) == 72, "pt_connect_result size");

/* udp send: the first datagram a connected UDP socket sent (cgroup_skb/egress). A UDP
 * connect without one is address sorting by a resolver, not traffic. The destination is the
 * packet's own (IP header and UDP port), whatever rewrote the connect's. */
struct pt_udp_send {
	struct pt_header h;
	__u64 cookie;
	__u32 bytes;    /* size of that first datagram */
	__u8 family;    /* 0: the packet could not be read */
	__u8 _pad0;
	__u16 dport;    /* host byte order */
	__u8 daddr[16];
};
_Static_assert(sizeof(struct pt_udp_send) == 72, "pt_udp_send size");

/* pt_sock.op */
enum pt_sock_op {
	PT_SOCK_SENDTO = 1, /* a datagram naming its destination (sendto/sendmsg): peer */
	PT_SOCK_LISTEN = 2, /* a TCP socket started listening: local */
	PT_SOCK_ACCEPT = 3, /* accept(2) returned a connection: peer and local */
	PT_SOCK_CREATE = 4, /* a raw or ICMP socket was created: family, type, protocol */
};

/*
 * sock: a way out that is not a connect (sock.bpf.c). Records from cgroup socket programs
 * (SENDTO, CREATE) have start_ns 0, like pt_connect. Addresses in network byte order, ports
 * in host byte order; an IPv4 address is in the first 4 bytes.
 */
struct pt_sock {
	struct pt_header h;
	__u64 cookie;
	__s32 result;   /* ACCEPT: the new descriptor */
	__u8 op;        /* PT_SOCK_* */
	__u8 family;
	__u8 protocol;
	__u8 sock_type;
	__u16 peer_port;
	__u16 local_port;
	__u32 _pad0;
	__u8 peer_addr[16];
	__u8 local_addr[16];
};
_Static_assert(sizeof(struct pt_sock) == 96, "pt_sock size");

/* File operations (pt_file.op). Bits of the same numbers form the watch masks. */
enum pt_file_op {
	PT_FILE_OPEN = 0,
	PT_FILE_UNLINK = 1,
	PT_FILE_RENAME = 2,
	PT_FILE_TRUNCATE = 3,
	PT_FILE_CHMOD = 4,
	PT_FILE_LINK = 5,
	PT_FILE_SYMLINK = 6,
	PT_FILE_URING = 7,      /* an io_uring operation no other op names: uring_op says which
	                           (never a watch mask bit: io_uring ops are judged as opens) */
	PT_WATCH_READ = 1 << 7, /* watch opens for reading too (secrets), not only writes */
};

/* pt_file.fflags */
enum pt_file_flags {
	PT_FILE_F_WRITE = 1 << 0,     /* opened for writing, creating or truncating */
	PT_FILE_F_TRUNCATED = 1 << 1, /* a path or directory was longer than its slot */
	PT_FILE_F_PATH_FD = 1 << 2,   /* path came from an fd (ftruncate, fchmod): in dir */
	PT_FILE_F_RESOLVED = 1 << 3,  /* dir2 holds the file itself, resolved from its dentries
	                                 (an open's descriptor at syscall exit, an io_uring fd) */
	PT_FILE_F_PATH_TAIL = 1 << 4, /* path holds the last bytes of a longer path: its head
	                                 was cut, its base name is whole */
	PT_FILE_F_URING = 1 << 5,     /* submitted through io_uring: uring_op is the opcode */
	PT_FILE_F_ALIAS = 1 << 6,     /* the resolved file is another name (hard link) of the
	                                 file that was opened: the watched one */
	PT_FILE_F_FOLLOWED = 1 << 7,  /* the name given is not watched: the file it led to is
	                                 (dir2), and that is the record's subject */
	PT_FILE_F_PATH2_TAIL = 1 << 8, /* as PT_FILE_F_PATH_TAIL, for path2 */
};

enum pt_file_limits {
	PT_PATH_MAX = 256, /* a path as the process gave it */
	PT_DIR_MAX = 512,  /* a resolved directory (or fd path), components leaf first */
	PT_WATCH_NAME_MAX = 64,
};

/*
 * file: an operation on a file whose base name is in the `watched_names` map (shell
 * histories, /etc/shadow, ssh keys, service account tokens). Sent at syscall exit with the
 * result. A relative `path` is resolved by user space against `dir` (the cwd, or the dirfd's
 * path), both read from the task at syscall entry; `path2`/`dir2` the same for the second
 * name of rename, link and symlink (for symlink, `path` is the link's target as given).
 * An open (open, openat, openat2, creat) is judged again at exit by the file its descriptor
 * names, resolved from the kernel's dentries into `dir2` (PT_FILE_F_RESOLVED): a symlink, a
 * hard link or /proc/self/fd/N leads to the watched file whatever name was given. io_uring
 * submissions (PT_FILE_F_URING) are records of the same shape, sent at submission (result 0).
 */
struct pt_file {
	struct pt_header h;
	__s64 result;       /* return value: fd or 0, or -errno */
	__u32 op;           /* PT_FILE_* */
	__u32 flags;        /* open flags, or chmod mode */
	__u16 path_len;
	__u16 path2_len;
	__u16 dir_len;
	__u16 dir2_len;
	__u32 fflags;       /* PT_FILE_F_* */
	__u32 uring_op;     /* PT_FILE_F_URING: the io_uring opcode (IORING_OP_*) */
	char path[PT_PATH_MAX];
	char path2[PT_PATH_MAX];
	char dir[PT_DIR_MAX];
	char dir2[PT_DIR_MAX];
};
_Static_assert(sizeof(struct pt_file) == 1608, "pt_file size");

enum pt_dns_limits {
	PT_DNS_PAYLOAD_MAX = 512, /* bytes of a DNS message kept: the classic UDP size */
};

/* pt_dns.flags */
enum pt_dns_flags {
	PT_DNS_F_TRUNCATED = 1 << 0, /* the message was longer than PT_DNS_PAYLOAD_MAX */
};

/*
 * dns: a UDP datagram from port 53 delivered to a socket (dns.bpf.c, cgroup_skb/ingress): a
 * DNS answer some process will read. Not in process context: pid, tid and start_ns are 0 and
 * cgroup_id is the receiving socket's cgroup. The message (its first PT_DNS_PAYLOAD_MAX
 * bytes) follows the fixed part; `len` stops where it stops. User space parses it.
 */
struct pt_dns {
	struct pt_header h;
	__u16 payload_len; /* bytes of the message copied after the fixed part */
	__u16 msg_len;     /* the message's length as the UDP header gave it */
	__u8 family;       /* of the server's address: 2 = AF_INET, 10 = AF_INET6 */
	__u8 flags;        /* PT_DNS_F_* */
	__u16 sport;       /* host byte order: 53 */
	__u8 saddr[16];    /* the server that answered, network byte order */
};
_Static_assert(sizeof(struct pt_dns) == 64, "pt_dns size");
/* pt_tty.flags */
enum pt_tty_flags {
	PT_TTY_F_OUTPUT = 1 << 0,  /* written to the terminal (what was shown), not read from it */
	PT_TTY_F_SECRET = 1 << 1,  /* read in canonical mode with echo off (a password prompt):
	                              never copied, only its length is kept */
	PT_TTY_F_CUT = 1 << 2,     /* the session's byte budget for this direction is spent: not
	                              copied; sent once, later calls are only counted (END) */
	PT_TTY_F_PARTIAL = 1 << 3, /* more than the data slot (or the budget left): the rest was not
	                              copied and is counted as cut */
	PT_TTY_F_END = 1 << 4,     /* the session's root exited: cut_in/cut_out are the totals */
	PT_TTY_F_EOL = 1 << 5,     /* SECRET: the last byte read was a newline (the line ended) */
};

enum pt_tty_limits {
	PT_TTY_DATA_MAX = 1024, /* bytes copied from one read or write */
	PT_TTY_DATA_OFF = 72,   /* where data starts; a record is this plus data_len bytes */
};

/*
 * tty: bytes a member of a session with a terminal read from it (typed) or, when configured,
 * wrote to it (shown), at the syscall's exit (tty.bpf.c). Only the terminal a possible
 * session root had when it exec'd is traced, and only by processes of its cgroup. The record
 * is variable-length: h.len = PT_TTY_DATA_OFF + data_len.
 */
struct pt_tty {
	struct pt_header h;
	__u32 bytes;    /* bytes the call returned */
	__u32 data_len; /* bytes copied into data */
	__u32 flags;    /* PT_TTY_F_* */
	__u32 lflag;    /* the terminal's termios c_lflag at the call (ECHO, ICANON) */
	__u64 cut_in;   /* END: input bytes the budget refused over the session */
	__u64 cut_out;  /* END: output bytes the budget refused */
	__u8 data[PT_TTY_DATA_MAX];
};
_Static_assert(sizeof(struct pt_tty) == 1096, "pt_tty size");
_Static_assert(__builtin_offsetof(struct pt_tty, data) == PT_TTY_DATA_OFF, "pt_tty data offset");

enum pt_cgroup_limits {
	PT_CGROUP_PATH_MAX = 512, /* bytes of a new cgroup's path kept (a power of two) */
	PT_CGROUP_PATH_OFF = 56,  /* where path starts; a record is this plus path_len bytes */
};

/* pt_cgroup_mkdir.flags */
enum pt_cgroup_flags {
	PT_CGROUP_F_TRUNCATED = 1 << 0, /* the path was longer than its slot (or unreadable) */
};

/*
 * cgroup mkdir: a cgroup of the cgroup2 hierarchy was created (cgroup.bpf.c, tp_btf/
 * cgroup_mkdir). The header is the creating task's (its cgroup pays for the record); `id` is
 * the new cgroup's, the one its processes' records will carry. `path` is the kernel's, from
 * the cgroup2 root whatever the creator's cgroup namespace, with no NUL. The record is
 * variable-length: h.len = PT_CGROUP_PATH_OFF + path_len.
 */
struct pt_cgroup_mkdir {
	struct pt_header h;
	__u64 id;       /* the new cgroup's id: the inode number of its directory */
	__u32 level;    /* its depth: 1 for a child of the root */
	__u16 path_len; /* bytes in path */
	__u16 flags;    /* PT_CGROUP_F_* */
	char path[PT_CGROUP_PATH_MAX];
};
_Static_assert(sizeof(struct pt_cgroup_mkdir) == 568, "pt_cgroup_mkdir size");
_Static_assert(__builtin_offsetof(struct pt_cgroup_mkdir, path) == PT_CGROUP_PATH_OFF, "pt_cgroup_mkdir path offset");

/* Kernel-side filter modes (global `filter_mode`). */
/*
 * Entries kept from a syscall's entry to its exit, per thread, in LRU maps (file_inflight,
 * setns_inflight, connect_inflight): counted per CPU in `inflight` where one starts and where
 * one finishes. A full LRU map evicts without telling; user space takes started - finished -
 * entries still in the map = entries lost (evicted, or left by a thread that died inside the
 * syscall), each a file operation, namespace join or connect outcome that was not reported.
 */
enum pt_inflight {
	PT_INFLIGHT_FILE_STARTED = 0,
	PT_INFLIGHT_FILE_FINISHED = 1,
	PT_INFLIGHT_SETNS_STARTED = 2,
	PT_INFLIGHT_SETNS_FINISHED = 3,
	PT_INFLIGHT_CONNECT_STARTED = 4,
	PT_INFLIGHT_CONNECT_FINISHED = 5,
	PT_INFLIGHT_MAX = 6,
};

enum pt_filter_mode {
	PT_FILTER_ALL = 0,        /* every process on the host */
	PT_FILTER_CONTAINERS = 1, /* processes outside the host's pid namespace, or in a cgroup
	                             of the `traced_cgroups` map (hostPID containers) */
};

/* Per-cgroup loss counters: key is the cgroup2 id, value this struct. */
struct pt_cgroup_drops {
	__u64 events; /* ring buffer reservations that failed for this cgroup */
	__u64 last_ts_ns;
};
_Static_assert(sizeof(struct pt_cgroup_drops) == 16, "pt_cgroup_drops size");

#endif /* PODTRAIL_H */
