//! The real capture programs: run a workload while they capture, and collect the events and
//! the kernel's counters. Needs root and a kernel with BTF ([`super::prereq::kernel`]);
//! without them the test fails, never skips.

use std::time::Duration;

use podtrail::capture::{
    event::{Event, ExecEvent},
    loader::{Capture, CaptureOptions, KernelCounts},
};

pub struct Captured {
    pub events: Vec<Event>,
    pub kernel: KernelCounts,
}

impl Captured {
    pub fn execs(&self) -> impl Iterator<Item = &ExecEvent> {
        self.events.iter().filter_map(|e| match e {
            Event::Exec(x) => Some(x),
            _ => None,
        })
    }
}

/// Starts the real programs, runs `f` on a blocking thread, then keeps collecting until the
/// ring has been quiet for 300 ms.
pub fn capture_while<T: Send + 'static>(opts: CaptureOptions, f: impl FnOnce() -> T + Send + 'static) -> (T, Captured) {
    super::prereq::kernel();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut cap = Capture::start(opts).expect("load the BPF programs");
        let mut events = Vec::new();
        let work = tokio::task::spawn_blocking(f);
        tokio::pin!(work);
        let out = loop {
            tokio::select! {
                batch = cap.events.recv() => events.extend(batch.expect("reader stopped early")),
                r = &mut work => break r.expect("test workload panicked"),
            }
        };
        while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(300), cap.events.recv()).await {
            events.extend(batch);
        }
        let kernel = cap.counters.read();
        let (_c, _s) = stop_draining(cap, &mut events).await;
        (out, Captured { events, kernel })
    })
}

async fn stop_draining(
    mut cap: Capture,
    events: &mut Vec<Event>,
) -> (podtrail::capture::loader::Counters, std::sync::Arc<podtrail::capture::reader::ReaderStats>) {
    while let Ok(batch) = cap.events.try_recv() {
        events.extend(batch);
    }
    cap.stop().await
}

/// Runs a command to completion, returning its pid.
pub fn run(cmd: &mut std::process::Command) -> (u32, std::process::ExitStatus) {
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let st = child.wait().expect("wait");
    (pid, st)
}
