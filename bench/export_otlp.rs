//! Export benchmark (issue 4): spans per second per core from `SessionUpdate`s to OTLP/gRPC
//! bytes on the wire, CPU per span, and memory held per open session, for podtrail's export
//! stage beside a minimal exporter on the plain opentelemetry SDK path, in the same run, to
//! the same receiver.
//!
//! - podtrail: `SessionUpdate`s -> `export::run_export` (span stage with budgets and hold,
//!   podtrail's counting queue, opentelemetry-otlp's tonic `SpanExporter`) -> receiver.
//! - minimal: the very same `SpanData` (built by podtrail's span stage before the clock
//!   starts) -> opentelemetry-otlp's tonic `SpanExporter::export`, 512 spans per request, one
//!   request in flight (what podtrail's queue does too) -> the same receiver.
//!
//! - minimal/s: the same, cut into requests the way podtrail's queue cuts them (a request
//!   ends at each session's root, so that the root's loss mark covers what was sent before).
//!
//! The difference is what podtrail's own stages cost: building spans from process records,
//! the hold stage, the queue with its loss accounting, and its request sizes.
//!
//! The receiver is this binary re-run as a child process (`--receiver`), so its decoding CPU
//! is not billed to either exporter; CPU is this process's user+system time (getrusage).
//! Memory is counted by a counting global allocator: bytes still allocated with 1 000
//! sessions open (started, some processes ended, not ended), against the plain SDK holding one
//! open root span per session with the same attributes.
//!
//! - disk/never, disk/batch, disk/always: the podtrail path with `podtrail run`'s durable
//!   queue (issue 14) under each fsync policy, files on `--dir` (default
//!   /var/lib/podtrail-bench: a real disk, not a tmpfs).
//!
//! Then the recovery of a backlog left on disk by a killed run (`--backlog-mib`, 1024 by
//! default): opening the queue (every record's checksum checked, the page cache dropped
//! first) and sending it all.
//!
//! Redaction (issue 15): rows ending in `+r` run sessions whose argv carries four secrets per
//! session (a password flag, a bearer header, a URL password, an AWS key id: the span task's
//! redaction pass replaces each with a keyed token); the rows without run the same pass over
//! argv with nothing to replace (redaction is always on: "without" means nothing to redact).
//! The references `minimal` and `minimal+r` send the spans of the same sessions, redacted the
//! same way, so each podtrail row has its SDK reference in the same round.
//!
//! Run: `cargo bench --bench export_otlp -- [--sessions N] [--rounds R] [--backlog-mib M] [--dir D]
//! [--policies never,always] [--paths NAME,...]` (`--backlog-mib 0`: no recovery;
//! `--policies none`: only the default fsync policy, `batch`; `--paths`: only those rows, e.g.
//! under perf; `--recovery-only`: just the backlog; `--memory-only`: just the memory figures).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use podtrail::capture::event::{ExitStatus, ProcessKey, Transport};
use podtrail::clock::BootClock;
use podtrail::export::segments::Fsync;
use podtrail::export::{ExportConfig, ExportQueue, Queued, RetryRules, RunExport};
use podtrail::metrics::Metrics;
use podtrail::model::*;
use podtrail::spans::{BuildCtx, NoAttributor, Output, SpanStage, SpansConfig};
use prost::Message;

/// The agent's own allocator (`podtrail::heap`), counted: both paths run on what ships. With
/// `PODTRAIL_BENCH_ALLOC=system` in the environment, glibc's malloc instead (the agent's
/// allocator before issue 15's hot16 round), to compare the two in one build.
struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
const INNER: podtrail::heap::Allocator = podtrail::heap::ALLOCATOR;
/// 0: not read yet, 1: the agent's allocator, 2: the system's. Read at the first allocation,
/// before `main` (one thread), and never changed after: a block is freed by who allocated it.
static USE_SYSTEM: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn system() -> bool {
    match USE_SYSTEM.load(Relaxed) {
        0 => {
            // SAFETY: getenv with a NUL-terminated name; it does not allocate.
            let v = unsafe { libc::getenv(c"PODTRAIL_BENCH_ALLOC".as_ptr()) };
            // SAFETY: a non-null getenv result is a NUL-terminated string.
            let sys = !v.is_null() && unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() == b"system";
            USE_SYSTEM.store(if sys { 2 } else { 1 }, Relaxed);
            sys
        }
        n => n == 2,
    }
}

// SAFETY: delegates to one allocator for the whole run; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Relaxed);
        if system() {
            System.alloc(l)
        } else {
            INNER.alloc(l)
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size(), Relaxed);
        if system() {
            System.dealloc(p, l)
        } else {
            INNER.dealloc(p, l)
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATED.fetch_add(n, Relaxed);
        ALLOCATED.fetch_sub(l.size(), Relaxed);
        if system() {
            System.realloc(p, l, n)
        } else {
            INNER.realloc(p, l, n)
        }
    }
}

#[global_allocator]
static A: Counting = Counting;

const S: u64 = 1_000_000_000;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

// ---- the sessions ------------------------------------------------------------------------

/// How many containers the sessions are spread over (session `k` is in container `k % N`):
/// 110 by default, the most pods a node runs under the kubelet's default `maxPods`, one
/// container each, so the fewest sessions per container a node with 1 000 open has. The span
/// stage shares the common attributes of one container's sessions (issue 15), so all
/// sessions in one container would flatter it; `--memory-only` also prints one container
/// per session, the worst case.
static CONTAINERS: AtomicU32 = AtomicU32::new(110);

/// Container `c`: the same strings, of the same lengths, with `c` in its id, pod and uid.
fn container(c: u32) -> ContainerInfo {
    ContainerInfo {
        id: format!("0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab{c:04x}").into(),
        cgroup_id: 4242 + c as u64,
        pod_namespace: Some("billing".into()),
        pod_name: Some(format!("api-7d9f8-{c:05}").into()),
        pod_uid: Some(format!("6f1c9a7e-0000-4000-8000-{c:012}").into()),
        container_name: Some("api".into()),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("api".into()),
        started_ns: None,
        node_name: Some("node-1".into()),
        image_name: Some("registry.example:5000/billing/api:1.4.2".into()),
        image_id: None,
        pod_labels: vec![("app".into(), "api".into())],
        source: "kube_api",
    }
}

/// Container `c`'s info made again as the process stage and the pod filter make it: its id,
/// pod name and uid a new allocation of their length each (a clone would share the text made
/// outside the counting window, and hide it), what a node's containers carry alike (namespace,
/// node, image, workload, labels) one string for all (`Text::common`), as
/// `ContainerMeta::apply` and `PodInfo::apply_to` make them.
fn made_here(c: &ContainerInfo) -> ContainerInfo {
    let common = |t: &Option<podtrail::model::Text>| t.as_deref().map(podtrail::model::Text::common);
    let n = ContainerInfo {
        id: c.id.as_str().into(),
        pod_namespace: common(&c.pod_namespace),
        pod_name: c.pod_name.as_deref().map(Into::into),
        pod_uid: c.pod_uid.as_deref().map(Into::into),
        container_name: common(&c.container_name),
        workload_kind: common(&c.workload_kind),
        workload_name: common(&c.workload_name),
        node_name: common(&c.node_name),
        image_name: common(&c.image_name),
        image_id: common(&c.image_id),
        pod_labels: c
            .pod_labels
            .iter()
            .map(|(k, v)| (podtrail::model::Text::common(k), podtrail::model::Text::common(v)))
            .collect(),
        ..*c
    };
    assert!(n == *c && !std::ptr::eq(n.id.as_ptr(), c.id.as_ptr()));
    n
}

fn key(pid: u32) -> ProcessKey {
    ProcessKey { pid, start_ns: pid as u64 * 1000 }
}

fn info(root: u32, start: u64, end: Option<u64>) -> SessionInfo {
    let containers = CONTAINERS.load(Relaxed).max(1);
    SessionInfo {
        end_ns: end,
        root_argv: vec![b"sh".to_vec()],
        root_tty: true,
        ..SessionInfo::new(SessionId(key(root)), SessionKind::Exec, container((root - 10_000) / 8 % containers), start)
    }
}

fn image(start: u64, argv: &[String]) -> ImageRecord {
    ImageRecord {
        exec_index: 0,
        start_ns: start,
        end_ns: None,
        inherited: false,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        argv_truncated: false,
        argv_redacted: 0,
        filename: b"/proc/self/exe"[..].into(),
        interp: None,
        exe_path: b"/bin/busybox"[..].into(),
        fileless: false,
        tty: true,
        uid: 0,
        euid: 0,
        connects: vec![],
        files: vec![],
        exe_written_ns: None,
        exe_file: (0, 0),
        identity: None,
        program: None,
        connects_over_cap: 0,
        cwd: None,
    }
}

fn process(pid: u32, parent: Option<u32>, fork: u64, exit: u64, images: Vec<ImageRecord>) -> ProcessRecord {
    ProcessRecord {
        key: key(pid),
        parent: parent.map(key),
        parent_exec_index: parent.map(|_| 0),
        nspid: pid % 1000 + 2,
        fork_ns: fork,
        exit_ns: Some(exit),
        exit: Some(ExitStatus::Code(0)),
        from_proc: false,
        images,
        leaf: false,
    }
}

/// Session `k`: `sh` -> `wget` (one TCP connect), `tar`, `cat`: 7 spans with the root and the
/// `session opened` span. With `secrets`, `wget` and the `sh -c` script carry four secret
/// values (a password flag, a bearer header, a URL password, an AWS key id), distinct per
/// session, so the redaction pass replaces them with tokens; without, it finds nothing.
fn session(k: u32, end: bool, secrets: bool) -> Vec<SessionUpdate> {
    let r = 10_000 + 8 * k;
    let t = 10 * S + k as u64 * S;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let i = info(r, t, None);
    let (url, header, pass, script) = if secrets {
        (
            format!("http://svc:pw{k}x9@10.244.1.5:8080/item/{k}"),
            format!("--header=Authorization: Bearer tok{k}abcdef0123456789"),
            format!("--password=s3cret{k}"),
            format!("AWS_ACCESS_KEY_ID=AKIA{k:016} wget ...; tar ...; cat ..."),
        )
    } else {
        (
            format!("http://10.244.1.5:8080/item/{k}"),
            format!("--header=Accept: text/plain; v={k}"),
            format!("--tries={k}"),
            "wget ...; tar ...; cat ...".to_owned(),
        )
    };
    let mut wget = image(t + 1000, &s(&["wget", "-q", &header, &pass, "-O", "/tmp/page", &url]));
    wget.connects = vec![ConnectRecord {
        op: podtrail::model::NetOp::Connect,
        local: None,
        ts_ns: t + 2000,
        end_ns: Some(t + 3000),
        transport: Transport::Tcp,
        addr: "10.244.1.5".parse::<IpAddr>().unwrap(),
        port: 8080,
        final_addr: None,
        outcome: ConnectOutcome::Connected,
        error: None,
        udp_sent: false,
        activity: None,
        scope: None,
        name: None,
    }];
    let tar = image(t + 5000, &s(&["tar", "-cf", &format!("/tmp/{k}.tar"), "/tmp/page"]));
    let cat = image(t + 7000, &s(&["cat", &format!("/tmp/{k}.tar")]));
    let sh = image(t, &s(&["sh", "-c", &script]));
    let mut v = vec![
        SessionUpdate::Started(i.clone().into()),
        SessionUpdate::ProcessEnded(i.clone().into(), process(r + 1, Some(r), t + 1000, t + 4000, vec![wget])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(r + 2, Some(r), t + 5000, t + 6000, vec![tar])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(r + 3, Some(r), t + 7000, t + 8000, vec![cat])),
    ];
    if end {
        v.push(SessionUpdate::Ended(info(r, t, Some(t + 9000)).into(), vec![process(r, None, t, t + 9000, vec![sh])]));
    }
    v
}

fn ctx() -> BuildCtx {
    BuildCtx::new([0xb0; 16], BootClock::fixed(1_700_000_000 * S), SpansConfig::default())
}

// ---- the receiver (child process) -------------------------------------------------------

struct Count {
    spans: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
}

struct Recv(Arc<Count>);

#[tonic::async_trait]
impl TraceService for Recv {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let r = req.into_inner();
        let n: usize = r.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
        let spans = self.0.spans.fetch_add(n as u64, Relaxed) + n as u64;
        let bytes = self.0.bytes.fetch_add(r.encoded_len() as u64, Relaxed) + r.encoded_len() as u64;
        let requests = self.0.requests.fetch_add(1, Relaxed) + 1;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{spans} {bytes} {requests}");
        let _ = out.flush();
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn receiver_main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", l.local_addr().unwrap());
        let c = Arc::new(Count { spans: AtomicU64::new(0), bytes: AtomicU64::new(0), requests: AtomicU64::new(0) });
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Recv(c)).max_decoding_message_size(64 << 20))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
            .await
            .unwrap();
    });
}

/// The child receiver and its running totals (spans, bytes).
struct Receiver {
    child: std::process::Child,
    addr: String,
    totals: Arc<(AtomicU64, AtomicU64, AtomicU64)>,
}

impl Receiver {
    fn start() -> Receiver {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--receiver")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start receiver");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first.strip_prefix("listening ").expect("receiver address").to_owned();
        let totals = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)));
        let t = totals.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let mut it = l.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
                t.0.store(it.next().unwrap_or(0), Relaxed);
                t.1.store(it.next().unwrap_or(0), Relaxed);
                t.2.store(it.next().unwrap_or(0), Relaxed);
            }
        });
        Receiver { child, addr, totals }
    }

    /// (spans, bytes, requests) received so far.
    fn totals(&self) -> (u64, u64, u64) {
        (self.totals.0.load(Relaxed), self.totals.1.load(Relaxed), self.totals.2.load(Relaxed))
    }

    /// Waits until the receiver has counted `spans` in all.
    fn wait(&self, spans: u64) -> (u64, u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.totals().0 < spans && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.totals()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the two paths ------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Run {
    spans: u64,
    bytes: u64,
    wall: f64,
    cpu: f64,
    lost: u64,
    requests: u64,
}

impl Run {
    fn per_core(&self) -> f64 {
        self.spans as f64 / self.cpu
    }
    fn cpu_us_per_span(&self) -> f64 {
        self.cpu * 1e6 / self.spans as f64
    }
}

fn export_config(addr: &str, spans: u64) -> ExportConfig {
    ExportConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        otlp_protocol: Some("grpc".into()),
        // room for everything: this measures cost, not loss
        queue_spans: spans as usize * 2 + 1024,
        batch_spans: 512,
        ..Default::default()
    }
}

async fn podtrail_path(rx_: &Receiver, updates: &[SessionUpdate], expect: u64, disk: Option<Fsync>) -> Run {
    let mut export = export_config(&rx_.addr, expect).resolve(|_| None).unwrap();
    // the durable queue in a fresh state directory on the bench's disk (not a tmpfs)
    let state = bench_dir().join("state");
    let _ = std::fs::remove_dir_all(&state);
    let held = disk.map(|fsync| {
        export.queue.fsync = fsync;
        let (dir, _) = podtrail::state::StateDir::open(&state).expect("bench state directory");
        podtrail::state::Held { dir: Arc::new(dir), gap: None }
    });
    export.queue.held = held.clone();
    let cfg = RunExport {
        spans: SpansConfig::default(),
        export,
        boot_id: [0xb0; 16],
        clock: BootClock::fixed(1_700_000_000 * S),
    };
    let before = rx_.totals();
    let metrics = Metrics::default();
    let (tx, rx) = tokio::sync::mpsc::channel(16_384);
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let task = tokio::spawn(podtrail::export::run_export(rx, cfg, Arc::new(NoAttributor), metrics, Default::default()));
    for u in updates {
        tx.send(u.clone()).await.unwrap();
    }
    drop(tx);
    let report = task.await.unwrap().unwrap();
    drop(held);
    // + the agent's own start and run spans
    let after = rx_.wait(before.0 + expect + 2);
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    Run {
        spans: after.0 - before.0,
        bytes: after.1 - before.1,
        wall,
        cpu,
        lost: report.lost(),
        requests: after.2 - before.2,
    }
}

/// podtrail's queue ends a request at each session's root (so the root's loss mark counts
/// everything sent before it): the same spans cut the same way, for the minimal exporter.
fn podtrail_batches(spans: &[SpanData]) -> Vec<&[SpanData]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, s) in spans.iter().enumerate() {
        if s.parent_span_id == opentelemetry::trace::SpanId::INVALID || i + 1 - start == 512 {
            out.push(&spans[start..=i]);
            start = i + 1;
        }
    }
    if start < spans.len() {
        out.push(&spans[start..]);
    }
    out
}

async fn minimal_path(rx_: &Receiver, spans: &[SpanData], per_session: bool) -> Run {
    let before = rx_.totals();
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut exp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", rx_.addr))
        .build()
        .unwrap();
    exp.set_resource(&opentelemetry_sdk::Resource::builder().with_service_name("podtrail").build());
    let mut lost = 0;
    let batches: Vec<&[SpanData]> = if per_session { podtrail_batches(spans) } else { spans.chunks(512).collect() };
    for chunk in batches {
        if exp.export(chunk.to_vec()).await.is_err() {
            lost += chunk.len() as u64;
        }
    }
    let after = rx_.wait(before.0 + spans.len() as u64 - lost);
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    Run { spans: after.0 - before.0, bytes: after.1 - before.1, wall, cpu, lost, requests: after.2 - before.2 }
}

/// The spans podtrail's stage makes from `updates` (outside any timing), redacted as the
/// span task redacts them (so the reference sends the same tokens, the same bytes).
fn built_spans(updates: &[SessionUpdate]) -> Vec<SpanData> {
    let redactor = podtrail::redact::Redactor::random();
    let mut cache = podtrail::spans::ArgvCache::default();
    let mut st = SpanStage::new(ctx(), Arc::new(NoAttributor));
    let mut out = Output::default();
    for u in updates {
        let mut u = u.clone();
        podtrail::spans::redact_update(&redactor, &mut cache, &mut u);
        st.update(u, Instant::now(), &mut out);
    }
    out.spans.into_iter().map(|(_, b)| b.span).collect()
}

/// Bytes held with `n` sessions open: podtrail's span stage, and the plain SDK holding one
/// open root span per session with the same attributes.
fn memory(n: u32) -> (f64, f64) {
    let updates: Vec<SessionUpdate> = (0..n).flat_map(|k| session(k, false, false)).collect();
    let base = ALLOCATED.load(Relaxed);
    let mut st = SpanStage::new(ctx(), Arc::new(NoAttributor));
    // one info per session, made here and shared by its updates, as the process stage does:
    // the span stage keeps it, so it is counted here (the process stage shares it); and one
    // container per container, made here too, as the process stage's table shares it between
    // the container's sessions: counted once per container
    let mut infos: std::collections::HashMap<SessionId, Arc<SessionInfo>> = Default::default();
    let mut containers: std::collections::HashMap<u64, Arc<ContainerInfo>> = Default::default();
    let mut own = |i: &SessionInfo| {
        let c = containers.entry(i.container.cgroup_id).or_insert_with(|| Arc::new(made_here(&i.container)));
        Arc::new(SessionInfo { container: c.clone(), ..i.clone() })
    };
    for mut u in updates.iter().cloned() {
        let i = infos.entry(u.info().id).or_insert_with(|| own(u.info()));
        if **i != *u.info() {
            *i = own(u.info());
        }
        *u.info_mut() = i.clone();
        let mut out = Output::default();
        st.update(u, Instant::now(), &mut out);
        drop(out); // exported process spans leave the stage
    }
    drop(infos);
    drop(containers);
    let podtrail = ALLOCATED.load(Relaxed).saturating_sub(base) as f64 / n as f64;
    // the roots these sessions would get, for the SDK's open spans
    let mut out = Output::default();
    st.shutdown(30 * S, &mut out);
    drop(st);
    let roots: Vec<SpanData> = out.spans.into_iter().filter(|(_, b)| b.root).map(|(_, b)| b.span).collect();
    let attrs: Vec<Vec<opentelemetry::KeyValue>> =
        roots.iter().map(|r| as_the_sdk_user_makes_them(&r.attributes)).collect();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("podtrail");
    let base = ALLOCATED.load(Relaxed);
    let open: Vec<_> = roots
        .iter()
        .zip(&attrs)
        .map(|(r, a)| tracer.span_builder(r.name.clone()).with_attributes(a.clone()).start(&tracer))
        .collect();
    let sdk = ALLOCATED.load(Relaxed).saturating_sub(base) as f64 / n as f64;
    assert!(open.iter().all(|s| s.is_recording()));
    (podtrail, sdk)
}

/// The root's attributes as a plain SDK user makes them from a session's strings: the
/// strings podtrail shares between spans (`Arc<str>`, issue 15's sess18) owned, the static
/// ones static. The root carried exactly these before sess18, so the reference is unchanged.
fn as_the_sdk_user_makes_them(attrs: &[opentelemetry::KeyValue]) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::{Array, Key, StringValue, Value};
    // the variant shows only in Debug: `RefCounted("...")`
    let shared = |debug: String| debug.starts_with("RefCounted");
    let string = |v: &StringValue| {
        if shared(format!("{v:?}")) {
            StringValue::from(v.as_str().to_owned())
        } else {
            v.clone()
        }
    };
    attrs
        .iter()
        .map(|kv| {
            let key =
                if shared(format!("{:?}", kv.key)) { Key::from(kv.key.as_str().to_owned()) } else { kv.key.clone() };
            let value = match &kv.value {
                Value::String(v) => Value::String(string(v)),
                Value::Array(Array::String(v)) => Value::Array(Array::String(v.iter().map(string).collect())),
                other => other.clone(),
            };
            opentelemetry::KeyValue::new(key, value)
        })
        .collect()
}

/// Where the durable queue's files go: `--dir`, else /var/lib/podtrail-bench (a real disk:
/// fsync on a tmpfs costs nothing and would prove nothing).
fn bench_dir() -> std::path::PathBuf {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == "--dir")
        .and_then(|i| a.get(i + 1))
        .map(Into::into)
        .unwrap_or_else(|| "/var/lib/podtrail-bench".into())
}

/// A backlog of `mib` MiB left on disk by a "crashed" run, then a new run's queue opening it
/// (scan, checksums) and sending it all to the receiver: (spans, open s, drain s).
fn recovery(rt: &tokio::runtime::Runtime, rx_: &Receiver, spans: &[SpanData], mib: u64) -> (u64, f64, f64) {
    let dir = bench_dir().join("backlog");
    let _ = std::fs::remove_dir_all(&dir);
    let store = || podtrail::export::segments::StoreConfig::new(dir.clone(), (mib + 64) << 20, Fsync::Never);
    let q = ExportQueue::durable("otlp", store(), Metrics::default()).unwrap();
    let batch: Vec<Queued> =
        spans.iter().take(512).map(|s| Queued { session: None, span: s.clone(), root: false }).collect();
    let mut n = 0u64;
    let mut bytes = 0u64;
    while bytes < mib << 20 {
        q.push_batch(&batch);
        n += batch.len() as u64;
        bytes = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    }
    drop(q); // never sent, never acknowledged: what a kill -9 leaves
             // what a restart costs: drop the page cache, so the backlog is read from the disk
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let before = rx_.totals();
    let t0 = Instant::now();
    let q = ExportQueue::durable("otlp", store(), Metrics::default()).unwrap();
    let open = t0.elapsed().as_secs_f64();
    let _rt = rt.enter(); // the tonic channel is built inside the runtime
    let mut exp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", rx_.addr))
        .build()
        .unwrap();
    exp.set_resource(&opentelemetry_sdk::Resource::builder().with_service_name("podtrail").build());
    let rules = RetryRules {
        batch: 512,
        max_attempts: 5,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        shutdown_flush: Duration::from_secs(3600),
    };
    q.close(rules.shutdown_flush);
    let d = rt.block_on(q.clone().drive(exp, rules));
    rx_.wait(before.0 + n);
    let drain = t0.elapsed().as_secs_f64() - open;
    assert_eq!((d.exported, d.lost()), (n, 0), "{d:?}");
    let _ = std::fs::remove_dir_all(&dir);
    (n, open, drain)
}

fn arg(name: &str, default: u32) -> u32 {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The rows of the table: a path, and whether its sessions carry secrets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// podtrail's stages, the in-memory queue (`None`) or the durable one under a policy.
    Podtrail { disk: Option<Fsync>, secrets: bool },
    /// The plain SDK exporter on the same spans; `per_session`: cut at each root.
    Minimal { per_session: bool, secrets: bool },
}

impl Path {
    fn name(self) -> String {
        let (base, secrets) = match self {
            Path::Podtrail { disk: None, secrets } => ("podtrail".to_owned(), secrets),
            Path::Podtrail { disk: Some(f), secrets } => (format!("disk/{}", format!("{f:?}").to_lowercase()), secrets),
            Path::Minimal { per_session, secrets } => {
                ((if per_session { "minimal/s" } else { "minimal" }).to_owned(), secrets)
            }
        };
        if secrets {
            base + "+r"
        } else {
            base
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--receiver") {
        return receiver_main();
    }
    let sessions = arg("--sessions", 5000);
    let rounds = arg("--rounds", 3);
    let rx = Receiver::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let updates: Vec<SessionUpdate> = (0..sessions).flat_map(|k| session(k, true, false)).collect();
    let updates_r: Vec<SessionUpdate> = (0..sessions).flat_map(|k| session(k, true, true)).collect();
    let spans = built_spans(&updates);
    let spans_r = built_spans(&updates_r);
    let expect = spans.len() as u64;
    assert_eq!(expect, spans_r.len() as u64);
    let backlog = arg("--backlog-mib", 1024) as u64;
    if std::env::args().any(|a| a == "--recovery-only") {
        let (n, open, drain) = recovery(&rt, &rx, &spans, backlog);
        println!("recovery of a {backlog} MiB backlog ({n} spans) left by a killed run: open and check {open:.2} s, send all {drain:.1} s ({:.0} spans/s)", n as f64 / drain);
        return;
    }
    if std::env::args().any(|a| a == "--memory-only") {
        return print_memory();
    }
    // the fsync policies beside the default (`batch`), clean argv only: `--policies never,always`
    let policies = std::env::args().skip_while(|a| a != "--policies").nth(1).unwrap_or_else(|| "never,always".into());
    let mut paths = vec![
        Path::Podtrail { disk: None, secrets: false },
        Path::Minimal { per_session: false, secrets: false },
        Path::Podtrail { disk: None, secrets: true },
        Path::Minimal { per_session: false, secrets: true },
        Path::Podtrail { disk: Some(Fsync::Batch), secrets: false },
        Path::Podtrail { disk: Some(Fsync::Batch), secrets: true },
        Path::Minimal { per_session: true, secrets: false },
    ];
    for p in policies.split(',') {
        match p {
            "never" => paths.push(Path::Podtrail { disk: Some(Fsync::Never), secrets: false }),
            "always" => paths.push(Path::Podtrail { disk: Some(Fsync::Always), secrets: false }),
            _ => {}
        }
    }
    // `--paths podtrail,disk/batch+r`: only those rows (profiling one path)
    if let Some(only) = std::env::args().skip_while(|a| a != "--paths").nth(1) {
        let only: Vec<&str> = only.split(',').collect();
        paths.retain(|p| only.contains(&p.name().as_str()));
    }
    println!("export benchmark: {sessions} sessions, {expect} spans per run, OTLP/gRPC to a receiver in a child process, {rounds} rounds");
    println!(
        "(+r: each session's argv carries 4 secrets the redaction pass replaces; without: the same pass finds none)"
    );
    println!(
        "{:<13} {:>5} {:>8} {:>8} {:>12} {:>12} {:>10} {:>9} {:>8} {:>5}",
        "path", "round", "spans", "wall s", "spans/s", "spans/s/core", "CPU us/span", "B/span", "requests", "lost"
    );
    // warm up both (connections, allocator)
    rt.block_on(minimal_path(&rx, &spans[..spans.len().min(2048)], false));
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); paths.len()];
    for round in 1..=rounds {
        // rotate the order so no path always runs first
        for i in 0..paths.len() {
            let which = (i + round as usize) % paths.len();
            let r = match paths[which] {
                Path::Podtrail { disk, secrets } => {
                    rt.block_on(podtrail_path(&rx, if secrets { &updates_r } else { &updates }, expect, disk))
                }
                Path::Minimal { per_session, secrets } => {
                    rt.block_on(minimal_path(&rx, if secrets { &spans_r } else { &spans }, per_session))
                }
            };
            results[which].push(r);
        }
        for (p, runs) in paths.iter().zip(&results) {
            let r = runs[round as usize - 1];
            println!(
                "{:<13} {:>5} {:>8} {:>8.3} {:>12.0} {:>12.0} {:>10.2} {:>9.0} {:>8} {:>5}",
                p.name(),
                round,
                r.spans,
                r.wall,
                r.spans as f64 / r.wall,
                r.per_core(),
                r.cpu_us_per_span(),
                r.bytes as f64 / r.spans as f64,
                r.requests,
                r.lost
            );
        }
    }
    let median = |mut v: Vec<f64>| {
        let rounds = v.iter().map(|r| format!("{r:.2}x")).collect::<Vec<_>>().join(", ");
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        format!("median {:.2}x (rounds: {rounds})", v[v.len() / 2])
    };
    let row = |name: &str| paths.iter().position(|p| p.name() == name);
    for (a, b, what) in [
        ("podtrail", "minimal", "no redaction, in memory"),
        ("podtrail+r", "minimal+r", "redaction, in memory"),
        ("disk/batch", "minimal", "no redaction, disk queue (fsync batch)"),
        ("disk/batch+r", "minimal+r", "redaction, disk queue (fsync batch)"),
        ("disk/never", "minimal", "no redaction, disk queue (fsync never)"),
        ("disk/always", "minimal", "no redaction, disk queue (fsync always)"),
        ("podtrail", "minimal/s", "no redaction, in memory, beside requests cut per session"),
    ] {
        let (Some(a_), Some(b_)) = (row(a), row(b)) else { continue };
        let ratios: Vec<f64> =
            results[a_].iter().zip(&results[b_]).map(|(x, y)| x.cpu_us_per_span() / y.cpu_us_per_span()).collect();
        println!("CPU per span, {a} / {b} ({what}): {}", median(ratios));
    }
    if backlog > 0 {
        let (n, open, drain) = recovery(&rt, &rx, &spans, backlog);
        println!("recovery of a {backlog} MiB backlog ({n} spans) left by a killed run: open and check {open:.2} s, send all {drain:.1} s ({:.0} spans/s)", n as f64 / drain);
    }
    print_memory();
}

fn print_memory() {
    let spread = CONTAINERS.load(Relaxed);
    for containers in [spread, 1000] {
        CONTAINERS.store(containers, Relaxed);
        let (pm, sm) = memory(1000);
        println!("memory with 1000 sessions open in {containers} containers: podtrail span stage {:.0} B/session ({:.2} MiB), plain SDK open root span {:.0} B/session ({:.2} MiB), ratio {:.2}x", pm, pm * 1000.0 / 1048576.0, sm, sm * 1000.0 / 1048576.0, pm / sm);
        memory_parts(1000);
    }
    CONTAINERS.store(spread, Relaxed);
    memory_per_container(1000);
}

/// What one container adds (bytes per container, `n` containers): its info as the process
/// stage's table holds it (`Arc<ContainerInfo>`, strings included), and the span stage's
/// frame list for its sessions (the `Arc<[KeyValue]>`, the strings of its own that it does not
/// share with the info, the interner's table).
fn memory_per_container(n: u32) {
    let per = |b: usize| b as f64 / n as f64;
    let made: Vec<ContainerInfo> = (0..n).map(container).collect();
    let b = ALLOCATED.load(Relaxed);
    let infos: Vec<Arc<ContainerInfo>> = made.iter().map(|c| Arc::new(made_here(c))).collect();
    let info = ALLOCATED.load(Relaxed) - b - infos.capacity() * std::mem::size_of::<usize>();
    let c = ctx();
    let sessions: Vec<SessionInfo> = infos
        .iter()
        .enumerate()
        .map(|(k, i)| SessionInfo::new(SessionId(key(k as u32)), SessionKind::Exec, i.clone(), 0))
        .collect();
    let b = ALLOCATED.load(Relaxed);
    let frames: Vec<podtrail::spans::build::SessionFrame> =
        sessions.iter().map(|i| podtrail::spans::build::session_frame(&c, i, None)).collect();
    let frame =
        ALLOCATED.load(Relaxed) - b - frames.capacity() * std::mem::size_of::<podtrail::spans::build::SessionFrame>();
    let mut distinct: Vec<(*const opentelemetry::KeyValue, usize)> =
        frames.iter().flat_map(|f| [&f.pod_extra, &f.session]).map(|l| (l.as_ptr(), l.len())).collect();
    distinct.sort();
    distinct.dedup();
    let lists: usize = distinct
        .iter()
        .map(|(_, len)| 2 * std::mem::size_of::<usize>() + len * std::mem::size_of::<opentelemetry::KeyValue>())
        .sum();
    println!(
        "a container, part by part (B/container, {n} containers): info {:.0} (of it the ContainerInfo {} inline), frame lists {:.0} (of it {:.0} the Arc<[KeyValue]> lists of the {} attributes not read from the info; the rest their own strings and the interner's table)",
        per(info),
        std::mem::size_of::<ContainerInfo>(),
        per(frame),
        per(lists),
        frames[0].pod_extra.len() + frames[0].session.len()
    );
}

/// What an open session holds, part by part (bytes per session, 1 000 sessions): the
/// `SessionSpans` value itself, its heap at creation (the session info's and the frame's
/// strings), what its three ended processes add, and the rest of the span stage's table.
fn memory_parts(n: u32) {
    let c = ctx();
    let per = |b: usize, a: usize| a.saturating_sub(b) as f64 / n as f64;
    let infos: Vec<SessionInfo> = (0..n).map(|k| info(10_000 + 8 * k, 10 * S + k as u64 * S, None)).collect();
    let base = ALLOCATED.load(Relaxed);
    // each container's info made once here, shared by its sessions (as the process stage's
    // table shares it), so it is counted once per container
    let mut containers: std::collections::HashMap<u64, Arc<ContainerInfo>> = Default::default();
    let mut open: Vec<podtrail::spans::SessionSpans> = infos
        .iter()
        .map(|i| {
            let shared = containers.entry(i.container.cgroup_id).or_insert_with(|| Arc::new(made_here(&i.container)));
            let i = SessionInfo { container: shared.clone(), ..i.clone() };
            podtrail::spans::SessionSpans::new(&c, i.into(), None)
        })
        .collect();
    drop(containers); // the sessions hold the containers
    let created = ALLOCATED.load(Relaxed);
    let mut recs: Vec<ProcessRecord> = Vec::new();
    for k in 0..n {
        for u in session(k, false, false) {
            if let SessionUpdate::ProcessEnded(_, r) = u {
                recs.push(r);
            }
        }
    }
    // clones, as the stage gets them (no spare capacity: their bytes are measured by cloning)
    let recs: Vec<ProcessRecord> = recs.to_vec();
    // the records are consumed and freed in the window: their bytes (heap and the Vec that
    // holds them) are added back, so the line shows what the sessions keep of them
    let heap = {
        let b = ALLOCATED.load(Relaxed);
        let copy: Vec<ProcessRecord> = recs.to_vec();
        let a = ALLOCATED.load(Relaxed);
        a - b - copy.capacity() * std::mem::size_of::<ProcessRecord>()
    };
    let freed = heap + recs.capacity() * std::mem::size_of::<ProcessRecord>();
    let before = ALLOCATED.load(Relaxed);
    for (k, r) in recs.into_iter().enumerate() {
        // the session's own info, as the process stage shares it (another copy would replace
        // it and hide its bytes from this line)
        let i = open[k / 3].shared_info();
        let spans = open[k / 3].process_ended(&c, i, r);
        drop(spans);
    }
    let ended = ALLOCATED.load(Relaxed) + freed;
    let inline = std::mem::size_of::<podtrail::spans::SessionSpans>();
    // shared by the sessions of a container (the pod's), or by all with the same kind and
    // identity (the session's): counted once per distinct list
    let mut lists: Vec<(*const opentelemetry::KeyValue, usize)> =
        open.iter().flat_map(|s| [&s.frame().pod_extra, &s.frame().session]).map(|l| (l.as_ptr(), l.len())).collect();
    lists.sort();
    lists.dedup();
    let frame =
        lists.iter().map(|(_, len)| len * std::mem::size_of::<opentelemetry::KeyValue>()).sum::<usize>() / n as usize;
    println!(
        "an open session, part by part (B/session, {n} sessions): SessionSpans inline {inline} (the Vec of them: {:.0}), at creation {:.0} on the heap (of it the frames' KeyValue lists {frame}, {} distinct, without their strings), three ended processes +{:.0} (slots, fold keys, referenced ids)",
        (open.capacity() * inline) as f64 / n as f64,
        per(base + open.capacity() * inline, created),
        lists.len(),
        per(before, ended)
    );
    drop(open);
}
