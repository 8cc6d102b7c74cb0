//! Owned events: what the kernel reported, decoded and ready for the process stage.
//!
//! In: nothing (built by `decode`). Out: `Event` values. Byte strings from the kernel (argv,
//! paths) are kept as bytes; `crate::text::escape` is the one rule that turns them into text.
//! Events serialize as `podtrail capture` prints them and deserialize from the same JSON, so a
//! recorded capture replays through the process stage (tests/process_recorded.rs).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod net;
pub use net::*;

use crate::text::{
    de_bytes, de_bytes_list, de_opt_bytes, de_opt_shared_bytes, de_shared_bytes, ser_bytes, ser_bytes_list,
    ser_opt_bytes,
};

/// A process's identity: the pid alone is reused, the pair is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub pid: u32,
    /// Start time in ns since boot (the kernel's `start_boottime`).
    pub start_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Exec(ExecEvent),
    Fork(ForkEvent),
    Exit(ExitEvent),
    Connect(ConnectEvent),
    ConnectResult(ConnectResultEvent),
    NsJoin(NsJoinEvent),
    UdpSend(UdpSendEvent),
    File(FileEvent),
    Sock(SockEvent),
    Dns(DnsEvent),
    Tty(TtyEvent),
    CgroupMkdir(CgroupMkdirEvent),
}

impl Event {
    /// When it happened, ns since boot.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Exec(e) => e.ts_ns,
            Event::Fork(e) => e.ts_ns,
            Event::Exit(e) => e.ts_ns,
            Event::Connect(e) => e.ts_ns,
            Event::ConnectResult(e) => e.ts_ns,
            Event::NsJoin(e) => e.ts_ns,
            Event::UdpSend(e) => e.ts_ns,
            Event::File(e) => e.ts_ns,
            Event::Sock(e) => e.ts_ns,
            Event::Dns(e) => e.ts_ns,
            Event::Tty(e) => e.ts_ns,
            Event::CgroupMkdir(e) => e.ts_ns,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::Exec(_) => "exec",
            Event::Fork(_) => "fork",
            Event::Exit(_) => "exit",
            Event::Connect(_) => "connect",
            Event::ConnectResult(_) => "connect_result",
            Event::NsJoin(_) => "ns_join",
            Event::UdpSend(_) => "udp_send",
            Event::File(_) => "file",
            Event::Sock(_) => "sock",
            Event::Dns(_) => "dns",
            Event::Tty(_) => "tty",
            Event::CgroupMkdir(_) => "cgroup_mkdir",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFlags {
    pub argv_truncated: bool,
    pub filename_truncated: bool,
    pub exe_truncated: bool,
    /// The executable has no name on disk (memfd, deleted file).
    pub fileless: bool,
    pub tty: bool,
    pub parent_other_cgroup: bool,
    pub parent_other_pidns: bool,
    pub env_scanned: bool,
    pub audit_id_truncated: bool,
    pub env_truncated: bool,
    /// The working directory was longer than podtrail keeps (its top is cut).
    pub cwd_truncated: bool,
}

/// A new image of a process (execve succeeded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    /// The task's `real_parent` (runc clones with CLONE_PARENT, so this is not the caller).
    pub ppid: u32,
    pub parent_start_ns: u64,
    pub parent_cgroup_id: u64,
    /// pid inside the process's own pid namespace.
    pub nspid: u32,
    pub pidns_ino: u32,
    pub parent_pidns_ino: u32,
    pub mntns_ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    /// Audit login uid (the node user behind a session), None when unset.
    pub loginuid: Option<u32>,
    /// As passed to execve: may be `/proc/self/exe`, `/dev/fd/N` or a script. The paths are
    /// in the shared form the image keeps (`ImageRecord`): decoded into it, then moved (issue
    /// 15); serialized as the bytes were.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_shared_bytes")]
    pub filename: Arc<[u8]>,
    /// The interpreter of a `#!` script, when there is one.
    #[serde(serialize_with = "ser_opt_bytes", deserialize_with = "de_opt_shared_bytes")]
    pub interp: Option<Arc<[u8]>>,
    /// The executable the kernel runs, resolved (inside the container for container processes).
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_shared_bytes")]
    pub exe_path: Arc<[u8]>,
    pub exe_ino: u64,
    pub exe_dev: u32,
    pub exe_nlink: u32,
    pub argc: u32,
    #[serde(serialize_with = "ser_bytes_list", deserialize_with = "de_bytes_list")]
    pub argv: Vec<Vec<u8>>,
    /// `KUBERNETES_EXEC_AUDIT_ID` from the environment (only looked for on session roots).
    pub audit_id: Option<String>,
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub comm: Vec<u8>,
    /// The executable's inode change time (wall clock, ns): later than the start of its
    /// container or session means the file was written there.
    pub exe_ctime_ns: u64,
    /// The working directory the new image starts in (the task's `fs->pwd`, resolved from the
    /// kernel's dentries: inside the container for container processes); empty when unknown.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_shared_bytes")]
    pub cwd: Arc<[u8]>,
    pub flags: ExecFlags,
}

impl ExecEvent {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_ns: self.start_ns }
    }
    pub fn parent_key(&self) -> ProcessKey {
        ProcessKey { pid: self.ppid, start_ns: self.parent_start_ns }
    }
}

/// A new process (not a thread).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForkEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub ppid: u32,
    pub parent_start_ns: u64,
    /// The task that called fork/clone (differs from ppid with CLONE_PARENT).
    pub creator_pid: u32,
    pub pidns_ino: u32,
    pub nspid: u32,
    pub uid: u32,
}

impl ForkEvent {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_ns: self.start_ns }
    }
    pub fn parent_key(&self) -> ProcessKey {
        ProcessKey { pid: self.ppid, start_ns: self.parent_start_ns }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// From a wait(2) status word.
    pub fn from_wait_status(status: u32) -> Self {
        let sig = (status & 0x7f) as i32;
        if sig == 0 {
            ExitStatus::Code(((status >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signal { signal: sig, core_dumped: status & 0x80 != 0 }
        }
    }

    /// The shell's convention: the exit code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal { signal, .. } => 128 + signal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub status: ExitStatus,
}

impl ExitEvent {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_ns: self.start_ns }
    }
}

/// A process entered namespaces with setns(2) (nsenter).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NsJoinEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub nstype: u64,
    pub pidns_for_children_ino: u32,
    pub mntns_ino: u32,
    pub netns_ino: u32,
    pub old_pidns_for_children_ino: u32,
    pub old_mntns_ino: u32,
    pub loginuid: Option<u32>,
    pub uid: u32,
}

impl NsJoinEvent {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_ns: self.start_ns }
    }
}

/// Bytes a member of a session read from its terminal (typed) or wrote to it (shown): see
/// `ebpf/tty.bpf.c`. A secret (echo off, canonical mode) or a read past the session's budget
/// carries its length only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    /// Written to the terminal (shown), not read from it (typed).
    pub output: bool,
    /// Read with echo off in canonical mode (a password prompt): `data` is empty.
    pub secret: bool,
    /// The session's budget for this direction is spent: not copied (sent once).
    pub cut: bool,
    /// Only the first `data.len()` of `bytes` were copied.
    pub partial: bool,
    /// The session's root exited: `cut_in` and `cut_out` are the session's totals.
    pub end: bool,
    /// A secret read whose last byte was a newline: the secret line ended.
    pub eol: bool,
    /// Bytes the call returned.
    pub bytes: u32,
    /// The terminal's local mode flags (termios `c_lflag`) at the call.
    pub lflag: u32,
    pub cut_in: u64,
    pub cut_out: u64,
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub data: Vec<u8>,
}

/// A cgroup of the cgroup2 hierarchy was created (`ebpf/cgroup.bpf.c`): its id and path,
/// told before any process runs in it, so a container whose cgroup is gone by the time its
/// processes' events are read still resolves to its container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMkdirEvent {
    pub ts_ns: u64,
    /// The task that created it (its cgroup is `cgroup_id`).
    pub pid: u32,
    pub cgroup_id: u64,
    /// The new cgroup's id: what its processes' events carry as their `cgroup_id`.
    pub id: u64,
    /// Its depth below the cgroup2 root (1: a child of the root).
    pub level: u32,
    /// Its path from the cgroup2 root (`/kubepods.slice/...`), as the kernel gave it.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub path: Vec<u8>,
    /// The path was longer than the kernel's slot (or unreadable): `path` is not the whole.
    pub truncated: bool,
}

impl TtyEvent {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_ns: self.start_ns }
    }
}

/// What a process did to a watched file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    /// open/openat/openat2; `write` says whether for writing (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC).
    Open,
    Unlink,
    /// `path` is the old name, `path2` the new one.
    Rename,
    Truncate,
    Chmod,
    /// Hard link: `path` the existing file, `path2` the new name.
    Link,
    /// `path2` is the new link's path, `path` what it points to (e.g. /dev/null), as given.
    Symlink,
    /// An io_uring operation on a watched file's descriptor (a write, a read of a secret...)
    /// or a socket set-up (socket, connect, accept, bind, listen): `FileEvent::io_uring` is the
    /// opcode. io_uring path operations (openat, unlinkat, renameat...) take their own op.
    IoUring,
}

impl FileOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            FileOp::Open => "open",
            FileOp::Unlink => "unlink",
            FileOp::Rename => "rename",
            FileOp::Truncate => "truncate",
            FileOp::Chmod => "chmod",
            FileOp::Link => "link",
            FileOp::Symlink => "symlink",
            FileOp::IoUring => "io_uring",
        }
    }
}

/// An operation on a file whose name the kernel was asked to watch (shell histories,
/// /etc/shadow, ssh keys, service account tokens, ...), with the path resolved to absolute
/// (relative paths against the process's cwd, `*at` paths against their directory fd).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub op: FileOp,
    /// Opened (or created, truncated) for writing.
    pub write: bool,
    /// open(2) flags, or the mode for chmod.
    pub flags: u32,
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub path: Vec<u8>,
    #[serde(serialize_with = "ser_opt_bytes", deserialize_with = "de_opt_bytes")]
    pub path2: Option<Vec<u8>>,
    /// The syscall's result: 0 / a file descriptor, or a negative errno.
    pub result: i64,
    /// A path was longer than podtrail keeps (flagged, not dropped). A path whose head was
    /// cut starts with `...`: its base name, what the watch judged, is whole.
    pub truncated: bool,
    /// For an open (or an io_uring operation) that reached the watched file by another name
    /// (a symlink, a hard link, `/proc/self/fd/N`): that name, as given (made absolute).
    /// `path` is then the file itself, resolved from the kernel's dentries.
    #[serde(serialize_with = "ser_opt_bytes", deserialize_with = "de_opt_bytes")]
    pub given: Option<Vec<u8>>,
    /// For an open whose watched name leads elsewhere (a history replaced by a symlink to
    /// /dev/null): the file it opened, resolved from the kernel's dentries.
    #[serde(serialize_with = "ser_opt_bytes", deserialize_with = "de_opt_bytes")]
    pub resolved: Option<Vec<u8>>,
    /// Submitted through io_uring: the opcode (`IORING_OP_*`).
    pub io_uring: Option<u8>,
}

impl FileEvent {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_ns: self.start_ns }
    }
}

/// The name of an io_uring opcode (`IORING_OP_*`, lower case), for span attributes.
pub fn io_uring_op_name(op: u8) -> std::borrow::Cow<'static, str> {
    const NAMES: [&str; 63] = [
        "nop",
        "readv",
        "writev",
        "fsync",
        "read_fixed",
        "write_fixed",
        "poll_add",
        "poll_remove",
        "sync_file_range",
        "sendmsg",
        "recvmsg",
        "timeout",
        "timeout_remove",
        "accept",
        "async_cancel",
        "link_timeout",
        "connect",
        "fallocate",
        "openat",
        "close",
        "files_update",
        "statx",
        "read",
        "write",
        "fadvise",
        "madvise",
        "send",
        "recv",
        "openat2",
        "epoll_ctl",
        "splice",
        "provide_buffers",
        "remove_buffers",
        "tee",
        "shutdown",
        "renameat",
        "unlinkat",
        "mkdirat",
        "symlinkat",
        "linkat",
        "msg_ring",
        "fsetxattr",
        "setxattr",
        "fgetxattr",
        "getxattr",
        "socket",
        "uring_cmd",
        "send_zc",
        "sendmsg_zc",
        "read_multishot",
        "waitid",
        "futex_wait",
        "futex_wake",
        "futex_waitv",
        "fixed_fd_install",
        "ftruncate",
        "bind",
        "listen",
        "recv_zc",
        "epoll_wait",
        "readv_fixed",
        "writev_fixed",
        "pipe",
    ];
    match NAMES.get(op as usize) {
        Some(n) => std::borrow::Cow::Borrowed(n),
        None => std::borrow::Cow::Owned(format!("op_{op}")),
    }
}
