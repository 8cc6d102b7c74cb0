//! The Rust mirror of `ebpf/podtrail.h`, the kernel/user contract.
//!
//! In: nothing. Out: `#[repr(C)]` structs and constants that only the decoder reads.
//! `tests/abi.rs` (and the loader at start-up) compare every struct's size and every field's
//! offset, and every constant's value ([`constants`]: the C side's enums), with the BTF clang
//! wrote into the compiled object, so a change on one side that is not made on the other fails
//! before it can misread a byte.

pub const ABI_VERSION: u32 = 8;

pub const KIND_EXEC: u32 = 1;
pub const KIND_FORK: u32 = 2;
pub const KIND_EXIT: u32 = 3;
pub const KIND_CONNECT: u32 = 4;
pub const KIND_CONNECT_RESULT: u32 = 5;
pub const KIND_NS_JOIN: u32 = 6;
pub const KIND_UDP_SEND: u32 = 7;
pub const KIND_FILE: u32 = 8;
pub const KIND_SOCK: u32 = 9;
pub const KIND_DNS: u32 = 10;
pub const KIND_TTY: u32 = 11;
pub const KIND_CGROUP_MKDIR: u32 = 12;
pub const KIND_MAX: u32 = 13;

/// Human names of the kinds, indexed by kind number (0 is unused).
pub const KIND_NAMES: [&str; KIND_MAX as usize] = [
    "none",
    "exec",
    "fork",
    "exit",
    "connect",
    "connect_result",
    "ns_join",
    "udp_send",
    "file",
    "sock",
    "dns",
    "tty",
    "cgroup_mkdir",
];

pub const FILENAME_MAX: usize = 256;
pub const INTERP_MAX: usize = 256;
pub const EXE_PATH_MAX: usize = 1024;
pub const AUDIT_ID_MAX: usize = 128;
pub const ARGV_MAX: usize = 4096;
pub const CWD_MAX: usize = 512;
pub const COMM_LEN: usize = 16;

/// Where an exec record's variable part starts: filename, interp, exe path, audit id, cwd
/// and argv follow, packed in that order, each exactly its length in [`Exec`].
pub const EXEC_VAR_OFF: usize = 152;
pub const EXEC_MAX_LEN: usize =
    EXEC_VAR_OFF + FILENAME_MAX + INTERP_MAX + EXE_PATH_MAX + AUDIT_ID_MAX + CWD_MAX + ARGV_MAX;
const _: () = assert!(std::mem::size_of::<Exec>() == EXEC_VAR_OFF);

pub const EXEC_F_ARGV_TRUNCATED: u32 = 1 << 0;
pub const EXEC_F_FILENAME_TRUNC: u32 = 1 << 1;
pub const EXEC_F_EXE_TRUNCATED: u32 = 1 << 2;
pub const EXEC_F_FILELESS: u32 = 1 << 3;
pub const EXEC_F_TTY: u32 = 1 << 4;
pub const EXEC_F_PARENT_OTHER_CGROUP: u32 = 1 << 5;
pub const EXEC_F_PARENT_OTHER_PIDNS: u32 = 1 << 6;
pub const EXEC_F_ENV_SCANNED: u32 = 1 << 7;
pub const EXEC_F_AUDIT_ID_TRUNC: u32 = 1 << 8;
pub const EXEC_F_ENV_TRUNCATED: u32 = 1 << 9;
pub const EXEC_F_CWD_TRUNCATED: u32 = 1 << 10;

pub const RESULT_SYSCALL: u8 = 1;
pub const RESULT_TCP_STATE: u8 = 2;

pub const FILE_OPEN: u32 = 0;
pub const FILE_UNLINK: u32 = 1;
pub const FILE_RENAME: u32 = 2;
pub const FILE_TRUNCATE: u32 = 3;
pub const FILE_CHMOD: u32 = 4;
pub const FILE_LINK: u32 = 5;
pub const FILE_SYMLINK: u32 = 6;
pub const FILE_URING: u32 = 7;
pub const WATCH_READ: u32 = 1 << 7;
pub const FILE_F_WRITE: u32 = 1 << 0;
pub const FILE_F_TRUNCATED: u32 = 1 << 1;
pub const FILE_F_PATH_FD: u32 = 1 << 2;
pub const FILE_F_RESOLVED: u32 = 1 << 3;
pub const FILE_F_PATH_TAIL: u32 = 1 << 4;
pub const FILE_F_URING: u32 = 1 << 5;
pub const FILE_F_ALIAS: u32 = 1 << 6;
pub const FILE_F_FOLLOWED: u32 = 1 << 7;
pub const FILE_F_PATH2_TAIL: u32 = 1 << 8;
pub const PATH_MAX: usize = 256;
pub const DIR_MAX: usize = 512;
pub const WATCH_NAME_MAX: usize = 64;

/// Counters of in-flight entries (the `inflight` map's indexes): started and finished per map.
pub const INFLIGHT_FILE_STARTED: u32 = 0;
pub const INFLIGHT_FILE_FINISHED: u32 = 1;
pub const INFLIGHT_SETNS_STARTED: u32 = 2;
pub const INFLIGHT_SETNS_FINISHED: u32 = 3;
pub const INFLIGHT_CONNECT_STARTED: u32 = 4;
pub const INFLIGHT_CONNECT_FINISHED: u32 = 5;
pub const INFLIGHT_MAX: u32 = 6;

pub const SOCK_SENDTO: u8 = 1;
pub const SOCK_LISTEN: u8 = 2;
pub const SOCK_ACCEPT: u8 = 3;
pub const SOCK_CREATE: u8 = 4;

pub const DNS_PAYLOAD_MAX: usize = 512;
pub const DNS_F_TRUNCATED: u8 = 1 << 0;
pub const TTY_F_OUTPUT: u32 = 1 << 0;
pub const TTY_F_SECRET: u32 = 1 << 1;
pub const TTY_F_CUT: u32 = 1 << 2;
pub const TTY_F_PARTIAL: u32 = 1 << 3;
pub const TTY_F_END: u32 = 1 << 4;
pub const TTY_F_EOL: u32 = 1 << 5;
pub const TTY_DATA_MAX: usize = 1024;
pub const TTY_DATA_OFF: usize = 72;
pub const CGROUP_PATH_MAX: usize = 512;
pub const CGROUP_PATH_OFF: usize = 56;
pub const CGROUP_F_TRUNCATED: u16 = 1 << 0;

pub const FILTER_ALL: u32 = 0;
pub const FILTER_CONTAINERS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub kind: u32,
    pub len: u32,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Exec {
    pub h: Header,
    pub ppid: u32,
    pub nspid: u32,
    pub parent_start_ns: u64,
    pub parent_cgroup_id: u64,
    pub pidns_ino: u32,
    pub parent_pidns_ino: u32,
    pub mntns_ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub loginuid: u32,
    pub flags: u32,
    pub exe_ino: u64,
    pub exe_dev: u32,
    pub exe_nlink: u32,
    pub argc: u32,
    pub filename_len: u16,
    pub interp_len: u16,
    pub exe_path_len: u16,
    pub audit_id_len: u16,
    pub argv_len: u16,
    pub cwd_len: u16,
    pub comm: [u8; COMM_LEN],
    pub exe_ctime_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Fork {
    pub h: Header,
    pub ppid: u32,
    pub creator_pid: u32,
    pub parent_start_ns: u64,
    pub pidns_ino: u32,
    pub nspid: u32,
    pub uid: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Exit {
    pub h: Header,
    pub exit_code: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NsJoin {
    pub h: Header,
    pub nstype: u64,
    pub pidns_for_children_ino: u32,
    pub mntns_ino: u32,
    pub netns_ino: u32,
    pub old_pidns_for_children_ino: u32,
    pub old_mntns_ino: u32,
    pub loginuid: u32,
    pub uid: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Connect {
    pub h: Header,
    pub cookie: u64,
    pub family: u8,
    pub protocol: u8,
    pub sock_type: u8,
    pub _pad0: u8,
    pub dport: u16,
    pub _pad1: u16,
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectResult {
    pub h: Header,
    pub cookie: u64,
    pub error: i32,
    pub phase: u8,
    pub family: u8,
    pub dport: u16,
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpSend {
    pub h: Header,
    pub cookie: u64,
    pub bytes: u32,
    pub family: u8,
    pub _pad0: u8,
    pub dport: u16,
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Sock {
    pub h: Header,
    pub cookie: u64,
    pub result: i32,
    pub op: u8,
    pub family: u8,
    pub protocol: u8,
    pub sock_type: u8,
    pub peer_port: u16,
    pub local_port: u16,
    pub _pad0: u32,
    pub peer_addr: [u8; 16],
    pub local_addr: [u8; 16],
}

/// A DNS message delivered to a socket; its first `payload_len` bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Dns {
    pub h: Header,
    pub payload_len: u16,
    pub msg_len: u16,
    pub family: u8,
    pub flags: u8,
    pub sport: u16,
    pub saddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct File {
    pub h: Header,
    pub result: i64,
    pub op: u32,
    pub flags: u32,
    pub path_len: u16,
    pub path2_len: u16,
    pub dir_len: u16,
    pub dir2_len: u16,
    pub fflags: u32,
    pub uring_op: u32,
    pub path: [u8; PATH_MAX],
    pub path2: [u8; PATH_MAX],
    pub dir: [u8; DIR_MAX],
    pub dir2: [u8; DIR_MAX],
}

impl Default for File {
    fn default() -> Self {
        File {
            h: Header::default(),
            result: 0,
            op: 0,
            flags: 0,
            path_len: 0,
            path2_len: 0,
            dir_len: 0,
            dir2_len: 0,
            fflags: 0,
            uring_op: 0,
            path: [0; PATH_MAX],
            path2: [0; PATH_MAX],
            dir: [0; DIR_MAX],
            dir2: [0; DIR_MAX],
        }
    }
}

/// A terminal read or write (`pt_tty`): variable-length, `data` holds `data_len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Tty {
    pub h: Header,
    pub bytes: u32,
    pub data_len: u32,
    pub flags: u32,
    pub lflag: u32,
    pub cut_in: u64,
    pub cut_out: u64,
    pub data: [u8; TTY_DATA_MAX],
}

impl Default for Tty {
    fn default() -> Self {
        Tty {
            h: Header::default(),
            bytes: 0,
            data_len: 0,
            flags: 0,
            lflag: 0,
            cut_in: 0,
            cut_out: 0,
            data: [0; TTY_DATA_MAX],
        }
    }
}

/// A cgroup2 cgroup was created (`pt_cgroup_mkdir`): variable-length, `path` holds
/// `path_len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupMkdir {
    pub h: Header,
    pub id: u64,
    pub level: u32,
    pub path_len: u16,
    pub flags: u16,
    pub path: [u8; CGROUP_PATH_MAX],
}

impl Default for CgroupMkdir {
    fn default() -> Self {
        CgroupMkdir { h: Header::default(), id: 0, level: 0, path_len: 0, flags: 0, path: [0; CGROUP_PATH_MAX] }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupDrops {
    pub events: u64,
    pub last_ts_ns: u64,
}

/// Marks the structs above: repr(C), integer fields and explicit padding only, so any byte
/// pattern is a valid value.
///
/// # Safety
/// Implement only for such structs.
pub(crate) unsafe trait Plain: Copy + Default {}
// SAFETY: see Plain: every struct here is repr(C) with integer fields and explicit padding.
unsafe impl Plain for Header {}
unsafe impl Plain for Exec {}
unsafe impl Plain for Fork {}
unsafe impl Plain for Exit {}
unsafe impl Plain for NsJoin {}
unsafe impl Plain for Connect {}
unsafe impl Plain for ConnectResult {}
unsafe impl Plain for UdpSend {}
unsafe impl Plain for Sock {}
unsafe impl Plain for Dns {}
unsafe impl Plain for CgroupDrops {}
unsafe impl Plain for File {}
unsafe impl Plain for Tty {}
unsafe impl Plain for CgroupMkdir {}
// SAFETY: as for Plain.
unsafe impl aya::Pod for CgroupDrops {}
// read from `file_inflight` only to count its entries
unsafe impl aya::Pod for File {}

/// One field of a mirrored struct: name, offset, size. Used by the ABI check.
pub type FieldLayout = (&'static str, usize, usize);

macro_rules! layout {
    ($t:ty, $c:literal, [$($f:ident),* $(,)?]) => {
        ($c, std::mem::size_of::<$t>(), vec![$((stringify!($f), std::mem::offset_of!($t, $f), field_size(|s: &$t| &s.$f))),*])
    };
}

fn field_size<T, F>(_: impl Fn(&T) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// Every mirrored constant under its C name (`PT_` + the Rust name), for the comparison with
/// the enum constants in the object's BTF.
pub fn constants() -> Vec<(&'static str, i64)> {
    macro_rules! c {
        ($n:ident) => {
            (concat!("PT_", stringify!($n)), $n as i64)
        };
    }
    vec![
        c!(ABI_VERSION),
        c!(KIND_EXEC),
        c!(KIND_FORK),
        c!(KIND_EXIT),
        c!(KIND_CONNECT),
        c!(KIND_CONNECT_RESULT),
        c!(KIND_NS_JOIN),
        c!(KIND_UDP_SEND),
        c!(KIND_FILE),
        c!(KIND_SOCK),
        c!(KIND_DNS),
        c!(KIND_TTY),
        c!(KIND_CGROUP_MKDIR),
        c!(KIND_MAX),
        c!(FILENAME_MAX),
        c!(INTERP_MAX),
        c!(EXE_PATH_MAX),
        c!(AUDIT_ID_MAX),
        c!(ARGV_MAX),
        c!(CWD_MAX),
        c!(COMM_LEN),
        c!(EXEC_VAR_OFF),
        c!(EXEC_MAX_LEN),
        c!(EXEC_F_ARGV_TRUNCATED),
        c!(EXEC_F_FILENAME_TRUNC),
        c!(EXEC_F_EXE_TRUNCATED),
        c!(EXEC_F_FILELESS),
        c!(EXEC_F_TTY),
        c!(EXEC_F_PARENT_OTHER_CGROUP),
        c!(EXEC_F_PARENT_OTHER_PIDNS),
        c!(EXEC_F_ENV_SCANNED),
        c!(EXEC_F_AUDIT_ID_TRUNC),
        c!(EXEC_F_ENV_TRUNCATED),
        c!(EXEC_F_CWD_TRUNCATED),
        c!(RESULT_SYSCALL),
        c!(RESULT_TCP_STATE),
        c!(FILE_OPEN),
        c!(FILE_UNLINK),
        c!(FILE_RENAME),
        c!(FILE_TRUNCATE),
        c!(FILE_CHMOD),
        c!(FILE_LINK),
        c!(FILE_SYMLINK),
        c!(FILE_URING),
        c!(WATCH_READ),
        c!(FILE_F_WRITE),
        c!(FILE_F_TRUNCATED),
        c!(FILE_F_PATH_FD),
        c!(FILE_F_RESOLVED),
        c!(FILE_F_PATH_TAIL),
        c!(FILE_F_URING),
        c!(FILE_F_ALIAS),
        c!(FILE_F_FOLLOWED),
        c!(FILE_F_PATH2_TAIL),
        c!(PATH_MAX),
        c!(DIR_MAX),
        c!(WATCH_NAME_MAX),
        c!(SOCK_SENDTO),
        c!(SOCK_LISTEN),
        c!(SOCK_ACCEPT),
        c!(SOCK_CREATE),
        c!(DNS_PAYLOAD_MAX),
        c!(DNS_F_TRUNCATED),
        c!(FILTER_ALL),
        c!(FILTER_CONTAINERS),
        c!(TTY_F_OUTPUT),
        c!(TTY_F_SECRET),
        c!(TTY_F_CUT),
        c!(TTY_F_PARTIAL),
        c!(TTY_F_END),
        c!(TTY_F_EOL),
        c!(TTY_DATA_MAX),
        c!(TTY_DATA_OFF),
        c!(CGROUP_PATH_MAX),
        c!(CGROUP_PATH_OFF),
        c!(CGROUP_F_TRUNCATED),
        c!(INFLIGHT_FILE_STARTED),
        c!(INFLIGHT_FILE_FINISHED),
        c!(INFLIGHT_SETNS_STARTED),
        c!(INFLIGHT_SETNS_FINISHED),
        c!(INFLIGHT_CONNECT_STARTED),
        c!(INFLIGHT_CONNECT_FINISHED),
        c!(INFLIGHT_MAX),
    ]
}

/// Every mirrored struct: its C name, its size, and its fields' layouts.
pub fn layouts() -> Vec<(&'static str, usize, Vec<FieldLayout>)> {
    vec![
        layout!(Header, "pt_header", [kind, len, ts_ns, pid, tid, start_ns, cgroup_id]),
        layout!(
            Exec,
            "pt_exec",
            [
                h,
                ppid,
                nspid,
                parent_start_ns,
                parent_cgroup_id,
                pidns_ino,
                parent_pidns_ino,
                mntns_ino,
                uid,
                gid,
                euid,
                loginuid,
                flags,
                exe_ino,
                exe_dev,
                exe_nlink,
                argc,
                filename_len,
                interp_len,
                exe_path_len,
                audit_id_len,
                argv_len,
                cwd_len,
                comm,
                exe_ctime_ns
            ]
        ),
        layout!(Fork, "pt_fork", [h, ppid, creator_pid, parent_start_ns, pidns_ino, nspid, uid, _pad0]),
        layout!(Exit, "pt_exit", [h, exit_code, _pad0]),
        layout!(
            NsJoin,
            "pt_ns_join",
            [
                h,
                nstype,
                pidns_for_children_ino,
                mntns_ino,
                netns_ino,
                old_pidns_for_children_ino,
                old_mntns_ino,
                loginuid,
                uid,
                _pad0
            ]
        ),
        layout!(Connect, "pt_connect", [h, cookie, family, protocol, sock_type, _pad0, dport, _pad1, daddr]),
        layout!(ConnectResult, "pt_connect_result", [h, cookie, error, phase, family, dport, daddr]),
        layout!(UdpSend, "pt_udp_send", [h, cookie, bytes, family, _pad0, dport, daddr]),
        layout!(
            Sock,
            "pt_sock",
            [h, cookie, result, op, family, protocol, sock_type, peer_port, local_port, _pad0, peer_addr, local_addr]
        ),
        layout!(Dns, "pt_dns", [h, payload_len, msg_len, family, flags, sport, saddr]),
        layout!(CgroupDrops, "pt_cgroup_drops", [events, last_ts_ns]),
        layout!(Tty, "pt_tty", [h, bytes, data_len, flags, lflag, cut_in, cut_out, data]),
        layout!(CgroupMkdir, "pt_cgroup_mkdir", [h, id, level, path_len, flags, path]),
        layout!(
            File,
            "pt_file",
            [h, result, op, flags, path_len, path2_len, dir_len, dir2_len, fflags, uring_op, path, path2, dir, dir2]
        ),
    ]
}

/// Reads a `T` from the start of `bytes` if there are enough of them.
pub(crate) fn read<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked above; T: Plain, for which every bit pattern is valid; read_unaligned copes with the ring's 8-byte alignment
    // not being guaranteed for slices handed in by tests or fuzzers.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}
