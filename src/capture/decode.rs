//! Decoder: ring buffer bytes -> owned `Event`s.
//!
//! In: one ring buffer record. Out: an `Event`, or a `DecodeError` whose `reason()` the reader
//! counts. This is the only code that reads the kernel's structs. It never panics, whatever
//! the bytes (the property tests below feed it random and half-valid records): lengths come
//! from the record and are checked against the slots they claim to fill.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::abi::{self, read};
use super::event::*;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record kind {kind} has {got} bytes, needs {need}")]
    Truncated { kind: u32, got: usize, need: usize },
    #[error("record claims {claimed} bytes but {got} arrived")]
    LengthMismatch { claimed: usize, got: usize },
    #[error("field {0} overruns its slot")]
    FieldOverrun(&'static str),
    #[error("unknown address family {0}")]
    BadFamily(u8),
    #[error("unknown protocol {0}")]
    BadProtocol(u8),
}

impl DecodeError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short(_) => "short",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::FieldOverrun(_) => "field_overrun",
            DecodeError::BadFamily(_) => "bad_family",
            DecodeError::BadProtocol(_) => "bad_protocol",
        }
    }

    pub const REASONS: [&'static str; 7] =
        ["short", "unknown_kind", "truncated", "length_mismatch", "field_overrun", "bad_family", "bad_protocol"];
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let h: abi::Header = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    // The ring buffer may round a record up; the header's len must fit in what arrived.
    let claimed = h.len as usize;
    if claimed > bytes.len() || claimed < std::mem::size_of::<abi::Header>() {
        return Err(DecodeError::LengthMismatch { claimed, got: bytes.len() });
    }
    let bytes = &bytes[..claimed];
    match h.kind {
        abi::KIND_EXEC => decode_exec(bytes),
        abi::KIND_FORK => {
            let f: abi::Fork = need(bytes, h.kind)?;
            Ok(Event::Fork(ForkEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                start_ns: h.start_ns,
                cgroup_id: h.cgroup_id,
                ppid: f.ppid,
                parent_start_ns: f.parent_start_ns,
                creator_pid: f.creator_pid,
                pidns_ino: f.pidns_ino,
                nspid: f.nspid,
                uid: f.uid,
            }))
        }
        abi::KIND_EXIT => {
            let x: abi::Exit = need(bytes, h.kind)?;
            Ok(Event::Exit(ExitEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                start_ns: h.start_ns,
                cgroup_id: h.cgroup_id,
                status: ExitStatus::from_wait_status(x.exit_code),
            }))
        }
        abi::KIND_CONNECT => {
            let c: abi::Connect = need(bytes, h.kind)?;
            let transport = match c.protocol {
                6 => Transport::Tcp,
                17 => Transport::Udp,
                p => return Err(DecodeError::BadProtocol(p)),
            };
            let (addr, mapped) = address(c.family, &c.daddr)?;
            Ok(Event::Connect(ConnectEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                cgroup_id: h.cgroup_id,
                cookie: c.cookie,
                transport,
                addr,
                port: c.dport,
                mapped,
            }))
        }
        abi::KIND_CONNECT_RESULT => {
            let r: abi::ConnectResult = need(bytes, h.kind)?;
            let (phase, final_addr, final_port) = match r.phase {
                abi::RESULT_TCP_STATE => (ResultPhase::TcpState, Some(address(r.family, &r.daddr)?.0), Some(r.dport)),
                _ => (ResultPhase::Syscall, None, None),
            };
            Ok(Event::ConnectResult(ConnectResultEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                cookie: r.cookie,
                error: r.error,
                phase,
                final_addr,
                final_port,
            }))
        }
        abi::KIND_NS_JOIN => {
            let j: abi::NsJoin = need(bytes, h.kind)?;
            Ok(Event::NsJoin(NsJoinEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                start_ns: h.start_ns,
                cgroup_id: h.cgroup_id,
                nstype: j.nstype,
                pidns_for_children_ino: j.pidns_for_children_ino,
                mntns_ino: j.mntns_ino,
                netns_ino: j.netns_ino,
                old_pidns_for_children_ino: j.old_pidns_for_children_ino,
                old_mntns_ino: j.old_mntns_ino,
                loginuid: loginuid(j.loginuid),
                uid: j.uid,
            }))
        }
        abi::KIND_UDP_SEND => {
            let u: abi::UdpSend = need(bytes, h.kind)?;
            let dest = match u.family {
                0 => None,
                f => Some((address(f, &u.daddr)?.0, u.dport)),
            };
            Ok(Event::UdpSend(UdpSendEvent {
                ts_ns: h.ts_ns,
                cgroup_id: h.cgroup_id,
                cookie: u.cookie,
                bytes: u.bytes,
                dest,
            }))
        }
        abi::KIND_FILE => decode_file(bytes),
        abi::KIND_SOCK => decode_sock(bytes),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

fn decode_sock(rec: &[u8]) -> Result<Event, DecodeError> {
    let s: abi::Sock = need(rec, abi::KIND_SOCK)?;
    let op = match s.op {
        abi::SOCK_SENDTO => SockOp::SendTo,
        abi::SOCK_LISTEN => SockOp::Listen,
        abi::SOCK_ACCEPT => SockOp::Accept,
        abi::SOCK_CREATE => SockOp::Create,
        _ => return Err(DecodeError::FieldOverrun("sock op")),
    };
    let transport = Transport::from_socket(s.protocol, s.sock_type).ok_or(DecodeError::BadProtocol(s.protocol))?;
    let (peer, local) = match op {
        SockOp::SendTo => (Some((address(s.family, &s.peer_addr)?.0, s.peer_port)), None),
        SockOp::Listen => (None, Some((address(s.family, &s.local_addr)?.0, s.local_port))),
        SockOp::Accept => (
            Some((address(s.family, &s.peer_addr)?.0, s.peer_port)),
            Some((address(s.family, &s.local_addr)?.0, s.local_port)),
        ),
        SockOp::Create => {
            address(s.family, &s.peer_addr)?;
            (None, None)
        }
    };
    Ok(Event::Sock(SockEvent {
        ts_ns: s.h.ts_ns,
        pid: s.h.pid,
        tid: s.h.tid,
        start_ns: s.h.start_ns,
        cgroup_id: s.h.cgroup_id,
        op,
        cookie: s.cookie,
        transport,
        peer,
        local,
        result: s.result,
    }))
}

fn decode_file(rec: &[u8]) -> Result<Event, DecodeError> {
    let f: abi::File = need(rec, abi::KIND_FILE)?;
    let op = match f.op {
        abi::FILE_OPEN => FileOp::Open,
        abi::FILE_UNLINK => FileOp::Unlink,
        abi::FILE_RENAME => FileOp::Rename,
        abi::FILE_TRUNCATE => FileOp::Truncate,
        abi::FILE_CHMOD => FileOp::Chmod,
        abi::FILE_LINK => FileOp::Link,
        abi::FILE_SYMLINK => FileOp::Symlink,
        abi::FILE_URING => FileOp::IoUring,
        _ => return Err(DecodeError::FieldOverrun("file op")),
    };
    let field = |buf: &[u8], len: u16, name: &'static str| -> Result<Vec<u8>, DecodeError> {
        buf.get(..len as usize).map(<[u8]>::to_vec).ok_or(DecodeError::FieldOverrun(name))
    };
    let ff = f.fflags;
    let path = field(&f.path, f.path_len, "path")?;
    let path2 = field(&f.path2, f.path2_len, "path2")?;
    let dir = join_leaf_first(&field(&f.dir, f.dir_len, "dir")?);
    let dir2 = join_leaf_first(&field(&f.dir2, f.dir2_len, "dir2")?);
    // a path whose head was cut cannot be made absolute: its tail, marked
    let given = |dir: &[u8], p: &[u8], tail: u32| {
        if ff & tail != 0 {
            [b"...".as_slice(), p].concat()
        } else {
            absolute(dir, p)
        }
    };
    let mut given_name = None;
    let mut resolved = None;
    let (path, path2) = if ff & abi::FILE_F_RESOLVED != 0 {
        // dir2 is the file itself, from its dentries; path/dir the name as given (if any)
        let file = if dir2.is_empty() { b"/".to_vec() } else { dir2 };
        let as_given = (!path.is_empty()).then(|| given(&dir, &path, abi::FILE_F_PATH_TAIL));
        if ff & (abi::FILE_F_FOLLOWED | abi::FILE_F_PATH_TAIL) != 0 {
            // the file it led to is the subject (a name given only in part, too: the file
            // is the whole of it)
            given_name = as_given.filter(|g| *g != file);
            (file, None)
        } else {
            let g = as_given.unwrap_or_default();
            resolved = (file != g).then_some(file);
            (g, None)
        }
    } else if ff & abi::FILE_F_PATH_FD != 0 {
        (dir, None)
    } else if op == FileOp::Symlink {
        // the target stays as given; the new link's name is resolved
        (path, Some(given(&dir2, &path2, abi::FILE_F_PATH2_TAIL)))
    } else {
        (
            if path.is_empty() { path } else { given(&dir, &path, abi::FILE_F_PATH_TAIL) },
            (!path2.is_empty()).then(|| given(&dir2, &path2, abi::FILE_F_PATH2_TAIL)),
        )
    };
    Ok(Event::File(FileEvent {
        ts_ns: f.h.ts_ns,
        pid: f.h.pid,
        tid: f.h.tid,
        start_ns: f.h.start_ns,
        cgroup_id: f.h.cgroup_id,
        op,
        write: ff & abi::FILE_F_WRITE != 0,
        flags: f.flags,
        path,
        path2,
        result: f.result,
        truncated: ff & abi::FILE_F_TRUNCATED != 0,
        given: given_name,
        resolved,
        io_uring: (ff & abi::FILE_F_URING != 0).then_some(f.uring_op as u8),
    }))
}

/// `path` made absolute against `dir` (already absolute: as it is), with `.` and `..`
/// components folded the way the kernel would walk them.
fn absolute(dir: &[u8], path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let joined: Vec<u8>;
    let full: &[u8] = if path.first() == Some(&b'/') {
        path
    } else {
        joined = [dir, b"/", path].concat();
        &joined
    };
    for p in full.split(|&b| b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(full.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn need<T: abi::Plain>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    read(bytes).ok_or(DecodeError::Truncated { kind, got: bytes.len(), need: std::mem::size_of::<T>() })
}

fn loginuid(v: u32) -> Option<u32> {
    (v != u32::MAX).then_some(v)
}

/// Destination address; IPv4-mapped IPv6 (`::ffff:a.b.c.d`, Java's habit) becomes IPv4.
fn address(family: u8, raw: &[u8; 16]) -> Result<(IpAddr, bool), DecodeError> {
    match family {
        2 => Ok((IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])), false)),
        10 => {
            let v6 = Ipv6Addr::from(*raw);
            match v6.to_ipv4_mapped() {
                Some(v4) => Ok((IpAddr::V4(v4), true)),
                None => Ok((IpAddr::V6(v6), false)),
            }
        }
        f => Err(DecodeError::BadFamily(f)),
    }
}

/// The bytes of a slot: `len` bytes at `off`, which must stay inside both the slot and the
/// record.
fn slot<'a>(rec: &'a [u8], off: usize, len: usize, max: usize, name: &'static str) -> Result<&'a [u8], DecodeError> {
    if len > max {
        return Err(DecodeError::FieldOverrun(name));
    }
    if len == 0 {
        return Ok(&[]);
    }
    rec.get(off..off + len).ok_or(DecodeError::FieldOverrun(name))
}

fn decode_exec(rec: &[u8]) -> Result<Event, DecodeError> {
    let e: abi::Exec = need(rec, abi::KIND_EXEC)?;
    let f = e.flags;
    let filename = slot(rec, abi::EXEC_FILENAME_OFF, e.filename_len as usize, abi::FILENAME_MAX, "filename")?;
    let interp = slot(rec, abi::EXEC_INTERP_OFF, e.interp_len as usize, abi::INTERP_MAX, "interp")?;
    let exe = slot(rec, abi::EXEC_EXE_PATH_OFF, e.exe_path_len as usize, abi::EXE_PATH_MAX, "exe_path")?;
    let audit = slot(rec, abi::EXEC_AUDIT_ID_OFF, e.audit_id_len as usize, abi::AUDIT_ID_MAX, "audit_id")?;
    let cwd = slot(rec, abi::EXEC_CWD_OFF, e.cwd_len as usize, abi::CWD_MAX, "cwd")?;
    let argv = slot(rec, abi::EXEC_ARGV_OFF, e.argv_len as usize, abi::ARGV_MAX, "argv")?;
    let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
    Ok(Event::Exec(ExecEvent {
        ts_ns: e.h.ts_ns,
        pid: e.h.pid,
        tid: e.h.tid,
        start_ns: e.h.start_ns,
        cgroup_id: e.h.cgroup_id,
        ppid: e.ppid,
        parent_start_ns: e.parent_start_ns,
        parent_cgroup_id: e.parent_cgroup_id,
        nspid: e.nspid,
        pidns_ino: e.pidns_ino,
        parent_pidns_ino: e.parent_pidns_ino,
        mntns_ino: e.mntns_ino,
        uid: e.uid,
        gid: e.gid,
        euid: e.euid,
        loginuid: loginuid(e.loginuid),
        filename: filename.to_vec(),
        interp: (!interp.is_empty()).then(|| interp.to_vec()),
        exe_path: join_leaf_first(exe),
        exe_ino: e.exe_ino,
        exe_dev: e.exe_dev,
        exe_nlink: e.exe_nlink,
        argc: e.argc,
        argv: split_argv(argv),
        audit_id: (!audit.is_empty()).then(|| crate::text::escape(audit)),
        comm: e.comm[..comm_len].to_vec(),
        exe_ctime_ns: e.exe_ctime_ns,
        // the walk writes nothing for the root itself
        cwd: if cwd.is_empty() { b"/".to_vec() } else { join_leaf_first(cwd) },
        flags: ExecFlags {
            argv_truncated: f & abi::EXEC_F_ARGV_TRUNCATED != 0,
            filename_truncated: f & abi::EXEC_F_FILENAME_TRUNC != 0,
            exe_truncated: f & abi::EXEC_F_EXE_TRUNCATED != 0,
            fileless: f & abi::EXEC_F_FILELESS != 0,
            tty: f & abi::EXEC_F_TTY != 0,
            parent_other_cgroup: f & abi::EXEC_F_PARENT_OTHER_CGROUP != 0,
            parent_other_pidns: f & abi::EXEC_F_PARENT_OTHER_PIDNS != 0,
            env_scanned: f & abi::EXEC_F_ENV_SCANNED != 0,
            audit_id_truncated: f & abi::EXEC_F_AUDIT_ID_TRUNC != 0,
            env_truncated: f & abi::EXEC_F_ENV_TRUNCATED != 0,
            cwd_truncated: f & abi::EXEC_F_CWD_TRUNCATED != 0,
        },
    }))
}

/// argv is NUL-separated strings; the last one lacks its NUL when argv was cut.
fn split_argv(raw: &[u8]) -> Vec<Vec<u8>> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

/// The kernel writes path components leaf first, each NUL-terminated.
fn join_leaf_first(raw: &[u8]) -> Vec<u8> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    for part in raw.split(|&b| b == 0).rev() {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn exec_record(argv: &[&[u8]], exe_leaf_first: &[u8], flags: u32) -> Vec<u8> {
        let mut rec = vec![0u8; abi::EXEC_MAX_LEN];
        let mut raw_argv = Vec::new();
        for a in argv {
            raw_argv.extend_from_slice(a);
            raw_argv.push(0);
        }
        let len = abi::EXEC_ARGV_OFF + raw_argv.len();
        let e = abi::Exec {
            h: abi::Header {
                kind: abi::KIND_EXEC,
                len: len as u32,
                ts_ns: 5,
                pid: 42,
                tid: 42,
                start_ns: 7,
                cgroup_id: 9,
            },
            ppid: 1,
            loginuid: u32::MAX,
            flags,
            exe_path_len: exe_leaf_first.len() as u16,
            argv_len: raw_argv.len() as u16,
            comm: *b"busybox\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        // SAFETY: Exec is Plain (repr(C), integers only); we copy its bytes.
        let raw = unsafe { std::slice::from_raw_parts(&e as *const _ as *const u8, std::mem::size_of::<abi::Exec>()) };
        rec[..raw.len()].copy_from_slice(raw);
        rec[abi::EXEC_EXE_PATH_OFF..abi::EXEC_EXE_PATH_OFF + exe_leaf_first.len()].copy_from_slice(exe_leaf_first);
        rec[abi::EXEC_ARGV_OFF..len].copy_from_slice(&raw_argv);
        rec.truncate(len);
        rec
    }

    #[test]
    fn exec_record_decodes_argv_and_path() {
        let rec = exec_record(&[b"wget", b"-q", b"a b", b"\xff"], b"busybox\0bin\0", abi::EXEC_F_TTY);
        let Event::Exec(e) = decode(&rec).unwrap() else { panic!("not exec") };
        assert_eq!(e.argv, vec![b"wget".to_vec(), b"-q".to_vec(), b"a b".to_vec(), b"\xff".to_vec()]);
        assert_eq!(e.exe_path, b"/bin/busybox");
        assert!(e.flags.tty);
        assert_eq!(e.loginuid, None);
        assert_eq!(e.comm, b"busybox");
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        assert_eq!(absolute(b"/root", b".bash_history"), b"/root/.bash_history");
        assert_eq!(absolute(b"/root", b"../etc/./shadow"), b"/etc/shadow");
        assert_eq!(absolute(b"/tmp", b"/root/.ash_history"), b"/root/.ash_history");
        assert_eq!(absolute(b"", b"x"), b"/x");
    }

    #[test]
    fn truncated_argv_keeps_the_partial_last_argument() {
        assert_eq!(split_argv(b"ab\0cd"), vec![b"ab".to_vec(), b"cd".to_vec()]);
        assert_eq!(split_argv(b"ab\0\0"), vec![b"ab".to_vec(), b"".to_vec()]);
        assert!(split_argv(b"").is_empty());
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let mut raw = [0u8; 16];
        raw[10] = 0xff;
        raw[11] = 0xff;
        raw[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(address(10, &raw).unwrap(), (IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), true));
        assert_eq!(address(7, &raw), Err(DecodeError::BadFamily(7)));
    }

    #[test]
    fn exit_status_words() {
        assert_eq!(ExitStatus::from_wait_status(3 << 8), ExitStatus::Code(3));
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus::Signal { signal: 9, core_dumped: false });
        assert_eq!(ExitStatus::from_wait_status(0x80 | 11).shell_code(), 139);
    }

    #[test]
    fn lies_about_lengths_are_errors_not_panics() {
        let mut rec = exec_record(&[b"sh"], b"sh\0bin\0", 0);
        // argv_len larger than the record
        let off = std::mem::offset_of!(abi::Exec, argv_len);
        rec[off..off + 2].copy_from_slice(&4000u16.to_le_bytes());
        assert_eq!(decode(&rec), Err(DecodeError::FieldOverrun("argv")));
        assert_eq!(decode(&rec[..10]), Err(DecodeError::Short(10)));
    }

    fn sock_bytes(s: &abi::Sock) -> Vec<u8> {
        // SAFETY: Sock is Plain (repr(C), integers only): its bytes are all initialised.
        unsafe { std::slice::from_raw_parts(s as *const abi::Sock as *const u8, std::mem::size_of::<abi::Sock>()) }
            .to_vec()
    }

    #[test]
    fn sock_records_decode_by_op() {
        let mut s = abi::Sock {
            h: abi::Header {
                kind: abi::KIND_SOCK,
                len: std::mem::size_of::<abi::Sock>() as u32,
                pid: 7,
                ..Default::default()
            },
            op: abi::SOCK_ACCEPT,
            family: 2,
            protocol: 6,
            sock_type: 1,
            peer_port: 51000,
            local_port: 4444,
            result: 5,
            ..Default::default()
        };
        s.peer_addr[..4].copy_from_slice(&[203, 0, 113, 9]);
        s.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let bytes = sock_bytes(&s);
        let Ok(Event::Sock(e)) = decode(&bytes) else { panic!("{:?}", decode(&bytes)) };
        assert_eq!(e.op, SockOp::Accept);
        assert_eq!(e.transport, Transport::Tcp);
        assert_eq!(e.peer, Some(("203.0.113.9".parse().unwrap(), 51000)));
        assert_eq!(e.local, Some(("10.0.0.1".parse().unwrap(), 4444)));
        s.op = abi::SOCK_CREATE;
        s.protocol = 1;
        s.sock_type = 3;
        let bytes = sock_bytes(&s);
        let Ok(Event::Sock(e)) = decode(&bytes) else { panic!() };
        assert_eq!((e.op, e.transport, e.peer), (SockOp::Create, Transport::Icmp, None));
        s.op = 99;
        let bytes = sock_bytes(&s);
        assert_eq!(decode(&bytes), Err(DecodeError::FieldOverrun("sock op")));
    }

    fn file_bytes(f: &abi::File) -> Vec<u8> {
        // SAFETY: File is Plain (repr(C), integers only): its bytes are all initialised.
        unsafe { std::slice::from_raw_parts(f as *const abi::File as *const u8, std::mem::size_of::<abi::File>()) }
            .to_vec()
    }

    fn file_record(op: u32, fflags: u32, path: &[u8], dir_leaf_first: &[u8], dir2_leaf_first: &[u8]) -> abi::File {
        let mut f = abi::File {
            h: abi::Header {
                kind: abi::KIND_FILE,
                len: std::mem::size_of::<abi::File>() as u32,
                pid: 7,
                ..Default::default()
            },
            op,
            fflags,
            path_len: path.len() as u16,
            dir_len: dir_leaf_first.len() as u16,
            dir2_len: dir2_leaf_first.len() as u16,
            ..Default::default()
        };
        f.path[..path.len()].copy_from_slice(path);
        f.dir[..dir_leaf_first.len()].copy_from_slice(dir_leaf_first);
        f.dir2[..dir2_leaf_first.len()].copy_from_slice(dir2_leaf_first);
        f
    }

    #[test]
    fn an_open_that_followed_a_link_names_the_file_and_keeps_the_name_given() {
        let f = file_record(
            abi::FILE_OPEN,
            abi::FILE_F_RESOLVED | abi::FILE_F_FOLLOWED | abi::FILE_F_WRITE,
            b"3",
            b"fd\0self\0proc\0",
            b".ash_history\0root\0",
        );
        let Ok(Event::File(e)) = decode(&file_bytes(&f)) else { panic!() };
        assert_eq!(e.path, b"/root/.ash_history");
        assert_eq!(e.given.as_deref(), Some(b"/proc/self/fd/3".as_slice()));
        assert_eq!(e.resolved, None);
        assert!(e.write);

        // a watched name that leads elsewhere: the name is the subject, the file beside it
        let f = file_record(abi::FILE_OPEN, abi::FILE_F_RESOLVED, b"/root/.ash_history", b"", b"null\0dev\0");
        let Ok(Event::File(e)) = decode(&file_bytes(&f)) else { panic!() };
        assert_eq!(
            (e.path.as_slice(), e.resolved.as_deref()),
            (b"/root/.ash_history".as_slice(), Some(b"/dev/null".as_slice()))
        );
    }

    #[test]
    fn a_path_longer_than_its_slot_keeps_its_tail_marked() {
        let f =
            file_record(abi::FILE_UNLINK, abi::FILE_F_PATH_TAIL | abi::FILE_F_TRUNCATED, b"/./.ash_history", b"", b"");
        let Ok(Event::File(e)) = decode(&file_bytes(&f)) else { panic!() };
        assert_eq!(e.path, b"..././.ash_history");
        assert!(e.truncated);
        // an open: the file it resolved to is the whole path
        let f = file_record(
            abi::FILE_OPEN,
            abi::FILE_F_PATH_TAIL | abi::FILE_F_RESOLVED,
            b"/./.ash_history",
            b"",
            b".ash_history\0root\0",
        );
        let Ok(Event::File(e)) = decode(&file_bytes(&f)) else { panic!() };
        assert_eq!(e.path, b"/root/.ash_history");
        assert_eq!(e.given.as_deref(), Some(b"..././.ash_history".as_slice()));
    }

    #[test]
    fn io_uring_records_carry_their_opcode() {
        let mut f = file_record(abi::FILE_URING, abi::FILE_F_URING, b"", b"", b"");
        f.uring_op = 45;
        let Ok(Event::File(e)) = decode(&file_bytes(&f)) else { panic!() };
        assert_eq!((e.op, e.io_uring), (FileOp::IoUring, Some(45)));
        assert_eq!(io_uring_op_name(45), "socket");
        assert_eq!(io_uring_op_name(23), "write");
        assert_eq!(io_uring_op_name(200), "op_200");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20000))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_valid_headers(kind in 0u32..11, len in 0u32..7000, tail in proptest::collection::vec(any::<u8>(), 0..6000)) {
            let mut b = Vec::new();
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&[0u8; 32]);
            b.extend_from_slice(&tail);
            let _ = decode(&b);
        }
    }
}
