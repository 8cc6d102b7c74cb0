//! Process stage benchmark (issue 3): cost per event of the session tracker over a recorded
//! storm, as a ratio to the decoder's cost on the same records in the same run, and the
//! process table's memory at 10 000 live processes.
//!
//! The storm is the kernel's ring-buffer records (the ABI structs of `capture::abi`, byte for
//! byte, as `bench/capture_storm.py`'s storms produce them): a container's init, then
//! - `session`: an exec session whose shell runs `/bin/true storm-N` in a loop (fork, exec,
//!   exit per command) and makes TCP connects with their outcome (connect + result): the
//!   tracker's expensive path, every process a member with its records;
//! - `host`: the same loop on the host, outside every container (no session: the cheap path
//!   that most of a busy node's events take).
//!
//! Per round: decode every record (`capture::decode::decode`), then feed the decoded events to
//! a fresh `SessionTracker`; each timed separately, the median of the rounds reported.
//! Memory: a counting global allocator; bytes still allocated after 10 000 processes were
//! forked and exec'd and are still alive, per process (host processes, then session members).
//!
//! Redaction (issue 13): the secrets pass (`spans::redact_update`, what the span task does
//! to every update) over the `session` storm's updates, per exec, beside the process stage's
//! own cost per exec (decode + tracker) in the same run: once with the storm's argv (nothing
//! to redact, the common case), once with every argv replaced by a command carrying secrets
//! (`curl -H 'Authorization: Bearer ...' https://user:pass@host/ -u admin:pw`).
//!
//! Live records (issue 14): `nc-tcp` is an exec session whose every command makes one TCP
//! connect, which the tracker says at once (`SessionUpdate::Live`, a rule can match it);
//! `nc-udp` the same records with UDP connects that never send (kept alike, said nothing).
//!
//! Span and rules stages (issue 15, exec20): `--stages` with `--only STORM` also passes the
//! storm's updates, as the agent does, through redaction, the span stage (`SpanStage`, one
//! `Output` per pass of 256 updates) and the rules stage (`AlertStage::annotate` with the shipped
//! rules), synchronously, so a profiler (callgrind) gives each stage's instructions per exec;
//! `--same-argv` makes every command `/bin/true storm-arg` (bench/session_storm.py's storm,
//! whose repeats fold) instead of `storm-N`.
//!
//! Run: `cargo bench --bench process_stage -- [--execs N] [--connects N] [--rounds R] [--only STORM]
//! [--stages] [--same-argv]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

use podtrail::capture::{abi, decode::decode, event::Event};
use podtrail::process::{containers::StaticContainers, SessionTracker};

/// `--same-argv`: every command of the storms is `/bin/true storm-arg`.
static SAME_ARGV: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const HOST_CG: u64 = 1;
const C: u64 = 100;
const HOST_PIDNS: u32 = 4026531836;
const PIDNS_C: u32 = 4026532001;
const MNT_C: u32 = 4026532100;
const MNT_HOST: u32 = 4026531841;

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the abi structs are repr(C) plain integers; we copy their bytes.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }.to_vec()
}

fn st(pid: u32) -> u64 {
    1_000_000_000 + pid as u64 * 1_000
}

fn header(kind: u32, len: usize, ts: u64, pid: u32, cg: u64) -> abi::Header {
    abi::Header { kind, len: len as u32, ts_ns: ts, pid, tid: pid, start_ns: st(pid), cgroup_id: cg }
}

struct Recorder {
    recs: Vec<Vec<u8>>,
    ts: u64,
}

impl Recorder {
    fn tick(&mut self) -> u64 {
        self.ts += 1_000;
        self.ts
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &mut self,
        pid: u32,
        ppid: u32,
        cg: u64,
        pcg: u64,
        nspid: u32,
        pidns: u32,
        mnt: u32,
        argv: &[&[u8]],
        exe_leaf_first: &[u8],
    ) {
        let mut raw_argv = Vec::new();
        for a in argv {
            raw_argv.extend_from_slice(a);
            raw_argv.push(0);
        }
        let len = abi::EXEC_VAR_OFF + exe_leaf_first.len() + raw_argv.len();
        let mut flags = 0;
        if cg != pcg {
            flags |= abi::EXEC_F_PARENT_OTHER_CGROUP;
        }
        let ts = self.tick();
        let e = abi::Exec {
            h: header(abi::KIND_EXEC, len, ts, pid, cg),
            ppid,
            nspid,
            parent_start_ns: st(ppid),
            parent_cgroup_id: pcg,
            pidns_ino: pidns,
            parent_pidns_ino: HOST_PIDNS,
            mntns_ino: mnt,
            loginuid: u32::MAX,
            flags,
            exe_ino: 1,
            exe_dev: 1,
            exe_nlink: 1,
            argc: argv.len() as u32,
            exe_path_len: exe_leaf_first.len() as u16,
            argv_len: raw_argv.len() as u16,
            comm: *b"true\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        // packed as the kernel writes it: fixed part, exe path, argv (the other parts empty)
        let mut rec = bytes_of(&e);
        rec.extend_from_slice(exe_leaf_first);
        rec.extend_from_slice(&raw_argv);
        self.recs.push(rec);
    }

    fn fork(&mut self, pid: u32, ppid: u32, cg: u64, pidns: u32, nspid: u32) {
        let ts = self.tick();
        let f = abi::Fork {
            h: header(abi::KIND_FORK, std::mem::size_of::<abi::Fork>(), ts, pid, cg),
            ppid,
            creator_pid: ppid,
            parent_start_ns: st(ppid),
            pidns_ino: pidns,
            nspid,
            ..Default::default()
        };
        self.recs.push(bytes_of(&f));
    }

    fn exit(&mut self, pid: u32, cg: u64) {
        let ts = self.tick();
        let x = abi::Exit {
            h: header(abi::KIND_EXIT, std::mem::size_of::<abi::Exit>(), ts, pid, cg),
            ..Default::default()
        };
        self.recs.push(bytes_of(&x));
    }

    fn connect(&mut self, pid: u32, cg: u64, cookie: u64, port: u16) {
        self.connect_by(pid, cg, cookie, port, 6);
    }

    /// A connect and its result; `protocol` 6 (TCP) or 17 (UDP, a connect that sends nothing).
    fn connect_by(&mut self, pid: u32, cg: u64, cookie: u64, port: u16, protocol: u8) {
        let ts = self.tick();
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
        let c = abi::Connect {
            h: header(abi::KIND_CONNECT, std::mem::size_of::<abi::Connect>(), ts, pid, cg),
            cookie,
            family: 2,
            protocol,
            sock_type: if protocol == 17 { 2 } else { 1 },
            dport: port,
            daddr,
            ..Default::default()
        };
        self.recs.push(bytes_of(&c));
        let ts = self.tick();
        let r = abi::ConnectResult {
            h: header(abi::KIND_CONNECT_RESULT, std::mem::size_of::<abi::ConnectResult>(), ts, pid, cg),
            cookie,
            error: 0,
            phase: abi::RESULT_SYSCALL,
            family: 2,
            dport: port,
            daddr,
        };
        self.recs.push(bytes_of(&r));
    }
}

/// The records of a storm; `in_session`: inside an exec session in container C, else on the host.
fn storm(in_session: bool, execs: u32, connects: u32) -> Vec<Vec<u8>> {
    let mut r = Recorder { recs: Vec::new(), ts: 0 };
    // the shim and the container's init
    r.exec(500, 1, HOST_CG, HOST_CG, 500, HOST_PIDNS, MNT_HOST, &[b"containerd-shim"], b"containerd-shim\0bin\0usr\0");
    r.fork(1001, 500, HOST_CG, HOST_PIDNS, 1001);
    r.exec(1001, 500, C, HOST_CG, 1, PIDNS_C, MNT_C, &[b"sleep", b"1000"], b"sleep\0bin\0");
    // the shell running the loop: an exec session root, or a host shell
    let (cg, pidns, mnt) = if in_session { (C, PIDNS_C, MNT_C) } else { (HOST_CG, HOST_PIDNS, MNT_HOST) };
    r.fork(2000, 500, HOST_CG, HOST_PIDNS, 2000);
    r.exec(
        2000,
        500,
        cg,
        HOST_CG,
        20,
        pidns,
        mnt,
        &[b"sh", b"-c", b"for i in $(seq N); do /bin/true storm-$i; done"],
        b"busybox\0bin\0",
    );
    let mut pid = 3000u32;
    for i in 0..execs.max(connects) {
        if i < execs {
            let arg = if SAME_ARGV.load(Relaxed) { "storm-arg".to_string() } else { format!("storm-{i}") };
            r.fork(pid, 2000, cg, pidns, pid);
            r.exec(pid, 2000, cg, cg, pid, pidns, mnt, &[b"/bin/true", arg.as_bytes()], b"true\0bin\0");
            r.exit(pid, cg);
            pid += 1;
        }
        if i < connects {
            r.connect(2000, cg, 1 + i as u64, 8080);
        }
    }
    r.recs
}

/// The `session` storm's commands, each making one connect before it exits: TCP (a rule
/// subject: said at once, `SessionUpdate::Live`) or UDP that never sends (the same records and
/// the same keeping, but said nothing). The difference is the cost of saying it.
fn storm_child_connects(execs: u32, protocol: u8) -> Vec<Vec<u8>> {
    let mut r = Recorder { recs: Vec::new(), ts: 0 };
    r.exec(500, 1, HOST_CG, HOST_CG, 500, HOST_PIDNS, MNT_HOST, &[b"containerd-shim"], b"containerd-shim\0bin\0usr\0");
    r.fork(1001, 500, HOST_CG, HOST_PIDNS, 1001);
    r.exec(1001, 500, C, HOST_CG, 1, PIDNS_C, MNT_C, &[b"sleep", b"1000"], b"sleep\0bin\0");
    r.fork(2000, 500, HOST_CG, HOST_PIDNS, 2000);
    r.exec(
        2000,
        500,
        C,
        HOST_CG,
        20,
        PIDNS_C,
        MNT_C,
        &[b"sh", b"-c", b"for i in $(seq N); do nc host $i; done"],
        b"busybox\0bin\0",
    );
    for i in 0..execs {
        let pid = 3000 + i;
        let arg = format!("{}", 1 + i % 60_000);
        r.fork(pid, 2000, C, PIDNS_C, pid);
        r.exec(pid, 2000, C, C, pid, PIDNS_C, MNT_C, &[b"nc", b"10.0.0.9", arg.as_bytes()], b"nc\0bin\0");
        r.connect_by(pid, C, 1 + i as u64, 1 + (i % 60_000) as u16, protocol);
        r.exit(pid, C);
    }
    r.recs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn tracker() -> SessionTracker {
    SessionTracker::new(Box::new(StaticContainers::default().with(C, "web")), HOST_PIDNS, 10_000_000)
}

fn time_storm(name: &str, recs: &[Vec<u8>], rounds: usize) {
    let (mut dec, mut proc_) = (Vec::new(), Vec::new());
    let mut updates = 0usize;
    for _ in 0..rounds {
        let t = Instant::now();
        let events: Vec<Event> = recs.iter().map(|b| decode(b).expect("the storm decodes")).collect();
        dec.push(t.elapsed().as_secs_f64());
        let mut tr = tracker();
        let t = Instant::now();
        let (mut n, mut out) = (0, Vec::new());
        for e in events {
            // owned, as the agent's stage takes them
            tr.handle_into(e, &mut out);
            n += out.len();
            out.clear();
        }
        proc_.push(t.elapsed().as_secs_f64());
        updates = n;
        std::hint::black_box(&tr);
    }
    let n = recs.len() as f64;
    let (d, p) = (median(dec) / n * 1e9, median(proc_) / n * 1e9);
    println!("| {name:<8} | {:>8} | {updates:>8} | {d:>14.0} | {p:>15.0} | {:>5.2} |", recs.len(), p / d);
}

/// The storm's updates through redaction, the span stage and the rules stage, as the agent
/// passes them (one output per 256 updates), each stage timed alone; the process stage's
/// updates are made first, outside the timing.
fn time_stages(recs: &[Vec<u8>], rounds: usize) {
    use podtrail::clock::BootClock;
    use podtrail::model::SessionUpdate;
    use podtrail::rules::{AlertStage, RuleSource, RulesConfig};
    use podtrail::scope::ScopeConfig;
    use podtrail::spans::{BuildCtx, NoAttributor, Output, SpanStage, SpansConfig};
    let rules = RuleSource::load(RulesConfig::default()).expect("shipped rules").0.rules();
    let red = podtrail::spans::build_redactor(&Default::default());
    let (mut red_t, mut span_t, mut rule_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut spans, mut execs) = (0usize, 0usize);
    for _ in 0..rounds {
        let mut tr = tracker();
        let mut updates: Vec<SessionUpdate> = Vec::new();
        for b in recs {
            tr.handle_into(decode(b).expect("the storm decodes"), &mut updates);
        }
        execs = updates.iter().filter(|u| matches!(u, SessionUpdate::Live(..))).count();
        let boot = [7u8; 16];
        let clock = BootClock::fixed(1_700_000_000_000_000_000);
        let cfg = SpansConfig::default();
        let room = cfg.max_kept_spans_per_session.saturating_sub(cfg.max_spans_per_session) as u64;
        let mut stage =
            SpanStage::new(BuildCtx::new(boot, clock, cfg), std::sync::Arc::new(NoAttributor)).with_records();
        let mut alerts = AlertStage::new(boot, clock, ScopeConfig::default(), false).keeping(room);
        let mut cache = podtrail::spans::ArgvCache::default();
        let now = Instant::now();
        let (mut r, mut sp, mut ru) = (0f64, 0f64, 0f64);
        let mut n = 0usize;
        let mut it = updates.into_iter().peekable();
        while it.peek().is_some() {
            let mut pass: Vec<SessionUpdate> = it.by_ref().take(256).collect();
            let t = Instant::now();
            for u in &mut pass {
                podtrail::spans::redact_update(&red, &mut cache, u);
            }
            r += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut out = Output::default();
            for u in pass {
                stage.update(u, now, &mut out);
            }
            sp += t.elapsed().as_secs_f64();
            let t = Instant::now();
            alerts.annotate(&rules, &mut out);
            ru += t.elapsed().as_secs_f64();
            n += out.spans.len();
            drop(out);
        }
        let mut out = Output::default();
        stage.shutdown(u64::MAX / 2, &mut out);
        alerts.annotate(&rules, &mut out);
        n += out.spans.len();
        std::hint::black_box(&out);
        spans = n;
        red_t.push(r);
        span_t.push(sp);
        rule_t.push(ru);
    }
    let per = |v: Vec<f64>| median(v) / execs as f64 * 1e9;
    println!("\nstages per exec ({execs} execs, {spans} spans out): redaction {:.0} ns, span stage {:.0} ns, rules stage {:.0} ns", per(red_t), per(span_t), per(rule_t));
}

/// Redaction per exec beside the process stage per exec, same storm, same run.
fn time_redaction(recs: &[Vec<u8>], rounds: usize) {
    use podtrail::model::SessionUpdate;
    let mut stage = Vec::new();
    let mut updates: Vec<SessionUpdate> = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut tr = tracker();
        let mut out = Vec::new();
        for b in recs {
            out.extend(tr.handle(&decode(b).expect("the storm decodes")));
        }
        stage.push(t.elapsed().as_secs_f64());
        updates = out;
    }
    let images: usize = updates
        .iter()
        .map(|u| match u {
            SessionUpdate::ProcessEnded(_, r) => r.images.len(),
            SessionUpdate::Ended(_, rs) => rs.iter().map(|r| r.images.len()).sum(),
            SessionUpdate::Started(_) | SessionUpdate::Live(..) | SessionUpdate::Transcript(..) => 0,
        })
        .sum();
    let with_secrets: Vec<SessionUpdate> = updates
        .iter()
        .cloned()
        .map(|mut u| {
            let recs: &mut [podtrail::model::ProcessRecord] = match &mut u {
                SessionUpdate::ProcessEnded(_, r) => std::slice::from_mut(r),
                SessionUpdate::Ended(_, rs) => rs,
                SessionUpdate::Started(_) | SessionUpdate::Live(..) | SessionUpdate::Transcript(..) => &mut [],
            };
            for r in recs {
                for img in &mut r.images {
                    img.argv = [
                        "curl",
                        "-sS",
                        "-H",
                        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc",
                        "-u",
                        "admin:hunter2",
                        "https://user:pass@api.example.com/v1/items?limit=10",
                    ]
                    .iter()
                    .map(|a| a.as_bytes().to_vec())
                    .collect();
                }
            }
            u
        })
        .collect();
    let red =
        podtrail::redact::Redactor::new(&podtrail::redact::RedactConfig { key: "bench".into(), ..Default::default() })
            .unwrap();
    let time = |set: &[SessionUpdate]| {
        let mut v = Vec::new();
        let mut n = 0u64;
        for _ in 0..rounds {
            let mut batch = set.to_vec();
            // a fresh cache per round: every argv here is distinct (`storm-N`), so this times
            // the redactor plus the cache's miss, what a new command costs
            let mut cache = podtrail::spans::ArgvCache::default();
            let t = Instant::now();
            for u in &mut batch {
                podtrail::spans::redact_update(&red, &mut cache, u);
            }
            v.push(t.elapsed().as_secs_f64());
            n = batch
                .iter()
                .map(|u| match u {
                    SessionUpdate::ProcessEnded(_, r) => r.images.iter().map(|i| i.argv_redacted as u64).sum::<u64>(),
                    _ => 0,
                })
                .sum();
            std::hint::black_box(&batch);
        }
        (median(v) / images as f64 * 1e9, n)
    };
    let (plain, n0) = time(&updates);
    let (secret, n1) = time(&with_secrets);
    let per_exec = median(stage) / images as f64 * 1e9;
    println!(
        "
redaction per exec ({images} images of the session storm; the stage: decode + tracker):"
    );
    println!(
        "| argv                 | redaction ns/exec | values redacted | process stage ns/exec | redaction / stage |"
    );
    println!(
        "|----------------------|------------------:|----------------:|----------------------:|------------------:|"
    );
    println!("| storm (no secret)    | {plain:>17.0} | {n0:>15} | {per_exec:>21.0} | {:>16.2}x |", plain / per_exec);
    println!("| curl with 3 secrets  | {secret:>17.0} | {n1:>15} | {per_exec:>21.0} | {:>16.2}x |", secret / per_exec);
}

/// Bytes held per live process after `n` fork+exec with nothing exited.
fn memory(in_session: bool, n: u32) -> f64 {
    let recs = storm(in_session, 0, 0);
    let mut events: Vec<Event> = recs.iter().map(|b| decode(b).unwrap()).collect();
    let (cg, pidns, mnt) = if in_session { (C, PIDNS_C, MNT_C) } else { (HOST_CG, HOST_PIDNS, MNT_HOST) };
    let mut live = Recorder { recs: Vec::new(), ts: 1 << 40 };
    for pid in 10_000..10_000 + n {
        live.fork(pid, 2000, cg, pidns, pid);
        live.exec(
            pid,
            2000,
            cg,
            cg,
            pid,
            pidns,
            mnt,
            &[b"/usr/bin/python3", b"worker.py", b"--queue", b"jobs"],
            b"python3\0bin\0usr\0",
        );
    }
    let more: Vec<Event> = live.recs.iter().map(|b| decode(b).unwrap()).collect();
    let mut tr = tracker();
    for e in events.drain(..) {
        tr.handle(&e);
    }
    let before = LIVE.load(Relaxed);
    for e in &more {
        tr.handle(e);
    }
    let after = LIVE.load(Relaxed);
    assert!(tr.len() >= n as usize);
    (after - before) as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str, d: u32| {
        args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(d)
    };
    let (execs, connects, rounds) = (get("--execs", 20_000), get("--connects", 20_000), get("--rounds", 9) as usize);
    // `--only STORM`: that storm's table row alone (for a profiler: `session`, `host`,
    // `nc-tcp`, `nc-udp`), nothing after it
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    SAME_ARGV.store(args.iter().any(|a| a == "--same-argv"), Relaxed);
    let stages = args.iter().any(|a| a == "--stages");
    println!("storm: {execs} execs (fork+exec+exit), {connects} connects (+result); median of {rounds} rounds\n");
    println!("| storm    | records  | updates  | decode ns/rec  | process ns/rec  | ratio |");
    println!("|----------|---------:|---------:|---------------:|----------------:|------:|");
    if let Some(only) = only {
        let recs = match only.as_str() {
            "session" => storm(true, execs, connects),
            "host" => storm(false, execs, connects),
            "nc-tcp" => storm_child_connects(execs, 6),
            "nc-udp" => storm_child_connects(execs, 17),
            other => panic!("--only {other}: one of session, host, nc-tcp, nc-udp"),
        };
        time_storm(&only, &recs, rounds);
        if stages {
            time_stages(&recs, rounds);
        }
        return;
    }
    time_storm("session", &storm(true, execs, connects), rounds);
    time_storm("host", &storm(false, execs, connects), rounds);
    // issue 14: every command's connect said at once (tcp) beside the same records said
    // nothing (udp that never sends)
    time_storm("nc-tcp", &storm_child_connects(execs, 6), rounds);
    time_storm("nc-udp", &storm_child_connects(execs, 17), rounds);
    time_redaction(&storm(true, execs, 0), rounds);
    let n = 10_000;
    println!("\ntable memory at {n} live processes (fork + exec, 4-argument argv):");
    println!(
        "  host processes:   {:>6.0} bytes/process, {:.1} MiB",
        memory(false, n),
        memory(false, n) * n as f64 / 1048576.0
    );
    println!(
        "  session members:  {:>6.0} bytes/process, {:.1} MiB",
        memory(true, n),
        memory(true, n) * n as f64 / 1048576.0
    );
}
