//! Destination names (issue 17): a real container resolves names through a real DNS server we
//! did not write (dnsmasq, from Debian), then connects; `podtrail run` reads the answers as
//! they reach the container's sockets (the `cgroup_skb/ingress` hook) and the exported
//! connect spans carry the names. A connect to an address no answer named says `unknown`; a
//! garbled answer from a hostile server is counted and changes nothing else.
//!
//! Everything lives in a network namespace the test creates (TEST-NET-3 addresses on its
//! loopback: the DNS server, a hostile server, and listeners), so nothing leaves the machine.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::agent::{containerd_config, metric, FileAgent};
use support::containers::Containerd;
use support::fixtures::NetNs;
use support::net::{free_port, http_get};
use support::otlp_json::{self, Span};

const DNS: &str = "203.0.113.53";
const HOSTILE: &str = "203.0.113.54";
const NAMED: &str = "203.0.113.80";
const UNNAMED: &str = "203.0.113.81";
const OUTBOUND: &str = "203.0.113.82";
const HOST_USR: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";

/// What the test runs inside its network namespace (support::fixtures::NetNs).
impl NetNs {
    /// `ip netns exec NS ARGS..`, running in the background (killed on drop).
    fn spawn(&self, args: &[&str]) -> Bg {
        let child = Command::new("ip")
            .args(["netns", "exec", self.name()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        Bg(child)
    }

    /// Waits until something listens on UDP or TCP `addr:port` inside the namespace.
    fn wait_listening(&self, proto: &str, addr: &str, port: u16, what: &mut Bg) {
        let want = format!("{addr}:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", self.name(), "ss", "-Hln", proto])
                .output()
                .expect("ss (iproute2)");
            if String::from_utf8_lossy(&out.stdout).split_whitespace().any(|w| w == want) {
                return;
            }
            if let Some(st) = what.0.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = what.0.stderr.take().unwrap().read_to_string(&mut err);
                panic!("{want} exited ({st}) before listening: {err}");
            }
            assert!(Instant::now() < deadline, "nothing listens on {proto} {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Answers every query with a message whose question's name is a compression pointer to
/// itself: an answer no parser may follow.
const HOSTILE_SERVER: &str = r#"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('203.0.113.54', 53))
while True:
    q, peer = s.recvfrom(2048)
    s.sendto(q[:2] + bytes([0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]), peer)
"#;

/// Accepts connections on port 8080 of every address and closes them.
const LISTENER: &str = r#"import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8080))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// Resolves its argument through glibc (the container's /etc/resolv.conf) and connects to
/// port 8080: what an application does. Run by the host's python (the host's /usr).
const CONNECT_PY: &str = "import socket, sys\n\
socket.create_connection((sys.argv[1], 8080), timeout=5).close()\n";

fn rootfs(root: &Path) {
    std::fs::create_dir_all(root.join("usr")).unwrap();
    for l in ["lib", "lib64"] {
        if !root.join(l).exists() {
            symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
    }
    std::fs::write(root.join("etc/resolv.conf"), format!("nameserver {DNS}\noptions timeout:2 attempts:2\n")).unwrap();
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n").unwrap();
    std::fs::write(root.join("connect.py"), CONNECT_PY).unwrap();
}

fn connects_to<'a>(spans: &'a [Span], peer: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| {
            s.name == "connect"
                && s.text("network.peer.address").as_deref() == Some(peer)
                && s.text("server.port").as_deref() == Some("8080")
        })
        .collect()
}

#[test]
fn connects_carry_the_name_their_process_resolved_and_say_when_none_is_known() {
    support::prereq::program("dnsmasq", "dnsmasq-base");
    support::prereq::file("/usr/bin/python3", "python3");
    let cd = Containerd::start();
    let ns = NetNs::new(&[DNS, HOSTILE, NAMED, UNNAMED, OUTBOUND]);
    let scratch = tempfile::tempdir().unwrap();
    // the real DNS server: a host record, a CNAME to it, a name for the outbound address
    let mut dnsmasq = ns.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        &format!("--listen-address={DNS}"),
        "--port=53",
        "--user=root",
        &format!("--pid-file={}", scratch.path().join("dnsmasq.pid").display()),
        &format!("--host-record=api.example.test,{NAMED}"),
        "--cname=www.example.test,api.example.test",
        &format!("--host-record=telemetry.example.test,{OUTBOUND}"),
        "--log-facility=-",
    ]);
    ns.wait_listening("-u", DNS, 53, &mut dnsmasq);
    let mut hostile = ns.spawn(&["/usr/bin/python3", "-c", HOSTILE_SERVER]);
    ns.wait_listening("-u", HOSTILE, 53, &mut hostile);
    let mut listener = ns.spawn(&["/usr/bin/python3", "-c", LISTENER]);
    ns.wait_listening("-t", "0.0.0.0", 8080, &mut listener);

    let metrics = format!("127.0.0.1:{}", free_port());
    let extra = format!("[metrics]\nlisten = \"{metrics}\"\n\n[export]\nconsole = true\n");
    let mut agent = FileAgent::start(&containerd_config(&cd.address, &cd.namespace, &extra), &[]);
    // the container's own process, outside every session, resolves and connects out: an
    // outbound trace carrying the name
    let init = "sleep 2; /usr/bin/python3 /connect.py telemetry.example.test; sleep 3600";
    let c = cd.run_prepared(&[], &["--with-ns", &ns.with_ns(), "--mount", HOST_USR], &["sh", "-c", init], &rootfs);
    std::thread::sleep(Duration::from_secs(5));

    // an exec session: by a CNAME, by an IP nobody resolved, a garbled answer, by the name
    let script = format!(
        "/usr/bin/python3 /connect.py www.example.test && /usr/bin/python3 /connect.py {UNNAMED} && \
         {{ nslookup evil.test {HOSTILE}; /usr/bin/python3 /connect.py api.example.test; }}"
    );
    let x = cd.exec(&c.id, &["sh", "-c", &script]);
    assert!(
        x.status.success(),
        "the session's connects: {}{}",
        String::from_utf8_lossy(&x.stdout),
        String::from_utf8_lossy(&x.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    let text = http_get(&format!("http://{metrics}/metrics")).expect("scrape /metrics").1;
    agent.terminate();
    let spans = otlp_json::read(&agent.file());
    let mine: Vec<Span> = spans.into_iter().filter(|s| s.str("container.id").as_deref() == Some(&c.id)).collect();
    let dump = || {
        mine.iter()
            .filter(|s| s.name == "connect")
            .map(|s| {
                format!(
                    "{} {:?} -> {:?} ({:?}) {:?}",
                    s.text("podtrail.session.kind").unwrap_or_default(),
                    s.text("server.address"),
                    s.text("network.peer.address"),
                    s.text("podtrail.network.destination.name_source"),
                    s.text("server.port")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // the session's two connects to the named address: the name each lookup asked for (the
    // CNAME, not its target, for the first)
    let named = connects_to(&mine, NAMED);
    let names: Vec<String> = named.iter().filter_map(|s| s.text("server.address")).collect();
    assert_eq!(names, ["www.example.test", "api.example.test"], "connects:\n{}\nlog:\n{}", dump(), agent.log());
    for s in &named {
        assert_eq!(s.text("podtrail.network.destination.name_source").as_deref(), Some("dns"));
        assert_eq!(s.text("podtrail.session.kind").as_deref(), Some("exec"));
        assert_eq!(s.text("podtrail.network.outcome").as_deref(), Some("connected"));
        assert!(s.text("podtrail.network.destination.address").is_none(), "nothing rewrote it: {s:#?}");
    }
    // an address no answer named says so
    let unnamed = connects_to(&mine, UNNAMED);
    assert_eq!(unnamed.len(), 1, "connects:\n{}", dump());
    assert_eq!(unnamed[0].text("server.address").as_deref(), Some(UNNAMED));
    assert_eq!(unnamed[0].text("podtrail.network.destination.name_source").as_deref(), Some("unknown"));
    // outside sessions: the outbound trace of the container's init carries its name
    let out = connects_to(&mine, OUTBOUND);
    assert_eq!(out.len(), 1, "connects:\n{}", dump());
    assert_eq!(out[0].text("podtrail.session.kind").as_deref(), Some("outbound"));
    assert_eq!(out[0].text("server.address").as_deref(), Some("telemetry.example.test"));
    // the console names it too, with the address beside it
    let console = agent.console();
    assert!(console.contains(&format!("connect api.example.test:8080 at {NAMED} tcp connected")), "{console}");

    // what the cache did: answers with names (A and AAAA lookups of three names, the AAAA
    // ones without an address), two addresses named, the hostile answer counted as malformed
    let m = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert!(m("podtrail_dns_answers_total{result=\"names\"}") >= 3.0, "{text}");
    assert!(m("podtrail_dns_answers_total{result=\"no_address\"}") >= 1.0, "{text}");
    assert!(m("podtrail_dns_answers_total{result=\"malformed\"}") >= 1.0, "{text}");
    assert!(m("podtrail_dns_names") >= 2.0, "{text}");
    assert!(m("podtrail_dns_destinations_total{name=\"known\"}") >= 3.0, "{text}");
    assert!(m("podtrail_dns_destinations_total{name=\"unknown\"}") >= 1.0, "{text}");
    let log = agent.log();
    assert!(log.contains("DNS answer that could not be parsed"), "the garbled answer is logged:\n{log}");
    drop(dnsmasq);
}
