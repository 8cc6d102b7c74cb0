//! Attaching the loaded programs to their hooks: tracepoints, BTF tracepoints, the socket and
//! file hooks; each refusal as a [`CaptureError`] naming the program and the hook.

use std::{fs, path::Path};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, TracePoint,
    },
    Btf, Ebpf,
};

use super::{abi, CaptureError, CaptureOptions};

/// Connects (cgroup/connect4|6), how they ended (the syscall's exit, the TCP handshake) and
/// the first datagram of a connected UDP socket (cgroup_skb/egress).
pub(super) fn attach_connect_hooks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    cg: &fs::File,
) -> Result<Vec<&'static str>, CaptureError> {
    attach_tp(ebpf, "pt_sys_exit_connect", "syscalls", "sys_exit_connect")?;
    attach_btf_tp(ebpf, btf, "pt_inet_sock_set_state", "inet_sock_set_state")?;
    for prog in ["pt_connect4", "pt_connect6"] {
        attach_sock_addr(ebpf, cg, prog, "cgroup/connect")?;
    }
    let p: &mut CgroupSkb = program(ebpf, "pt_egress")?;
    p.load().map_err(|e| refused("pt_egress", "cgroup_skb/egress", e))?;
    p.attach(cg, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
        .map_err(|e| refused("pt_egress", "cgroup_skb/egress", e))?;
    Ok(vec!["pt_sys_exit_connect", "pt_inet_sock_set_state", "pt_connect4", "pt_connect6", "pt_egress"])
}

/// A cgroup socket-address program (connect, sendmsg) loaded and attached to the cgroup2 root.
fn attach_sock_addr(
    ebpf: &mut Ebpf,
    cg: &fs::File,
    prog: &'static str,
    hook: &'static str,
) -> Result<(), CaptureError> {
    let p: &mut CgroupSockAddr = program(ebpf, prog)?;
    p.load().map_err(|e| refused(prog, hook, e))?;
    // AllowMultiple is rejected by link_create (aya #1078); cgroup links coexist anyway.
    p.attach(cg, CgroupAttachMode::Single).map_err(|e| refused(prog, hook, e))?;
    Ok(())
}

/// The ways out that are not a connect (sock.bpf.c): datagrams naming a destination,
/// listening and accepted TCP sockets, raw and ICMP sockets.
pub(super) fn attach_socket_hooks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    cg: &fs::File,
) -> Result<Vec<&'static str>, CaptureError> {
    for prog in ["pt_sendmsg4", "pt_sendmsg6"] {
        attach_sock_addr(ebpf, cg, prog, "cgroup/sendmsg")?;
    }
    let p: &mut CgroupSock = program(ebpf, "pt_sock_create")?;
    p.load().map_err(|e| refused("pt_sock_create", "cgroup/sock_create", e))?;
    p.attach(cg, CgroupAttachMode::Single).map_err(|e| refused("pt_sock_create", "cgroup/sock_create", e))?;
    attach_btf_tp(ebpf, btf, "pt_sock_listen", "inet_sock_set_state")?;
    attach_tp(ebpf, "pt_sys_exit_accept", "syscalls", "sys_exit_accept")?;
    attach_tp(ebpf, "pt_sys_exit_accept4", "syscalls", "sys_exit_accept4")?;
    Ok(vec![
        "pt_sendmsg4",
        "pt_sendmsg6",
        "pt_sock_create",
        "pt_sock_listen",
        "pt_sys_exit_accept",
        "pt_sys_exit_accept4",
    ])
}

/// The syscalls whose paths are checked against the watched names, their entry programs and
/// their exit programs: a call that returns a descriptor has its own, which judges the file
/// the descriptor names; the others share `pt_exit_file`.
const FILE_SYSCALLS: &[(&str, &str, &str)] = &[
    ("pt_enter_openat", "openat", "pt_exit_openat"),
    ("pt_enter_open", "open", "pt_exit_open"),
    ("pt_enter_openat2", "openat2", "pt_exit_openat2"),
    ("pt_enter_creat", "creat", "pt_exit_creat"),
    ("pt_enter_unlinkat", "unlinkat", "pt_exit_file"),
    ("pt_enter_unlink", "unlink", "pt_exit_file"),
    ("pt_enter_renameat2", "renameat2", "pt_exit_file"),
    ("pt_enter_renameat", "renameat", "pt_exit_file"),
    ("pt_enter_rename", "rename", "pt_exit_file"),
    ("pt_enter_truncate", "truncate", "pt_exit_file"),
    ("pt_enter_ftruncate", "ftruncate", "pt_exit_file"),
    ("pt_enter_fchmodat", "fchmodat", "pt_exit_file"),
    ("pt_enter_fchmodat2", "fchmodat2", "pt_exit_file"),
    ("pt_enter_chmod", "chmod", "pt_exit_file"),
    ("pt_enter_fchmod", "fchmod", "pt_exit_file"),
    ("pt_enter_linkat", "linkat", "pt_exit_file"),
    ("pt_enter_link", "link", "pt_exit_file"),
    ("pt_enter_symlinkat", "symlinkat", "pt_exit_file"),
    ("pt_enter_symlink", "symlink", "pt_exit_file"),
];

/// Fills the watched names and attaches the file hooks. A syscall this architecture lacks
/// (arm64 has no open, rename, ...) is skipped: its `*at` form covers it there.
pub(super) fn attach_file_hooks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    opts: &CaptureOptions,
) -> Result<Vec<&'static str>, CaptureError> {
    let mut names: std::collections::HashMap<[u8; abi::WATCH_NAME_MAX], u32> = std::collections::HashMap::new();
    let all_changes = (1 << abi::FILE_OPEN)
        | (1 << abi::FILE_UNLINK)
        | (1 << abi::FILE_RENAME)
        | (1 << abi::FILE_TRUNCATE)
        | (1 << abi::FILE_CHMOD)
        | (1 << abi::FILE_LINK)
        | (1 << abi::FILE_SYMLINK);
    for (list, mask) in [(&opts.watch_changes, all_changes), (&opts.watch_reads, all_changes | abi::WATCH_READ)] {
        for n in list.iter() {
            if n.is_empty() || n.len() >= abi::WATCH_NAME_MAX || n.contains('/') {
                tracing::warn!(name = %n, "ignoring watched file name: must be a base name shorter than 64 bytes");
                continue;
            }
            let mut key = [0u8; abi::WATCH_NAME_MAX];
            key[..n.len()].copy_from_slice(n.as_bytes());
            *names.entry(key).or_default() |= mask;
        }
    }
    {
        let mut map: BpfHashMap<&mut MapData, [u8; abi::WATCH_NAME_MAX], u32> =
            BpfHashMap::try_from(ebpf.map_mut("watched_names").ok_or(CaptureError::MissingMap("watched_names"))?)?;
        for (k, v) in &names {
            map.insert(k, v, 0)?;
        }
    }
    let tracefs = if Path::new("/sys/kernel/tracing/events").exists() {
        "/sys/kernel/tracing"
    } else {
        "/sys/kernel/debug/tracing"
    };
    let have = |sc: &str| Path::new(&format!("{tracefs}/events/syscalls/sys_enter_{sc}")).exists();
    let mut attached = Vec::new();
    {
        let exit: &mut TracePoint = program(ebpf, "pt_exit_file")?;
        exit.load().map_err(|e| refused("pt_exit_file", "tracepoint", e))?;
        for (_, sc, _) in FILE_SYSCALLS.iter().filter(|(_, sc, x)| *x == "pt_exit_file" && have(sc)) {
            exit.attach("syscalls", &format!("sys_exit_{sc}")).map_err(|e| refused("pt_exit_file", "tracepoint", e))?;
        }
    }
    attached.push("pt_exit_file");
    for (prog, sc, exit) in FILE_SYSCALLS {
        if !have(sc) {
            tracing::debug!(syscall = sc, "no such syscall tracepoint here; skipped");
            continue;
        }
        attach_tp(ebpf, prog, "syscalls", &format!("sys_enter_{sc}"))?;
        attached.push(*prog);
        if *exit != "pt_exit_file" {
            attach_tp(ebpf, exit, "syscalls", &format!("sys_exit_{sc}"))?;
            attached.push(*exit);
        }
    }
    // io_uring submissions: a kernel without io_uring (or with its tracepoints compiled out)
    // has no such tracepoint, and the file hooks work without it (logged)
    if Path::new(&format!("{tracefs}/events/io_uring/io_uring_submit_req")).exists() {
        attach_btf_tp(ebpf, btf, "pt_uring_submit", "io_uring_submit_req")?;
        attached.push("pt_uring_submit");
    } else {
        tracing::warn!(
            "no io_uring_submit_req tracepoint on this kernel: operations submitted through io_uring are not seen"
        );
    }
    Ok(attached)
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(CaptureError::MissingProgram(name))?;
    p.try_into().map_err(|e| refused(name, "type", e))
}

pub(super) fn refused(program: &str, what: &'static str, source: aya::programs::ProgramError) -> CaptureError {
    CaptureError::Program { program: program.to_string(), what, source }
}

pub(super) fn attach_btf_tp(ebpf: &mut Ebpf, btf: &Btf, prog: &'static str, tp: &str) -> Result<(), CaptureError> {
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(tp, btf).map_err(|e| refused(prog, "tp_btf", e))?;
    p.attach().map_err(|e| refused(prog, "tp_btf", e))?;
    Ok(())
}

pub(super) fn attach_tp(ebpf: &mut Ebpf, prog: &'static str, cat: &str, name: &str) -> Result<(), CaptureError> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| refused(prog, "tracepoint", e))?;
    p.attach(cat, name).map_err(|e| refused(prog, "tracepoint", e))?;
    Ok(())
}
