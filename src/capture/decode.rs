//! Decoder: ring buffer bytes -> owned `Event`s.
//!
//! In: one ring buffer record. Out: an `Event`, or a `DecodeError` whose `reason()` the reader
//! counts. This is the only code that reads the kernel's structs. It never panics, whatever
//! the bytes (the property tests below feed it random and half-valid records): lengths come
//! from the record and are checked against the slots they claim to fill.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

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
    #[error("record claims {claimed} bytes but its parts' lengths add up to {parts}")]
    PartsMismatch { claimed: usize, parts: usize },
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
            DecodeError::LengthMismatch { .. } | DecodeError::PartsMismatch { .. } => "length_mismatch",
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
        abi::KIND_DNS => {
            let d: abi::Dns = need(bytes, h.kind)?;
            let payload =
                slot(bytes, std::mem::size_of::<abi::Dns>(), d.payload_len as usize, abi::DNS_PAYLOAD_MAX, "dns")?;
            Ok(Event::Dns(DnsEvent {
                ts_ns: h.ts_ns,
                cgroup_id: h.cgroup_id,
                server: (address(d.family, &d.saddr)?.0, d.sport),
                msg_len: d.msg_len,
                truncated: d.flags & abi::DNS_F_TRUNCATED != 0,
                payload: payload.to_vec(),
            }))
        }
        abi::KIND_TTY => decode_tty(bytes),
        abi::KIND_CGROUP_MKDIR => decode_cgroup_mkdir(bytes),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

/// A terminal record is variable-length: its fixed part, then `data_len` bytes.
fn decode_tty(rec: &[u8]) -> Result<Event, DecodeError> {
    if rec.len() < abi::TTY_DATA_OFF {
        return Err(DecodeError::Truncated { kind: abi::KIND_TTY, got: rec.len(), need: abi::TTY_DATA_OFF });
    }
    let mut full = [0u8; std::mem::size_of::<abi::Tty>()];
    let n = rec.len().min(full.len());
    full[..n].copy_from_slice(&rec[..n]);
    let t: abi::Tty = need(&full, abi::KIND_TTY)?;
    let len = t.data_len as usize;
    if len > abi::TTY_DATA_MAX || abi::TTY_DATA_OFF + len > rec.len() {
        return Err(DecodeError::FieldOverrun("tty data"));
    }
    let f = t.flags;
    Ok(Event::Tty(TtyEvent {
        ts_ns: t.h.ts_ns,
        pid: t.h.pid,
        start_ns: t.h.start_ns,
        cgroup_id: t.h.cgroup_id,
        output: f & abi::TTY_F_OUTPUT != 0,
        secret: f & abi::TTY_F_SECRET != 0,
        cut: f & abi::TTY_F_CUT != 0,
        partial: f & abi::TTY_F_PARTIAL != 0,
        end: f & abi::TTY_F_END != 0,
        eol: f & abi::TTY_F_EOL != 0,
        bytes: t.bytes,
        lflag: t.lflag,
        cut_in: t.cut_in,
        cut_out: t.cut_out,
        data: t.data[..len].to_vec(),
    }))
}

/// A cgroup mkdir record is variable-length: its fixed part, then `path_len` bytes.
fn decode_cgroup_mkdir(rec: &[u8]) -> Result<Event, DecodeError> {
    const OFF: usize = abi::CGROUP_PATH_OFF;
    if rec.len() < OFF {
        return Err(DecodeError::Truncated { kind: abi::KIND_CGROUP_MKDIR, got: rec.len(), need: OFF });
    }
    let mut full = [0u8; std::mem::size_of::<abi::CgroupMkdir>()];
    full[..OFF].copy_from_slice(&rec[..OFF]);
    let fixed: abi::CgroupMkdir = need(&full, abi::KIND_CGROUP_MKDIR)?;
    let path = slot(rec, OFF, fixed.path_len as usize, abi::CGROUP_PATH_MAX, "cgroup path")?;
    Ok(Event::CgroupMkdir(CgroupMkdirEvent {
        ts_ns: fixed.h.ts_ns,
        pid: fixed.h.pid,
        cgroup_id: fixed.h.cgroup_id,
        id: fixed.id,
        level: fixed.level,
        path: path.to_vec(),
        truncated: fixed.flags & abi::CGROUP_F_TRUNCATED != 0,
    }))
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
    // the variable parts are packed in this order, each exactly its length
    let mut off = abi::EXEC_VAR_OFF;
    let mut part = |len: u16, max: usize, name: &'static str| {
        let bytes = slot(rec, off, len as usize, max, name)?;
        off += bytes.len();
        Ok::<_, DecodeError>(bytes)
    };
    let filename = part(e.filename_len, abi::FILENAME_MAX, "filename")?;
    let interp = part(e.interp_len, abi::INTERP_MAX, "interp")?;
    let exe = part(e.exe_path_len, abi::EXE_PATH_MAX, "exe_path")?;
    let audit = part(e.audit_id_len, abi::AUDIT_ID_MAX, "audit_id")?;
    let cwd = part(e.cwd_len, abi::CWD_MAX, "cwd")?;
    let argv = part(e.argv_len, abi::ARGV_MAX, "argv")?;
    if off != rec.len() {
        // the lengths do not add up to the record: a part would be read from the wrong place
        return Err(DecodeError::PartsMismatch { claimed: rec.len(), parts: off });
    }
    let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
    let exe_path = join_leaf_first_shared(exe);
    // the name run is usually the executable's path itself: then one buffer, not two
    let filename = if filename == &exe_path[..] { exe_path.clone() } else { shared(filename) };
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
        // the paths straight into the shared form the image keeps (one allocation each, no
        // copy into an `Arc` later, issue 15)
        filename,
        interp: (!interp.is_empty()).then(|| shared(interp)),
        exe_path,
        exe_ino: e.exe_ino,
        exe_dev: e.exe_dev,
        exe_nlink: e.exe_nlink,
        argc: e.argc,
        argv: split_argv(argv),
        audit_id: (!audit.is_empty()).then(|| crate::text::escape(audit)),
        comm: e.comm[..comm_len].to_vec(),
        exe_ctime_ns: e.exe_ctime_ns,
        // the walk writes nothing for the root itself
        cwd: if cwd.is_empty() { shared(b"/") } else { join_leaf_first_shared(cwd) },
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

/// A copy to share; an empty one takes no allocation (std's empty `Arc<[T]>` is static).
fn shared(b: &[u8]) -> Arc<[u8]> {
    if b.is_empty() {
        Arc::default()
    } else {
        b.into()
    }
}

/// [`join_leaf_first`] into the shared form at once: one allocation, the `Arc`'s. The join is
/// written on the stack first (a path's length is known: each part gains a `/` and loses its
/// NUL but the last), or, past [`JOIN_ON_STACK`] bytes, in a `Vec` copied into the `Arc`.
fn join_leaf_first_shared(raw: &[u8]) -> Arc<[u8]> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Arc::default();
    }
    let len = raw.len() + 1;
    if len > JOIN_ON_STACK {
        return join_leaf_first(raw).into();
    }
    let mut buf = [0u8; JOIN_ON_STACK];
    join_into(raw, &mut buf[..len]);
    buf[..len].into()
}

/// Paths up to this long are joined on the stack (most executables' and working directories').
const JOIN_ON_STACK: usize = 256;

/// The kernel writes path components leaf first, each NUL-terminated.
fn join_leaf_first(raw: &[u8]) -> Vec<u8> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0; raw.len() + 1];
    join_into(raw, &mut out);
    out
}

/// Writes `raw`'s parts (leaf first, NUL between them, no trailing NUL) root first, each after
/// a `/`, into `out`, which is exactly that long (`raw.len() + 1`).
fn join_into(raw: &[u8], out: &mut [u8]) {
    let mut at = 0;
    for part in raw.split(|&b| b == 0).rev() {
        out[at] = b'/';
        out[at + 1..at + 1 + part.len()].copy_from_slice(part);
        at += 1 + part.len();
    }
    debug_assert_eq!(at, out.len());
}

#[cfg(test)]
mod tests;
