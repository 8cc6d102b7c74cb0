//! The spans of what a session's processes did: a process image, its file events, a connect
//! (or other way out). Pure, like the rest of [`super`]: ids from [`crate::spans::ids`], times
//! from the events.

use super::*;

/// The image's end: its own end, else the next exec, else the process's exit, else `fallback`
/// (the session's end or the agent's stop).
pub fn image_end_ns(proc: &ProcessRecord, idx: usize, fallback: u64) -> u64 {
    let img = &proc.images[idx];
    img.end_ns
        .or_else(|| proc.images.get(idx + 1).map(|n| n.start_ns))
        .or(proc.exit_ns)
        .unwrap_or(fallback)
        .max(img.start_ns)
}

/// A process image, named by basename(argv[0]). Returns the span and whether argv was cut.
pub fn image_span(
    ctx: &BuildCtx,
    frame: &SessionFrame,
    proc: &ProcessRecord,
    idx: usize,
    id: SpanId,
    parent: SpanId,
    end_ns: u64,
) -> (SpanData, bool) {
    let img = &proc.images[idx];
    let mut attrs = frame.common.to_vec();
    attrs.push(KeyValue::new(sc::PROCESS_PID, proc.key.pid as i64));
    attrs.push(KeyValue::new(sc::PROCESS_VPID, proc.nspid as i64));
    if let Some(p) = proc.parent {
        attrs.push(KeyValue::new(sc::PROCESS_PARENT_PID, p.pid as i64));
    }
    attrs.push(KeyValue::new(sc::PROCESS_EXECUTABLE_PATH, escape(&img.exe_path)));
    attrs.push(KeyValue::new(sc::PROCESS_EXECUTABLE_NAME, escape(basename(&img.exe_path))));
    if let Some(cwd) = &img.cwd {
        attrs.push(KeyValue::new(sc::PROCESS_WORKING_DIRECTORY, escape(cwd)));
    }
    if let Some(a0) = img.argv.first() {
        attrs.push(KeyValue::new(sc::PROCESS_COMMAND, escape(a0)));
    }
    let (args, cut) = crate::spans::budget::cap_argv(&img.argv, ctx.cfg.argv_max_bytes);
    let cut = cut || img.argv_truncated;
    attrs.push(KeyValue::new(sc::PROCESS_COMMAND_ARGS, strs(&args)));
    attrs.push(KeyValue::new(sc::PROCESS_USER_ID, img.euid as i64));
    attrs.push(KeyValue::new(sc::PROCESS_REAL_USER_ID, img.uid as i64));
    attrs.push(KeyValue::new(sc::PROCESS_INTERACTIVE, img.tty));
    if let Some(i) = &img.interp {
        attrs.push(KeyValue::new(keys::PROCESS_INTERPRETER, escape(i)));
    }
    if let Some(t) = &img.identity {
        attrs.push(KeyValue::new(keys::PROCESS_IDENTITY, t.clone()));
    }
    if let Some(p) = &img.program {
        attrs.push(KeyValue::new(keys::PROCESS_LOADER_PROGRAM, escape(p)));
    }
    if img.argv_redacted > 0 {
        attrs.push(KeyValue::new(keys::PROCESS_ARGS_REDACTED, img.argv_redacted as i64));
    }
    for (k, on) in [
        (keys::PROCESS_ARGV_TRUNCATED, cut),
        (keys::PROCESS_FILELESS, img.fileless),
        (keys::PROCESS_INHERITED, img.inherited),
    ] {
        if on {
            attrs.push(KeyValue::new(k, true));
        }
    }
    let mut status = Status::Unset;
    // The exit belongs to the last image; earlier ones were replaced by exec.
    if idx + 1 == proc.images.len() {
        match proc.exit {
            Some(ExitStatus::Code(c)) => {
                // `grep` without a match and `test` false exit non-zero: not an error to an
                // analyst, who filters on `process.exit.code` when it matters.
                attrs.push(KeyValue::new(sc::PROCESS_EXIT_CODE, c as i64));
            }
            Some(ExitStatus::Signal { signal, .. }) => {
                attrs.push(KeyValue::new(sc::PROCESS_EXIT_CODE, 128 + signal as i64));
                attrs.push(KeyValue::new(keys::PROCESS_EXIT_SIGNAL, signal as i64));
                status = Status::error(format!("killed by signal {signal}"));
            }
            None => {}
        }
    }
    let name = escape(&img.command_name());
    let mut sd = span(
        frame,
        id,
        parent,
        SpanKind::Internal,
        name,
        ctx.clock.to_system_time(img.start_ns),
        ctx.clock.to_system_time(end_ns),
        attrs,
        status,
    );
    sd.events.events.extend(img.files.iter().map(|f| file_event(ctx, f)));
    (sd, cut)
}

/// A watched-file operation, as a span event `file <op>` on the image that did it.
pub fn file_event(ctx: &BuildCtx, f: &FileRecord) -> opentelemetry::trace::Event {
    let mut attrs = Vec::with_capacity(8);
    file_attrs(f, &mut attrs);
    opentelemetry::trace::Event::new(format!("file {}", f.op.as_str()), ctx.clock.to_system_time(f.ts_ns), attrs, 0)
}

/// What a file operation says, as attributes: the same keys on the `file <op>` event and on an
/// alert raised by the operation, so a query on either finds the road it took (the path the
/// caller gave, the one the kernel resolved, the io_uring opcode).
pub fn file_attrs(f: &FileRecord, attrs: &mut Vec<KeyValue>) {
    attrs.extend([
        KeyValue::new(keys::FILE_OP, f.op.as_str()),
        KeyValue::new(sc::FILE_PATH, escape(&f.path)),
        KeyValue::new(keys::FILE_WRITE, f.write),
        KeyValue::new(keys::FILE_FLAGS, f.flags as i64),
    ]);
    if let Some(p) = &f.path2 {
        attrs.push(KeyValue::new(keys::FILE_PATH2, escape(p)));
    }
    if f.result < 0 {
        attrs.push(KeyValue::new(keys::FILE_ERROR, errno_name(f.result.max(i32::MIN as i64) as i32)));
    }
    if f.truncated {
        attrs.push(KeyValue::new(keys::FILE_TRUNCATED, true));
    }
    if let Some(p) = &f.given {
        attrs.push(KeyValue::new(keys::FILE_GIVEN_PATH, escape(p)));
    }
    if let Some(p) = &f.resolved {
        attrs.push(KeyValue::new(keys::FILE_RESOLVED_PATH, escape(p)));
    }
    if let Some(op) = f.io_uring {
        attrs.push(KeyValue::new(keys::FILE_IO_URING_OP, crate::capture::event::io_uring_op_name(op).into_owned()));
    }
}

/// Every connect span is named `connect`: a name per destination floods Jaeger's operation
/// list and Tempo's span metrics; the destination is in `server.*` and `network.*`.
pub const CONNECT_NAME: &str = "connect";

fn errno_name(err: i32) -> String {
    match -err {
        1 => "EPERM".into(),
        13 => "EACCES".into(),
        97 => "EAFNOSUPPORT".into(),
        99 => "EADDRNOTAVAIL".into(),
        101 => "ENETUNREACH".into(),
        104 => "ECONNRESET".into(),
        110 => "ETIMEDOUT".into(),
        111 => "ECONNREFUSED".into(),
        113 => "EHOSTUNREACH".into(),
        2 => "ENOENT".into(),
        30 => "EROFS".into(),
        n => format!("errno {n}"),
    }
}

/// The span name of a connect or another way out: its operation (`connect`, `sendto`,
/// `listen`, `accept`, `socket`); the peer and the transport are attributes.
pub fn net_name(c: &ConnectRecord) -> &'static str {
    // low-cardinality, as OpenTelemetry asks of span names: the peer is in server.*/client.*
    match c.op {
        NetOp::Connect => CONNECT_NAME,
        op => op.as_str(),
    }
}

/// One connect, a CLIENT span under its image, from `connect()` to its outcome; or another
/// way out (issue 18): a `sendto` CLIENT span (datagrams to one destination, folded), a
/// `listen` INTERNAL span (the local address), an `accept` SERVER span (the client as the
/// peer, the accepting address as the server), a `socket` INTERNAL span (raw or ICMP).
pub fn connect_span(ctx: &BuildCtx, frame: &SessionFrame, id: SpanId, image: SpanId, c: &ConnectRecord) -> SpanData {
    let addr = crate::scope::normalize(c.addr);
    let mut attrs = frame.common.to_vec();
    attrs.push(KeyValue::new(sc::NETWORK_TRANSPORT, c.transport.as_str()));
    if c.op != NetOp::Socket {
        attrs.push(KeyValue::new(sc::NETWORK_TYPE, if addr.is_ipv4() { "ipv4" } else { "ipv6" }));
    }
    let kind = match c.op {
        NetOp::Connect | NetOp::SendTo => {
            let (peer, peer_port) =
                c.final_addr.map(|(a, p)| (crate::scope::normalize(a), p)).unwrap_or((addr, c.port));
            // the semantic conventions' server.address: the name the client asked for when
            // one is known (from a DNS answer it received), else the IP; the IP itself is
            // always network.peer.address
            match &c.name {
                Some(n) => {
                    attrs.push(KeyValue::new(sc::SERVER_ADDRESS, n.to_string()));
                    attrs.push(KeyValue::new(keys::NETWORK_DESTINATION_NAME_SOURCE, "dns"));
                    if peer != addr {
                        attrs.push(KeyValue::new(keys::NETWORK_DESTINATION_ADDRESS, addr.to_string()));
                    }
                }
                None => {
                    attrs.push(KeyValue::new(sc::SERVER_ADDRESS, addr.to_string()));
                    attrs.push(KeyValue::new(keys::NETWORK_DESTINATION_NAME_SOURCE, "unknown"));
                }
            }
            attrs.push(KeyValue::new(sc::SERVER_PORT, c.port as i64));
            attrs.push(KeyValue::new(sc::NETWORK_PEER_ADDRESS, peer.to_string()));
            attrs.push(KeyValue::new(sc::NETWORK_PEER_PORT, peer_port as i64));
            SpanKind::Client
        }
        NetOp::Listen => {
            attrs.push(KeyValue::new(sc::NETWORK_LOCAL_ADDRESS, addr.to_string()));
            attrs.push(KeyValue::new(sc::NETWORK_LOCAL_PORT, c.port as i64));
            SpanKind::Internal
        }
        NetOp::Accept => {
            attrs.push(KeyValue::new(sc::NETWORK_PEER_ADDRESS, addr.to_string()));
            attrs.push(KeyValue::new(sc::NETWORK_PEER_PORT, c.port as i64));
            if let Some((la, lp)) = c.local {
                let la = crate::scope::normalize(la);
                attrs.push(KeyValue::new(sc::SERVER_ADDRESS, la.to_string()));
                attrs.push(KeyValue::new(sc::SERVER_PORT, lp as i64));
                attrs.push(KeyValue::new(sc::NETWORK_LOCAL_ADDRESS, la.to_string()));
                attrs.push(KeyValue::new(sc::NETWORK_LOCAL_PORT, lp as i64));
            }
            SpanKind::Server
        }
        NetOp::Socket => SpanKind::Internal,
    };
    if c.op != NetOp::Connect {
        attrs.push(KeyValue::new(keys::NETWORK_OPERATION, c.op.as_str()));
    }
    attrs.push(KeyValue::new(keys::NETWORK_OUTCOME, c.outcome.as_str()));
    if matches!(c.op, NetOp::Connect | NetOp::SendTo | NetOp::Accept) {
        attrs.push(KeyValue::new(
            keys::NETWORK_DESTINATION_SCOPE,
            c.scope.unwrap_or_else(|| ctx.cfg.scope.classify(addr)),
        ));
    }
    let failed = !matches!(
        c.outcome,
        ConnectOutcome::Connected
            | ConnectOutcome::Pending
            | ConnectOutcome::Sent
            | ConnectOutcome::Listening
            | ConnectOutcome::Accepted
            | ConnectOutcome::Opened
    );
    let mut status = Status::Unset;
    if failed {
        let et = c.error.filter(|e| *e != 0).map(errno_name).unwrap_or_else(|| c.outcome.as_str().to_owned());
        status = Status::error(et.clone());
        attrs.push(KeyValue::new(sc::ERROR_TYPE, et));
    }
    // A connect whose outcome never came (pending) is shown as an instant.
    let mut end = c.end_ns.unwrap_or(c.ts_ns);
    let mut start = c.ts_ns;
    if let Some(a) = &c.activity {
        // an outbound record, or folded datagrams or accepts: the first to the last
        attrs.push(KeyValue::new(keys::FOLDED_COUNT, a.count as i64));
        if a.suppressed_before > 0 {
            attrs.push(KeyValue::new(keys::ACTIVITY_SUPPRESSED, a.suppressed_before as i64));
        }
        start = start.min(a.first_ns);
        end = end.max(a.last_ns);
    }
    span(
        frame,
        id,
        image,
        kind,
        net_name(c).to_owned(),
        ctx.clock.to_system_time(start),
        ctx.clock.to_system_time(end),
        attrs,
        status,
    )
}
