//! Issue 6 end to end: what is recorded outside exec sessions, by scope, with the real kernel,
//! a private containerd + runc (tests/support), and the real `podtrail run` writing OTLP/JSON.
//!
//! - A container's application (its init) spawns `sh -c 'wget ...'` outside any session: two
//!   agents watch the same container at once, one in the `containers` scope (a `workload`
//!   trace: sh, wget under it, wget's connect under wget) and one in the default scope (no
//!   such trace, and no connect: the destination is on loopback).
//! - Debian's `tcpdump` on the host and in a container (the host's /usr mounted read-only
//!   into it): each a `watched_exec` trace with its arguments; `uname` on the host is not
//!   recorded in the default scope.
//! - glibc resolving a name in a container against a DNS server outside the cluster: the
//!   query (a connected UDP socket that sends) is one outbound record; the address-sorting
//!   connects to each answer (RFC 6724 sorting in getaddrinfo: connect, never send) are none.
//!
//! Containers share the host's network (`--net-host`). Needs root, containerd and tcpdump;
//! fails (never skips) when one is missing.

mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::unix::fs::symlink,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use support::agent::{containerd_config, Podtrail, Scratch};
use support::containers::Containerd;
use support::otlp_json::{self, Span};

/// One test at a time in this binary: each starts agents that see every event on the node.
static SERIAL: Mutex<()> = Mutex::new(());

/// The agent `podtrail run --config <dir>/NAME.toml --otlp-file <dir>/NAME.jsonl`, its
/// config following `cd` plus `extra`.
fn agent(dir: &Path, name: &str, cd: &Containerd, extra: &str) -> Podtrail {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let config = sub.join("podtrail.toml");
    std::fs::write(&config, containerd_config(&cd.address, &cd.namespace, extra)).unwrap();
    let file = sub.join("traces.jsonl");
    Podtrail::start(&sub, &["--config", config.to_str().unwrap(), "--otlp-file", file.to_str().unwrap()])
}

/// Stops the agent (it drains and flushes) and returns every span it wrote.
fn spans_of(dir: &Path, name: &str, mut p: Podtrail) -> Vec<Span> {
    p.stop();
    otlp_json::read(&dir.join(name).join("traces.jsonl"))
}

fn roots_of<'a>(spans: &'a [Span], container: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.is_root() && s.text("container.id").as_deref() == Some(container)).collect()
}

fn in_trace<'a>(spans: &'a [Span], root: &Span) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.trace_id == root.trace_id).collect()
}

/// A one-shot HTTP server on loopback: answers every request with a small body, until dropped.
struct Http {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Http {
    fn start() -> Http {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Http { port, stop }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn an_application_spawning_sh_c_is_a_workload_trace_in_the_containers_scope_only() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let dir = Scratch::new("e2e-scopes-workload");
    let http = Http::start();
    let containers = agent(&dir.0, "containers", &cd, "[process.activity]\nscope = \"containers\"\n");
    let default = agent(&dir.0, "default", &cd, "");
    // the application: waits for the agents to know the container, then spawns the job
    let job = format!("wget -q -O /tmp/got http://127.0.0.1:{}/feed", http.port);
    let app = format!("sleep 3; sh -c '{job}'; sleep 3600");
    let c = cd.run(&[], &["--net-host"], &["sh", "-c", &app]);
    let got = cd.rootfs(&c.id).join("tmp/got");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !got.exists() {
        assert!(Instant::now() < deadline, "the container's job never fetched the page:\n{}", cd.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let all = spans_of(&dir.0, "containers", containers);
    let def = spans_of(&dir.0, "default", default);

    // each process tree the application starts is one trace: `sleep 3`, then the job
    let roots = roots_of(&all, &c.id);
    let workload: Vec<&&Span> =
        roots.iter().filter(|r| r.text("podtrail.session.kind").as_deref() == Some("workload")).collect();
    let first_process = |r: &Span| {
        let t = in_trace(&all, r);
        t.iter().find(|s| s.parent == r.span_id).and_then(|s| s.text("process.command_args"))
    };
    let mut trees: Vec<String> = workload.iter().filter_map(|r| first_process(r)).collect();
    trees.sort();
    assert_eq!(trees.len(), 2, "two workload traces (sleep 3, the sh -c job): {roots:#?}");
    assert!(trees[0].contains("\"sh\"") && trees[0].contains("wget -q"), "{trees:?}");
    assert!(trees[1].contains("\"sleep\"") && trees[1].contains("\"3\""), "{trees:?}");
    let root = *workload.iter().find(|r| first_process(r).is_some_and(|a| a.contains("wget -q"))).unwrap();
    assert_eq!(root.name, "workload");
    let trace = in_trace(&all, root);
    let sh = trace.iter().find(|s| s.name == "sh").expect("the sh process span");
    assert_eq!(sh.parent, root.span_id, "sh is the tree's root process");
    // busybox sh runs a lone command by exec: wget is the same process's next image
    let wget = trace.iter().find(|s| s.name == "wget").expect("the wget process span");
    assert_eq!(wget.parent, sh.span_id, "wget under sh");
    let connect = trace
        .iter()
        .find(|s| s.name == "connect" && s.text("server.port") == Some(http.port.to_string()))
        .expect("wget's connect in the tree");
    assert_eq!(connect.parent, wget.span_id);
    assert_eq!(connect.text("podtrail.network.destination.scope").as_deref(), Some("loopback"));
    // the application (the container's init, `sh -c app`) is the workload, never a tree
    assert!(
        !roots.iter().any(|r| r.text("process.command_args").is_some_and(|a| a.contains("sleep 3600"))
            && r.text("podtrail.session.kind").as_deref() == Some("workload")),
        "the init opened a trace"
    );

    let mine = roots_of(&def, &c.id);
    assert!(mine.is_empty(), "default scope: nothing from this container, got {mine:#?}");
    assert!(
        !def.iter().any(|s| s.text("server.port") == Some(http.port.to_string())),
        "default scope: the loopback connect is not recorded"
    );
}

/// A rootfs with the host's /usr mounted read-only (`ctr run --mount`), so Debian's binaries
/// and glibc run in it; `/lib` and `/lib64` point into it as on the host.
fn with_host_usr(root: &Path) {
    std::fs::create_dir_all(root.join("usr")).unwrap();
    for l in ["lib", "lib64"] {
        if !root.join(l).exists() {
            symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
    }
}

const HOST_USR: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";

/// Sends UDP datagrams to 127.0.0.1:`port` until `done` says stop (or 20 s): what ends a
/// `tcpdump -c 1 udp port P`.
fn poke_udp(port: u16, mut done: impl FnMut() -> bool) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < deadline {
        let _ = s.send_to(b"poke", ("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tcpdump_on_the_host_and_in_a_container_is_recorded_with_its_arguments() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    support::prereq::file("/usr/bin/tcpdump", "tcpdump");
    let cd = Containerd::start();
    let dir = Scratch::new("e2e-scopes-tcpdump");
    let p = agent(&dir.0, "default", &cd, "");

    // on the host: tcpdump until one datagram to port 9 is seen; uname, not on the list
    let mut host = Command::new("/usr/bin/tcpdump")
        .args(["-i", "lo", "-nn", "-c", "1", "-Z", "root", "udp", "port", "9"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump on the host");
    let host_pid = host.id();
    std::thread::sleep(Duration::from_secs(2));
    poke_udp(9, || host.try_wait().ok().flatten().is_some());
    let _ = host.kill();
    let _ = host.wait();
    let uname = Command::new("/usr/bin/uname").arg("-a").stdout(Stdio::null()).status().unwrap();
    assert!(uname.success());

    // in a container: its own process (no exec session) runs tcpdump from the host's /usr
    let script =
        "sleep 2; /usr/bin/tcpdump -i lo -nn -c 1 -Z root udp port 19 >/tmp/out 2>&1; echo $? >/tmp/done; sleep 3600";
    let c = cd.run_prepared(&[], &["--net-host", "--mount", HOST_USR], &["sh", "-c", script], &with_host_usr);
    let done = cd.rootfs(&c.id).join("tmp/done");
    poke_udp(19, || done.exists());
    assert!(done.exists(), "tcpdump in the container never finished:\n{}", cd.log());
    std::thread::sleep(Duration::from_secs(1));
    let spans = spans_of(&dir.0, "default", p);

    let watched = |s: &&Span| s.text("podtrail.session.kind").as_deref() == Some("watched_exec") && s.is_root();
    let host_root = spans
        .iter()
        .filter(watched)
        .find(|r| {
            in_trace(&spans, r)
                .iter()
                .any(|s| s.name == "tcpdump" && s.text("process.pid") == Some(host_pid.to_string()))
        })
        .unwrap_or_else(|| panic!("no watched_exec trace for the host's tcpdump (pid {host_pid})"));
    assert_eq!(host_root.name, "watched exec");
    let hp = in_trace(&spans, host_root).into_iter().find(|s| s.name == "tcpdump").unwrap();
    let args = hp.text("process.command_args").unwrap();
    assert!(args.contains("\"udp\"") && args.contains("\"9\"") && args.contains("\"-i\""), "{args}");
    assert!(hp.text("container.id").is_none_or(|id| id != c.id), "the host's tcpdump is not the container's");

    let inside = roots_of(&spans, &c.id);
    let croot =
        inside.iter().find(|r| watched(r)).unwrap_or_else(|| panic!("no tcpdump trace in {}: {inside:#?}", c.id));
    let cp = in_trace(&spans, croot).into_iter().find(|s| s.name == "tcpdump").expect("tcpdump span");
    let args = cp.text("process.command_args").unwrap();
    assert!(args.contains("\"19\""), "{args}");
    assert_eq!(cp.text("process.executable.path").as_deref(), Some("/usr/bin/tcpdump"));

    assert!(
        !spans.iter().any(|s| s.name == "uname"),
        "default scope: a program not on the watch list is not recorded on the host"
    );
}

/// A DNS server on `addr`:53 answering every A query with `answers` and every other query
/// with no data; counts the queries it answered. Stops when dropped.
struct Dns {
    queries: Arc<Mutex<u32>>,
    stop: Arc<AtomicBool>,
}

impl Dns {
    fn start(addr: Ipv4Addr, answers: &'static [[u8; 4]]) -> Dns {
        let sock = UdpSocket::bind((addr, 53)).expect("bind the test DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (queries, stop) = (Arc::new(Mutex::new(0)), Arc::new(AtomicBool::new(false)));
        let (q, s) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = dns_reply(&buf[..n], answers) {
                    let _ = sock.send_to(&reply, from);
                    *q.lock().unwrap() += 1;
                }
            }
        });
        Dns { queries, stop }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The answer to one DNS query (RFC 1035 4.1): the header with QR, RD and RA set, the
/// question echoed, and for type A one record per address (name by pointer to offset 12).
fn dns_reply(q: &[u8], answers: &[[u8; 4]]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + q[i] as usize;
    }
    let qend = i + 5; // the root label, QTYPE, QCLASS
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let n = if qtype == 1 { answers.len() as u16 } else { 0 };
    let mut r = Vec::with_capacity(qend + 16 * answers.len());
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81, 0x80, 0, 1]);
    r.extend_from_slice(&n.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..qend)?);
    for a in answers.iter().take(n as usize) {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(a);
    }
    Some(r)
}

/// One more address on the loopback interface, removed on drop.
struct LoAddr(String);

impl LoAddr {
    fn add(addr: &str) -> LoAddr {
        let cidr = format!("{addr}/32");
        let _ = Command::new("ip").args(["addr", "del", &cidr, "dev", "lo"]).stderr(Stdio::null()).status();
        let st = Command::new("ip").args(["addr", "add", &cidr, "dev", "lo"]).status().expect("ip (iproute2)");
        assert!(st.success(), "ip addr add {cidr} dev lo");
        LoAddr(cidr)
    }
}

impl Drop for LoAddr {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["addr", "del", &self.0, "dev", "lo"]).status();
    }
}

#[test]
fn glibc_name_lookup_is_one_outbound_query_and_its_address_sorting_is_not_traffic() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    // TEST-NET addresses (RFC 5737): outside every cluster range, so `external`
    const NS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
    const ANSWERS: &[[u8; 4]] = &[[203, 0, 113, 10], [203, 0, 113, 11]];
    let _addr = LoAddr::add(&NS.to_string());
    let dns = Dns::start(NS, ANSWERS);
    let dir = Scratch::new("e2e-scopes-dns");
    let p = agent(&dir.0, "default", &cd, "");

    let prepare = |root: &Path| {
        with_host_usr(root);
        std::fs::write(root.join("etc/nsswitch.conf"), "hosts: dns\n").unwrap();
        std::fs::write(root.join("etc/resolv.test"), format!("nameserver {NS}\noptions attempts:1 timeout:2\n"))
            .unwrap();
        symlink("busybox", root.join("bin/mount")).unwrap();
    };
    // `ctr run --net-host` mounts the host's resolv.conf over any of ours (after `--mount`s):
    // the container, privileged for it, mounts its own over that first
    let script = "sleep 2; mount --bind /etc/resolv.test /etc/resolv.conf && /usr/bin/getent ahostsv4 feed.example.test >/tmp/out 2>&1; echo $? >/tmp/done; sleep 3600";
    let c = cd.run_prepared(&[], &["--net-host", "--privileged", "--mount", HOST_USR], &["sh", "-c", script], &prepare);
    let done = cd.rootfs(&c.id).join("tmp/done");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done.exists() {
        assert!(Instant::now() < deadline, "getent never finished:\n{}", cd.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = std::fs::read_to_string(cd.rootfs(&c.id).join("tmp/out")).unwrap();
    assert!(out.contains("203.0.113.10") && out.contains("203.0.113.11"), "getent resolved through our server: {out}");
    assert!(*dns.queries.lock().unwrap() >= 1);
    // the same lookup in an exec session, where every connect is kept: the sorting connects
    // are there, seen by the kernel and counted on the root as UDP connects that sent nothing
    let x = cd.exec(&c.id, &["/usr/bin/getent", "ahostsv4", "feed.example.test"]);
    assert!(x.status.success(), "getent in the exec session: {}", String::from_utf8_lossy(&x.stderr));
    std::thread::sleep(Duration::from_secs(1));
    let spans = spans_of(&dir.0, "default", p);
    let session = roots_of(&spans, &c.id)
        .into_iter()
        .find(|r| r.text("podtrail.session.kind").as_deref() == Some("exec"))
        .expect("the exec session's root");
    assert_eq!(
        session.text("podtrail.session.udp_unsent").as_deref(),
        Some("2"),
        "one sorting connect per answer, seen and not taken for traffic: {session:#?}"
    );
    let in_session = in_trace(&spans, session);
    assert!(
        in_session.iter().any(|s| s.text("server.address").as_deref() == Some("198.51.100.53")),
        "the session's query is a connect span"
    );

    let connects: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id != session.trace_id)
        .filter(|s| s.text("container.id").as_deref() == Some(c.id.as_str()) && s.name == "connect")
        .collect();
    let to = |a: &str| connects.iter().filter(|s| s.text("server.address").as_deref() == Some(a)).count();
    assert_eq!(to("198.51.100.53"), 1, "the query is one outbound record: {connects:#?}");
    let q = connects.iter().find(|s| s.text("server.address").as_deref() == Some("198.51.100.53")).unwrap();
    assert_eq!(q.text("network.transport").as_deref(), Some("udp"));
    assert_eq!(q.text("server.port").as_deref(), Some("53"));
    assert_eq!(q.text("podtrail.session.kind").as_deref(), Some("outbound"));
    assert_eq!(to("203.0.113.10") + to("203.0.113.11"), 0, "address sorting is not traffic: {connects:#?}");
}
