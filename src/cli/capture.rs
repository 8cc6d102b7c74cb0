//! `podtrail capture`: every kernel event as a JSON line, in the spirit of execsnoop and
//! tcpconnect but for all kinds at once. Ctrl-C (or SIGTERM) stops it; the loss counters go
//! to stderr.

use std::io::Write;

use clap::Args;
use podtrail::capture::{
    event::Event,
    loader::{kind_mask, Capture, CaptureOptions, Filter, ALL_KINDS},
};
use tokio::signal::unix::{signal, SignalKind};

pub const LONG_ABOUT: &str = r#"Print every kernel event as one JSON object per line on stdout.

Needs root, or CAP_BPF + CAP_PERFMON (+ CAP_NET_ADMIN for connects, CAP_SYS_PTRACE to read other
processes' /proc entries). Bytes that are not UTF-8 (argv, paths) are written as \xNN; a literal
backslash as \\. All times are kernel boot-time nanoseconds (CLOCK_BOOTTIME).

Every object has "kind" and "ts_ns". Per kind:
  exec            a new image: pid, tid, start_ns (with pid, the process identity), cgroup_id,
                  ppid / parent_start_ns / parent_cgroup_id / parent_pidns_ino (the task's
                  real_parent), nspid (pid in its own pid namespace), pidns_ino, mntns_ino,
                  uid, gid, euid, loginuid (null when unset), filename (as passed to execve:
                  may be /proc/self/exe or /dev/fd/N), interp (#! interpreter), exe_path (the
                  binary the kernel runs, as seen inside its container), exe_ino, exe_dev,
                  exe_nlink, argc, argv (up to 4096 bytes), audit_id (KUBERNETES_EXEC_AUDIT_ID,
                  looked for only when the parent is in another cgroup or pid namespace), comm,
                  flags {argv_truncated, filename_truncated, exe_truncated, fileless (memfd or
                  deleted), tty, parent_other_cgroup, parent_other_pidns, env_scanned,
                  audit_id_truncated, env_truncated}
  fork            a new process: pid, start_ns, cgroup_id, ppid, parent_start_ns, creator_pid
                  (the caller; differs from ppid with CLONE_PARENT), pidns_ino, nspid, uid
  exit            the last thread ended: pid, start_ns, cgroup_id, status {"code": N} or
                  {"signal": {"signal": N, "core_dumped": bool}}
  connect         connect(2) on TCP/UDP: pid, tid, cgroup_id, cookie (socket), transport,
                  addr (IPv4-mapped IPv6 given as IPv4, "mapped": true), port
  connect_result  how it ended: cookie, error (0 or -errno), phase ("syscall": connect(2)
                  returned; "tcp_state": the handshake finished), final_addr/final_port (the
                  destination the socket really reached, tcp_state only)
  udp_send        a connected UDP socket sent its first datagram: cookie, bytes (a UDP
                  connect without one is a resolver sorting addresses), dest (where the
                  datagram really went, from its headers)
  sock            a way out that is not a connect: op ("sendto": a datagram naming its
                  destination, "listen", "accept", "socket": a raw or ICMP socket created),
                  pid, tid, start_ns (0 for sendto and socket), cgroup_id, cookie, transport
                  (tcp, udp, icmp, raw), peer [addr, port] (sendto's destination, accept's
                  client), local [addr, port] (listen, accept), result (accept's descriptor)
  dns             a UDP datagram from port 53 delivered to a socket (a DNS answer):
                  cgroup_id (the receiving socket's), server [addr, port], msg_len,
                  truncated (only the first 512 bytes kept), payload (the message's bytes,
                  escaped)
  ns_join         setns(2) succeeded: pid, nstype, pidns_for_children_ino, mntns_ino,
                  netns_ino, old_pidns_for_children_ino, old_mntns_ino, loginuid, uid"#;

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Which processes the kernel reports.
    #[arg(long, value_enum, default_value_t = Filter::All)]
    pub filter: Filter,
    /// Do not attach the connect hooks (no CAP_NET_ADMIN needed).
    #[arg(long)]
    pub no_network: bool,
    /// Attach the connect hooks only, not those of the other ways out (sendto, listen,
    /// accept, raw sockets).
    #[arg(long)]
    pub no_sockets: bool,
    /// Do not attach the DNS answer hook (`cgroup_skb/ingress`).
    #[arg(long)]
    pub no_dns: bool,
    /// Ring buffer size in MiB (a power of two; VmRSS counts it twice).
    #[arg(long, default_value_t = podtrail::config::DEFAULT_RING_MIB)]
    pub ring_mib: u32,
    /// Only capture events of these kinds (comma separated: exec,fork,exit,connect,...). The
    /// hooks that write only other kinds are not attached, and the kernel writes no record of
    /// another kind.
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
}

pub async fn run(a: CaptureArgs) -> anyhow::Result<()> {
    if !a.ring_mib.is_power_of_two() || a.ring_mib > 1024 {
        return Err(
            super::UsageError(format!("--ring-mib must be a power of two up to 1024, not {}", a.ring_mib)).into()
        );
    }
    let kinds = if a.kinds.is_empty() {
        ALL_KINDS
    } else {
        kind_mask(a.kinds.iter().map(String::as_str)).map_err(|k| {
            super::UsageError(format!(
                "--kinds: {k:?} is not an event kind (one of {})",
                podtrail::capture::abi::KIND_NAMES[1..].join(", ")
            ))
        })?
    };
    let opts = CaptureOptions {
        ring_bytes: a.ring_mib * 1024 * 1024,
        filter: a.filter,
        network: !a.no_network,
        sockets: !a.no_sockets,
        dns: !a.no_dns,
        cgroup_share_bytes: a.ring_mib as u64 * 1024 * 1024 / 10,
        // the kinds not asked for are neither attached nor written by the kernel: a storm of
        // forks costs `--kinds exec` nothing (issue 15)
        kinds,
        ..Default::default()
    };
    let mut cap = Capture::start(opts)?;
    tracing::info!(programs = ?cap.attached, "capturing");
    let deadline = a.duration.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs_f64(s));
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    // the signal streams are made once: `tokio::signal::ctrl_c()` in the loop registered a new
    // listener per event
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = Vec::with_capacity(4096);
    loop {
        tokio::select! {
            batch = cap.events.recv() => {
                let Some(batch) = batch else { break };
                for ev in &batch {
                    write_line(&mut out, &mut line, ev)?;
                }
                if cap.events.is_empty() {
                    out.flush()?;
                }
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = &mut sleep => break,
        }
    }
    out.flush()?;
    drop(out);
    // drain what is still queued so the counters below describe everything printed
    let (counters, stats) = {
        let mut cap = cap;
        while let Ok(ev) = cap.events.try_recv() {
            let _ = ev;
        }
        cap.stop().await
    };
    let k = counters.read();
    eprintln!(
        "{}",
        serde_json::json!({
            "kernel_sent": k.sent.iter().map(|(n, v)| (n.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "kernel_dropped": k.dropped.iter().map(|(n, v)| (n.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "kernel_dropped_by_cgroup": k.dropped_by_cgroup,
            "decoded": stats.decoded_total(),
            "undecodable": stats.undecodable_by_reason().into_iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// One event as a JSON line. JSON escapes the controls; bidi and other format characters it
/// leaves as they are, and they would reorder the analyst's terminal line, so a line with any
/// byte outside printable ASCII goes through [`podtrail::text::json_terminal_safe`]. `line` is
/// reused from event to event.
fn write_line(out: &mut impl Write, line: &mut Vec<u8>, ev: &Event) -> anyhow::Result<()> {
    line.clear();
    serde_json::to_writer(&mut *line, ev)?;
    if line.iter().all(|b| (0x20..0x7f).contains(b)) {
        out.write_all(line)?;
    } else {
        let text = std::str::from_utf8(line)?;
        out.write_all(podtrail::text::json_terminal_safe(text).as_bytes())?;
    }
    out.write_all(b"\n")?;
    Ok(())
}
