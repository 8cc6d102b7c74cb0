use super::*;
use proptest::prelude::*;

pub(crate) fn exec_record(argv: &[&[u8]], exe_leaf_first: &[u8], flags: u32) -> Vec<u8> {
    exec_record_with(argv, exe_leaf_first, b"", flags)
}

/// An exec record as the kernel packs it: the fixed part, then filename (empty), interp
/// (empty), exe path, audit id (empty), cwd and argv, each exactly its length.
pub(crate) fn exec_record_with(argv: &[&[u8]], exe_leaf_first: &[u8], cwd_leaf_first: &[u8], flags: u32) -> Vec<u8> {
    let mut raw_argv = Vec::new();
    for a in argv {
        raw_argv.extend_from_slice(a);
        raw_argv.push(0);
    }
    let len = abi::EXEC_VAR_OFF + exe_leaf_first.len() + cwd_leaf_first.len() + raw_argv.len();
    let e = abi::Exec {
        h: abi::Header { kind: abi::KIND_EXEC, len: len as u32, ts_ns: 5, pid: 42, tid: 42, start_ns: 7, cgroup_id: 9 },
        ppid: 1,
        loginuid: u32::MAX,
        flags,
        exe_path_len: exe_leaf_first.len() as u16,
        cwd_len: cwd_leaf_first.len() as u16,
        argv_len: raw_argv.len() as u16,
        comm: *b"busybox\0\0\0\0\0\0\0\0\0",
        ..Default::default()
    };
    // SAFETY: Exec is Plain (repr(C), integers only); we copy its bytes.
    let raw = unsafe { std::slice::from_raw_parts(&e as *const _ as *const u8, std::mem::size_of::<abi::Exec>()) };
    let mut rec = raw.to_vec();
    rec.extend_from_slice(exe_leaf_first);
    rec.extend_from_slice(cwd_leaf_first);
    rec.extend_from_slice(&raw_argv);
    assert_eq!(rec.len(), len);
    rec
}

#[test]
fn exec_record_decodes_argv_and_path() {
    let rec = exec_record(&[b"wget", b"-q", b"a b", b"\xff"], b"busybox\0bin\0", abi::EXEC_F_TTY);
    let Event::Exec(e) = decode(&rec).unwrap() else { panic!("not exec") };
    assert_eq!(e.argv, vec![b"wget".to_vec(), b"-q".to_vec(), b"a b".to_vec(), b"\xff".to_vec()]);
    assert_eq!(&e.exe_path[..], b"/bin/busybox");
    assert!(e.flags.tty);
    assert_eq!(e.loginuid, None);
    assert_eq!(e.comm, b"busybox");
}

#[test]
fn exec_parts_are_read_packed_in_their_order() {
    // every part present and of a different length: each must come from its own place
    let parts: [&[u8]; 6] = [b"/usr/bin/env", b"/bin/sh", b"sh\0bin\0", b"4f1c-audit", b"tmp\0", b"sh\0-c\0x\0"];
    let e = abi::Exec {
        h: abi::Header {
            kind: abi::KIND_EXEC,
            len: (abi::EXEC_VAR_OFF + parts.iter().map(|p| p.len()).sum::<usize>()) as u32,
            ..Default::default()
        },
        filename_len: parts[0].len() as u16,
        interp_len: parts[1].len() as u16,
        exe_path_len: parts[2].len() as u16,
        audit_id_len: parts[3].len() as u16,
        cwd_len: parts[4].len() as u16,
        argv_len: parts[5].len() as u16,
        ..Default::default()
    };
    // SAFETY: Exec is Plain (repr(C), integers only); we copy its bytes.
    let raw = unsafe { std::slice::from_raw_parts(&e as *const _ as *const u8, std::mem::size_of::<abi::Exec>()) };
    let mut rec = [raw, &parts.concat()].concat();
    let Event::Exec(x) = decode(&rec).unwrap() else { panic!("not exec") };
    assert_eq!(&x.filename[..], b"/usr/bin/env");
    assert_eq!(x.interp.as_deref(), Some(&b"/bin/sh"[..]));
    assert_eq!(&x.exe_path[..], b"/bin/sh");
    assert_eq!(x.audit_id.as_deref(), Some("4f1c-audit"));
    assert_eq!(&x.cwd[..], b"/tmp");
    assert_eq!(x.argv, vec![b"sh".to_vec(), b"-c".to_vec(), b"x".to_vec()]);
    // a record longer than its parts: a part's length was lost, none of it can be trusted
    rec.extend_from_slice(b"\0\0\0\0");
    let len = std::mem::offset_of!(abi::Header, len);
    let total = rec.len() as u32;
    rec[len..len + 4].copy_from_slice(&total.to_le_bytes());
    assert_eq!(decode(&rec), Err(DecodeError::PartsMismatch { claimed: rec.len(), parts: rec.len() - 4 }));
    assert_eq!(DecodeError::PartsMismatch { claimed: 1, parts: 0 }.reason(), "length_mismatch");
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
    unsafe { std::slice::from_raw_parts(s as *const abi::Sock as *const u8, std::mem::size_of::<abi::Sock>()) }.to_vec()
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

#[test]
fn dns_records_carry_the_message_and_its_server() {
    let msg = [0x12u8, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 3, b'f', b'o', b'o', 0];
    let mut d = abi::Dns {
        h: abi::Header {
            kind: abi::KIND_DNS,
            len: (std::mem::size_of::<abi::Dns>() + msg.len()) as u32,
            cgroup_id: 77,
            ..Default::default()
        },
        payload_len: msg.len() as u16,
        msg_len: 900,
        family: 2,
        flags: abi::DNS_F_TRUNCATED,
        sport: 53,
        ..Default::default()
    };
    d.saddr[..4].copy_from_slice(&[203, 0, 113, 53]);
    // SAFETY: Dns is Plain (repr(C), integers only): its bytes are all initialised.
    let fixed =
        unsafe { std::slice::from_raw_parts(&d as *const abi::Dns as *const u8, std::mem::size_of::<abi::Dns>()) };
    let mut bytes = [fixed, &msg].concat();
    let Ok(Event::Dns(e)) = decode(&bytes) else { panic!("{:?}", decode(&bytes)) };
    assert_eq!((e.cgroup_id, e.server, e.msg_len, e.truncated), (77, ("203.0.113.53".parse().unwrap(), 53), 900, true));
    assert_eq!(e.payload, msg);
    // a payload length past the record is an error, not a read past it
    bytes[std::mem::offset_of!(abi::Dns, payload_len)] = 200;
    assert_eq!(decode(&bytes), Err(DecodeError::FieldOverrun("dns")));
}

#[test]
fn tty_records_are_variable_length_and_their_data_is_checked() {
    let mut t = abi::Tty {
        h: abi::Header { kind: abi::KIND_TTY, pid: 9, start_ns: 5, ..Default::default() },
        bytes: 3,
        data_len: 3,
        flags: abi::TTY_F_PARTIAL,
        ..Default::default()
    };
    t.data[..3].copy_from_slice(b"ls\r");
    // SAFETY: Tty is Plain (repr(C), integers only): its bytes are all initialised.
    let all =
        unsafe { std::slice::from_raw_parts(&t as *const abi::Tty as *const u8, std::mem::size_of::<abi::Tty>()) };
    let mut rec = all[..abi::TTY_DATA_OFF + 3].to_vec();
    rec[4..8].copy_from_slice(&((abi::TTY_DATA_OFF + 3) as u32).to_le_bytes());
    let Ok(Event::Tty(e)) = decode(&rec) else { panic!("{:?}", decode(&rec)) };
    assert_eq!((e.pid, e.data.as_slice(), e.partial, e.secret, e.output), (9, b"ls\r".as_slice(), true, false, false));
    // a data length past what arrived is refused, not read
    rec[44..48].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(decode(&rec), Err(DecodeError::FieldOverrun("tty data")));
    let short = &mut rec[..40].to_vec();
    short[4..8].copy_from_slice(&40u32.to_le_bytes());
    assert!(matches!(decode(short), Err(DecodeError::Truncated { .. })));
}

fn file_bytes(f: &abi::File) -> Vec<u8> {
    // SAFETY: File is Plain (repr(C), integers only): its bytes are all initialised.
    unsafe { std::slice::from_raw_parts(f as *const abi::File as *const u8, std::mem::size_of::<abi::File>()) }.to_vec()
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
    let f = file_record(abi::FILE_UNLINK, abi::FILE_F_PATH_TAIL | abi::FILE_F_TRUNCATED, b"/./.ash_history", b"", b"");
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

#[test]
fn cgroup_mkdir_records_carry_the_new_cgroup_and_its_checked_path() {
    let path = b"/kubepods.slice/pod\xff/x";
    let mut m = abi::CgroupMkdir {
        h: abi::Header { kind: abi::KIND_CGROUP_MKDIR, pid: 7, cgroup_id: 1, ..Default::default() },
        id: 4242,
        level: 3,
        path_len: path.len() as u16,
        ..Default::default()
    };
    m.path[..path.len()].copy_from_slice(path);
    // SAFETY: CgroupMkdir is Plain (repr(C), integers only): its bytes are all initialised.
    let all = unsafe {
        std::slice::from_raw_parts(&m as *const abi::CgroupMkdir as *const u8, std::mem::size_of::<abi::CgroupMkdir>())
    };
    let n = abi::CGROUP_PATH_OFF + path.len();
    let mut rec = all[..n].to_vec();
    rec[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    let Ok(Event::CgroupMkdir(e)) = decode(&rec) else { panic!("{:?}", decode(&rec)) };
    assert_eq!(
        (e.pid, e.cgroup_id, e.id, e.level, e.path.as_slice(), e.truncated),
        (7, 1, 4242, 3, path.as_slice(), false)
    );
    // a path length past what arrived, or past the slot, is refused, not read
    rec[52..54].copy_from_slice(&((path.len() + 1) as u16).to_le_bytes());
    assert_eq!(decode(&rec), Err(DecodeError::FieldOverrun("cgroup path")));
    rec[52..54].copy_from_slice(&((abi::CGROUP_PATH_MAX + 1) as u16).to_le_bytes());
    assert_eq!(decode(&rec), Err(DecodeError::FieldOverrun("cgroup path")));
    let short = &mut rec[..48].to_vec();
    short[4..8].copy_from_slice(&48u32.to_le_bytes());
    assert!(matches!(decode(short), Err(DecodeError::Truncated { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20000))]
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_valid_headers(kind in 0u32..14, len in 0u32..7000, tail in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&[0u8; 32]);
        b.extend_from_slice(&tail);
        let _ = decode(&b);
    }
}

#[test]
fn paths_decoded_shared_are_the_joined_bytes() {
    // the one-allocation join writes what the Vec one does, whatever the parts
    for raw in [&b""[..], b"\0", b"a\0", b"a", b"sh\0bin\0", b"sh\0bin", b"a\0\0b\0", b"\0\0", b"leaf\0mid\0top\0"] {
        assert_eq!(&join_leaf_first_shared(raw)[..], &join_leaf_first(raw)[..], "{raw:?}");
    }
    // at the stack buffer's edge and past it
    for n in [JOIN_ON_STACK - 3, JOIN_ON_STACK - 2, JOIN_ON_STACK - 1, JOIN_ON_STACK, 4096] {
        let raw = [vec![b'x'; n / 2], vec![0], vec![b'y'; n - n / 2 - 1]].concat();
        let joined = join_leaf_first_shared(&raw);
        assert_eq!(&joined[..], &join_leaf_first(&raw)[..], "{n}");
        assert_eq!(joined.len(), n + 1);
    }
}

#[test]
fn a_filename_that_is_the_exe_path_shares_its_buffer() {
    let parts: [&[u8]; 3] = [b"/bin/sh", b"sh\0bin\0", b"sh\0"];
    let e = abi::Exec {
        h: abi::Header {
            kind: abi::KIND_EXEC,
            len: (abi::EXEC_VAR_OFF + parts.iter().map(|p| p.len()).sum::<usize>()) as u32,
            ..Default::default()
        },
        filename_len: parts[0].len() as u16,
        exe_path_len: parts[1].len() as u16,
        argv_len: parts[2].len() as u16,
        ..Default::default()
    };
    // SAFETY: Exec is Plain (repr(C), integers only); we copy its bytes.
    let raw = unsafe { std::slice::from_raw_parts(&e as *const _ as *const u8, std::mem::size_of::<abi::Exec>()) };
    let rec = [raw, &parts.concat()].concat();
    let Event::Exec(x) = decode(&rec).unwrap() else { panic!("not exec") };
    assert_eq!(&x.filename[..], b"/bin/sh");
    assert!(std::sync::Arc::ptr_eq(&x.filename, &x.exe_path));
    assert_eq!(&x.cwd[..], b"/", "no cwd written: the root");
}
