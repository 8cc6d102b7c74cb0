//! Receiver fan-out benchmark (issue 13): CPU and bytes the receiver spends per record with
//! thousands of subscribed agents, every record to every agent (`agent_auth = "none"`) beside
//! each agent only its node's records (`agent_auth = "token"`), in the same run.
//!
//! Both modes run the receiver's real stream endpoint (`stream_router_for_nodes`: the replay
//! buffer, the per-subscriber cursor, the wire encoding) in this process; each simulated agent
//! is one subscription whose HTTP body is read to the end of what it should get, counting
//! bytes. In the filtered mode every agent presents its own token, reviewed by a stand-in of
//! the API server's TokenReview (each token names one node), and the records are spread over
//! the nodes' pods evenly, pushed with their node as the pod watch would tag them. TLS is left
//! out in both modes (it costs the same per byte in both, and the filter's point is the bytes).
//!
//! CPU is this process's user+system time (getrusage) from the first record pushed to the last
//! line read by the last agent; bytes are the sum over agents of the record lines' bytes.
//!
//! Run: `cargo bench --bench receiver_fanout -- [--agents N] [--records R] [--rounds K]`

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use podtrail::attribute::audit::Stage;
use podtrail::attribute::record::{Identity, RequestOptions, RequestRecord};
use podtrail::attribute::stream::nodes::{ReviewFn, Reviewed, TokenReviewer, AUDIENCE};
use podtrail::attribute::stream::{stream_router_for_nodes, ReplayBuffer, StreamMetrics};
use podtrail::attribute::{AttributionSource, RequestKind};

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn record(i: usize, nodes: usize) -> RequestRecord {
    let t = std::time::SystemTime::now();
    RequestRecord {
        audit_id: format!("4b5f3c7e-8d2a-4f19-9c3e-{i:012x}"),
        source: AttributionSource::AuditWebhook,
        kind: RequestKind::Exec,
        namespace: Some("billing".into()),
        pod_name: Some(format!("api-{}", i % nodes)),
        pod_uid: None,
        options: RequestOptions {
            command: vec!["sh".into(), "-c".into(), "psql -c 'select 1'".into()],
            container: Some("api".into()),
            stdin: true,
            tty: true,
            ..Default::default()
        },
        user: Identity {
            name: Some("john.doe@example.com".into()),
            groups: vec!["dev".into(), "system:authenticated".into()],
            ..Default::default()
        },
        impersonated: None,
        source_ips: vec!["66.249.64.55".into()],
        user_agent: Some("kubectl/v1.34.4 (linux/amd64) kubernetes/abcdef".into()),
        received: Some(t),
        started: Some(t),
        completed: None,
        response_code: Some(101),
        stages: Stage::ResponseStarted.bit(),
        unverified: false,
    }
}

struct Outcome {
    cpu_per_record_us: f64,
    bytes_per_record: f64,
    lines: u64,
    wall: Duration,
}

async fn run(agents: usize, records: usize, filtered: bool) -> Outcome {
    let buffer = Arc::new(ReplayBuffer::new(records + 1, StreamMetrics::default()));
    let reviewer = filtered.then(|| {
        let review: ReviewFn = Arc::new(|t: String| {
            Box::pin(async move {
                Ok(Reviewed {
                    authenticated: true,
                    audiences: vec![AUDIENCE.into()],
                    username: "system:serviceaccount:podtrail:podtrail-agent".into(),
                    node: t.strip_prefix("tok-").map(|n| format!("node-{n}")),
                    error: None,
                })
            })
        });
        Arc::new(TokenReviewer::new(
            review,
            vec!["system:serviceaccount:podtrail:podtrail-agent".into()],
            Duration::from_secs(600),
        ))
    });
    let router = stream_router_for_nodes(buffer.clone(), Duration::from_secs(600), true, reviewer);
    let bytes = Arc::new(AtomicU64::new(0));
    let lines = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(agents);
    for a in 0..agents {
        let req = axum::http::Request::get(format!("/v1/records?node=node-{a}&since=0"))
            .header("authorization", format!("Bearer tok-{a}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let mut svc = router.clone();
        let resp = tower_service::Service::call(&mut svc, req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let expect = if filtered { records / agents + usize::from(a < records % agents) } else { records };
        let (bytes, lines) = (bytes.clone(), lines.clone());
        readers.push(tokio::spawn(async move {
            let mut body = resp.into_body().into_data_stream();
            let mut got = 0;
            while got < expect {
                let Some(Ok(chunk)) = body.next().await else { break };
                if chunk.starts_with(b"{\"type\":\"record\"") {
                    got += 1;
                    bytes.fetch_add(chunk.len() as u64, Relaxed);
                    lines.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    // every agent has read its hello and waits
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for i in 0..records {
        let rec = record(i, agents);
        if filtered {
            buffer.push_for(&rec, Stage::ResponseStarted, Some(Arc::from(format!("node-{}", i % agents))));
        } else {
            buffer.push(&rec, Stage::ResponseStarted);
        }
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    for r in readers {
        r.await.unwrap();
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed());
    Outcome {
        cpu_per_record_us: cpu * 1e6 / records as f64,
        bytes_per_record: bytes.load(Relaxed) as f64 / records as f64,
        lines: lines.load(Relaxed),
        wall,
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let agents = arg("--agents", 2000);
    let records = arg("--records", 2000);
    let rounds = arg("--rounds", 3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("receiver fan-out: {agents} agents subscribed, {records} records, {rounds} rounds (median)");
    println!("| mode | CPU µs/record | bytes sent/record | record lines sent | wall |");
    println!("|---|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (name, filtered) in
        [("every record to every agent (agent_auth = none)", false), ("node filter (agent_auth = token)", true)]
    {
        let mut outs: Vec<Outcome> = (0..rounds).map(|_| rt.block_on(run(agents, records, filtered))).collect();
        outs.sort_by(|a, b| a.cpu_per_record_us.total_cmp(&b.cpu_per_record_us));
        let m = outs.swap_remove(outs.len() / 2);
        println!(
            "| {name} | {:.1} | {:.0} | {} | {:.2} s |",
            m.cpu_per_record_us,
            m.bytes_per_record,
            m.lines,
            m.wall.as_secs_f64()
        );
        medians.push(m);
    }
    let (all, node) = (&medians[0], &medians[1]);
    println!(
        "ratios filter / broadcast: CPU {:.4}x, bytes {:.5}x",
        node.cpu_per_record_us / all.cpu_per_record_us,
        node.bytes_per_record / all.bytes_per_record
    );
}
