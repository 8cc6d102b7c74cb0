//! Loads and attaches the kernel programs, and reads the kernel's loss counters.
//!
//! In: [`CaptureOptions`]. Out: a running [`Capture`] whose `events` channel carries decoded
//! events, plus [`Counters`] to read what the kernel could not deliver. Start-up problems
//! (missing privilege, no BTF, a program type the kernel refuses) come back as one
//! [`CaptureError`] sentence naming what is missing and how to grant it.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    Btf, Ebpf, EbpfLoader,
};
use thiserror::Error;
use tokio::sync::mpsc;

use super::{abi, reader};

mod attach;
use attach::{
    attach_btf_tp, attach_connect_hooks, attach_file_hooks, attach_socket_hooks, attach_tp, program, refused,
};

/// The compiled kernel side, built by build.rs from ebpf/podtrail.bpf.c.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podtrail.bpf.o"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Every process on the host.
    All,
    /// Processes outside the host's pid namespace (plus cgroups added to the traced set).
    Containers,
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Ring buffer size in bytes (power of two, at least a page).
    pub ring_bytes: u32,
    pub filter: Filter,
    /// Search session roots' environment for KUBERNETES_EXEC_AUDIT_ID.
    pub scan_env: bool,
    /// Queued bytes that make the kernel wake the reader at once.
    pub wakeup_bytes: u64,
    /// Bytes of network records each cgroup may write per 100 ms while the ring is half full
    /// (its fair share; 0: no share enforced).
    pub cgroup_share_bytes: u64,
    /// How often the reader drains the ring when no wakeup came.
    pub poll_interval: Duration,
    /// Capacity of the channel to the next stage.
    pub channel_capacity: usize,
    /// cgroup2 mount to attach the socket hooks to; found from /proc/self/mountinfo if None.
    pub cgroup2_root: Option<PathBuf>,
    /// Attach the connect hooks (needs CAP_NET_ADMIN).
    pub network: bool,
    /// With `network`: also the other ways out (datagrams naming a destination, listening
    /// and accepted sockets, raw and ICMP sockets).
    pub sockets: bool,
    /// With `network`: also DNS answers delivered to sockets (`cgroup_skb/ingress`, UDP from
    /// port 53), so connects can carry the name their process looked up.
    pub dns: bool,
    /// Leave podtrail's own process out (its OTLP connections are not evidence).
    pub ignore_self: bool,
    /// Base names whose changes (open for writing, unlink, rename, truncate, chmod, link,
    /// symlink) are reported.
    pub watch_changes: Vec<String>,
    /// Base names whose reads are reported too (secrets).
    pub watch_reads: Vec<String>,
    /// The terminal transcript (`ebpf/tty.bpf.c`): bytes of input copied per session with a
    /// terminal before the rest is only counted; 0 leaves the transcript hooks out.
    pub tty_input_budget: u64,
    /// With the transcript on: bytes of output (what was shown) copied per session; 0 leaves
    /// the write hook out.
    pub tty_output_budget: u64,
    /// The kinds to report, one bit per kind number (`1 << abi::KIND_EXEC`, ...; see
    /// [`kind_mask`]). Programs that write only kinds left out are not attached, and the
    /// kernel writes no record of a kind left out (`kind_mask` in ebpf/common.h), so they cost
    /// neither BPF time nor the reader's. `podtrail run` wants them all.
    pub kinds: u32,
}

/// The ring's default size in MiB. Its pages are mapped twice: VmRSS counts 8 MiB for it (the
/// agent at rest: about 28 MiB VmRSS, 52 with 16). Since the exec record is packed (ABI 7, a
/// storm's process is 334 bytes of ring, was 2 492), half of this lost nothing in every storm,
/// each run while other builds and benchmarks loaded the two cores (load average 1 to 9): the
/// 20 000-exec session storm, the 100 000-connect storm with folding off and with no rate
/// limit, `capture_kernel`'s host exec storm (twice), e2e_flood and e2e_transcript
/// (BENCHMARKS.md, issue 15, "the default ring"). 4 keeps that factor of two for bursts; 16 was
/// chosen when a record was 2.3 KB and 4 MiB lost 421 of them under load (capture15).
pub const DEFAULT_RING_MIB: u32 = 4;

/// How often the reader drains the ring while records flow and no wakeup came, in ms
/// (`capture.poll_ms`). Each drain wakes the five pipeline tasks once; at 20 ms the session
/// storm read 12.6 µs of agent CPU per exec, at 100 ms 9.1 (the same binary, one invocation:
/// BENCHMARKS.md, issue 15, "lead, session 14"), and at 250 ms 0.81x of 100 ms ("lead, session
/// 16"): bigger batches, each stage's code and tables kept warm through a batch. 250 waited
/// for the kernel to announce new cgroups (`cgroup_mkdir`): before it, a container that ran
/// and exited within one drain had no directory left to resolve its cgroup id by, and its
/// trace was taken for the host's. A record waits at most this long while others flow; the
/// first record after a quiet spell still wakes the parked reader at once, and `wakeup_kib`
/// queued still wakes it early.
pub const DEFAULT_POLL_MS: u64 = 250;

/// Every kind.
pub const ALL_KINDS: u32 = u32::MAX;

/// The mask of kinds named (`exec`, `fork`, ... as in [`abi::KIND_NAMES`]); the first name
/// that is not a kind is the error.
pub fn kind_mask<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u32, &'a str> {
    let mut mask = 0u32;
    for n in names {
        match abi::KIND_NAMES.iter().skip(1).position(|k| *k == n) {
            Some(i) => mask |= 1 << (i + 1),
            None => return Err(n),
        }
    }
    Ok(mask)
}

/// Shell histories, account databases, ssh keys, service account tokens, the preload file.
pub const DEFAULT_WATCH_CHANGES: &[&str] = &[
    ".bash_history",
    ".ash_history",
    ".sh_history",
    ".zsh_history",
    ".history",
    ".mysql_history",
    ".psql_history",
    ".python_history",
    "passwd",
    "shadow",
    "gshadow",
    "group",
    "sudoers",
    "authorized_keys",
    "ld.so.preload",
    "crontab",
];
/// Files whose mere reading is evidence.
pub const DEFAULT_WATCH_READS: &[&str] = &["shadow", "gshadow", "token", "id_rsa", "id_ecdsa", "id_ed25519"];

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            ring_bytes: DEFAULT_RING_MIB * 1024 * 1024,
            filter: Filter::All,
            scan_env: true,
            wakeup_bytes: 256 * 1024,
            cgroup_share_bytes: DEFAULT_RING_MIB as u64 * 1024 * 1024 / 10,
            poll_interval: Duration::from_millis(DEFAULT_POLL_MS),
            channel_capacity: 65536,
            cgroup2_root: None,
            network: true,
            sockets: true,
            dns: true,
            ignore_self: true,
            watch_changes: DEFAULT_WATCH_CHANGES.iter().map(|s| s.to_string()).collect(),
            watch_reads: DEFAULT_WATCH_READS.iter().map(|s| s.to_string()).collect(),
            tty_input_budget: 64 * 1024,
            tty_output_budget: 0,
            kinds: ALL_KINDS,
        }
    }
}

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("podtrail needs {missing} to load its kernel programs: run it as root, or grant the capabilities (e.g. `setcap cap_bpf,cap_perfmon,cap_net_admin,cap_sys_ptrace,cap_sys_resource+ep podtrail`)")]
    Privilege { missing: String },
    #[error("this kernel exposes no BTF at /sys/kernel/btf/vmlinux: podtrail's CO-RE programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or later)")]
    NoBtf,
    #[error("the embedded BPF object disagrees with podtrail's reading of it (rebuild podtrail): {0}")]
    Abi(String),
    #[error("the kernel refused BPF program {program} ({what}); podtrail needs tp_btf, tracepoint and cgroup socket programs (Linux 5.8+ with BTF), and an LSM or lockdown policy may forbid them")]
    Program {
        program: String,
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}): mount it (`mount -t tracefs tracefs /sys/kernel/tracing`) or give podtrail CAP_SYS_ADMIN")]
    NoTracefs(std::io::Error),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("no cgroup2 mount found (looked in /proc/self/mountinfo): mount cgroup2 (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or run without connect tracing (`podtrail capture --no-network`, or `network = false` under `[capture]` for `podtrail run`)")]
    NoCgroup2,
    #[error("opening {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// The kernel's own counters: records written and records lost, per kind and per cgroup, and
/// the in-flight entries (syscall entry to exit) the LRU maps lost.
pub struct Counters {
    sent: PerCpuArray<MapData, u64>,
    dropped: PerCpuArray<MapData, u64>,
    refused: PerCpuArray<MapData, u64>,
    dropped_cgroups: BpfHashMap<MapData, u64, abi::CgroupDrops>,
    inflight: PerCpuArray<MapData, u64>,
    file_inflight: BpfHashMap<MapData, u32, abi::File>,
    /// `struct ns_before` (ns.bpf.c): a u64 and two u32, 16 bytes; only counted, never read.
    setns_inflight: BpfHashMap<MapData, u32, [u64; 2]>,
    connect_inflight: BpfHashMap<MapData, u32, u64>,
    /// The per-cgroup drops as last read, and the drop totals of the last two reads: the
    /// cgroup map is walked again only when drops were counted since the read before the
    /// last (each drop counts in `dropped` before it reaches the cgroup map, so a drop seen
    /// in one read's total may reach the map just after that read walked it).
    cgroups_seen: std::cell::RefCell<CgroupsSeen>,
}

/// [`Counters::cgroups_seen`]: the per-cgroup drops as last read, and the drop totals of the
/// last two reads (the one before the last first).
#[derive(Default)]
struct CgroupsSeen {
    list: Vec<(u64, u64)>,
    totals: [u64; 2],
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounts {
    /// Per kind name: records written into the ring.
    pub sent: Vec<(&'static str, u64)>,
    /// Per kind name: records the ring had no room for (those refused included).
    pub dropped: Vec<(&'static str, u64)>,
    /// Per kind name: records refused because their cgroup was over its share of a ring at
    /// least half full.
    pub refused: Vec<(&'static str, u64)>,
    /// Per cgroup id: records lost.
    pub dropped_by_cgroup: Vec<(u64, u64)>,
    /// Per in-flight map (`file`, `setns`, `connect`): entries started and neither finished
    /// nor still in the map, so lost: evicted when the LRU map was full, or left by a thread
    /// that died inside the syscall. Each is an operation that was not reported.
    pub inflight_lost: Vec<(&'static str, u64)>,
}

impl KernelCounts {
    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }

    pub fn total_refused(&self) -> u64 {
        self.refused.iter().map(|(_, n)| n).sum()
    }
}

impl Counters {
    pub fn read(&self) -> KernelCounts {
        let sum = |m: &PerCpuArray<MapData, u64>, k: u32| m.get(&k, 0).map(|v| v.iter().sum()).unwrap_or(0);
        let mut c = KernelCounts::default();
        for k in 1..abi::KIND_MAX {
            let name = abi::KIND_NAMES[k as usize];
            c.sent.push((name, sum(&self.sent, k)));
            c.dropped.push((name, sum(&self.dropped, k)));
            c.refused.push((name, sum(&self.refused, k)));
        }
        // Walking the LRU map reads every one of its 16 384 buckets even when it is empty: only
        // when drops were counted since the read before the last (every read on a node that
        // loses nothing skips it).
        let total = c.total_dropped();
        let mut seen = self.cgroups_seen.borrow_mut();
        if total != seen.totals[0] {
            seen.list = self.dropped_cgroups.iter().filter_map(Result::ok).map(|(k, v)| (k, v.events)).collect();
        }
        seen.totals = [seen.totals[1], total];
        c.dropped_by_cgroup = seen.list.clone();
        // started, then present, then finished: an entry started before the first read is
        // present at the second or finished before the third, so nothing is counted lost
        // that was not (an entry started meanwhile only lowers the count until next time)
        let maps: [(&'static str, u32, usize); 3] = [
            ("file", abi::INFLIGHT_FILE_STARTED, 0),
            ("setns", abi::INFLIGHT_SETNS_STARTED, 1),
            ("connect", abi::INFLIGHT_CONNECT_STARTED, 2),
        ];
        for (name, started, which) in maps {
            let s = sum(&self.inflight, started);
            // Finished already as many as started: nothing can be lost whatever is present, and
            // the map need not be walked. A walk reads every bucket of the LRU map even when it
            // is empty (21 504 of them for the three maps): it was half of this read, which the
            // agent makes every second, idle or not (issue 15, lead session 14's profile).
            if sum(&self.inflight, started + 1) >= s {
                c.inflight_lost.push((name, 0));
                continue;
            }
            let present = match which {
                0 => self.file_inflight.keys().filter(Result::is_ok).count(),
                1 => self.setns_inflight.keys().filter(Result::is_ok).count(),
                _ => self.connect_inflight.keys().filter(Result::is_ok).count(),
            } as u64;
            let f = sum(&self.inflight, started + 1);
            c.inflight_lost.push((name, s.saturating_sub(f + present)));
        }
        c
    }
}

/// A loaded and attached set of programs with its reader task.
pub struct Capture {
    _ebpf: Ebpf,
    pub counters: Counters,
    pub stats: Arc<reader::ReaderStats>,
    /// In batches of at most [`reader::EVENTS_PER_BATCH`].
    pub events: mpsc::Receiver<reader::EventBatch>,
    /// Programs attached, by name, for the start-up log.
    pub attached: Vec<&'static str>,
    stop: tokio::sync::watch::Sender<bool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Capture {
    /// Loads, attaches and starts reading. Must run inside a tokio runtime.
    pub fn start(opts: CaptureOptions) -> Result<Capture, CaptureError> {
        Capture::start_counted(opts, reader::ReaderStats::default())
    }

    /// [`Capture::start`], the reader counting into `stats` (the agent's are registered
    /// series: [`reader::ReaderStats::registered`]).
    pub fn start_counted(opts: CaptureOptions, stats: reader::ReaderStats) -> Result<Capture, CaptureError> {
        preflight(&opts)?;
        raise_memlock();
        let diffs = super::btf::check_abi(BPF_OBJECT).map_err(|e| CaptureError::Abi(e.to_string()))?;
        if !diffs.is_empty() {
            return Err(CaptureError::Abi(diffs.join("; ")));
        }
        // the host's pid namespace: /proc/1's (podtrail runs with hostPID), or our own where
        // /proc/1 cannot be read (a sandbox)
        let host_pidns = fs::metadata("/proc/1/ns/pid")
            .or_else(|_| fs::metadata("/proc/self/ns/pid"))
            .map(|m| m.ino() as u32)
            .unwrap_or(0);
        let self_tgid = if opts.ignore_self { std::process::id() } else { 0 };
        let filter = match opts.filter {
            Filter::All => abi::FILTER_ALL,
            Filter::Containers => abi::FILTER_CONTAINERS,
        };
        let scan_env = opts.scan_env as u32;
        let want = |k: u32| opts.kinds & (1 << k) != 0;
        // aya 0.14's EbpfLoader::new parses the kernel's BTF itself (unconditionally, and keeps
        // it private), so the loader uses that copy and drops it with itself at the end of this
        // statement; podtrail parses its own for the tp_btf attachments only after. Handing the
        // loader podtrail's copy (`.btf(Some(&btf))`) held both at once: ~17 MB each, the
        // agent's whole start-up peak (heaptrack, BENCHMARKS.md issue 15).
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("events", opts.ring_bytes)
            .override_global("filter_mode", &filter, true)
            .override_global("host_pidns_ino", &host_pidns, true)
            .override_global("self_tgid", &self_tgid, true)
            .override_global("scan_env", &scan_env, true)
            .override_global("wakeup_bytes", &opts.wakeup_bytes, true)
            .override_global("cgroup_share_bytes", &opts.cgroup_share_bytes, true)
            .override_global("tty_input_budget", &opts.tty_input_budget, true)
            .override_global("tty_output_budget", &opts.tty_output_budget, true)
            .override_global("kind_mask", &opts.kinds, true)
            .load(BPF_OBJECT)?;
        let btf = Btf::from_sys_fs().map_err(|_| CaptureError::NoBtf)?;

        let mut attached = Vec::new();
        for (prog, tp, kind) in [
            ("pt_sched_exec", "sched_process_exec", abi::KIND_EXEC),
            ("pt_sched_fork", "sched_process_fork", abi::KIND_FORK),
            ("pt_sched_exit", "sched_process_exit", abi::KIND_EXIT),
        ] {
            if want(kind) {
                attach_btf_tp(&mut ebpf, &btf, prog, tp)?;
                attached.push(prog);
            }
        }
        // each new cgroup2 cgroup's id and path, ahead of its processes' records
        // (ebpf/cgroup.bpf.c): resolves a container removed before its events are read
        if want(abi::KIND_CGROUP_MKDIR) {
            attach_btf_tp(&mut ebpf, &btf, "pt_cgroup_mkdir", "cgroup_mkdir")?;
            attached.push("pt_cgroup_mkdir");
        }
        if want(abi::KIND_NS_JOIN) {
            for (prog, cat, name) in [
                ("pt_sys_enter_setns", "syscalls", "sys_enter_setns"),
                ("pt_sys_exit_setns", "syscalls", "sys_exit_setns"),
            ] {
                attach_tp(&mut ebpf, prog, cat, name)?;
                attached.push(prog);
            }
        }
        if want(abi::KIND_FILE) {
            let files = attach_file_hooks(&mut ebpf, &btf, &opts)?;
            attached.extend(files);
        }
        if opts.tty_input_budget > 0 && want(abi::KIND_TTY) {
            attach_btf_tp(&mut ebpf, &btf, "pt_tty_exec", "sched_process_exec")?;
            attach_btf_tp(&mut ebpf, &btf, "pt_tty_exit", "sched_process_exit")?;
            attach_tp(&mut ebpf, "pt_tty_read", "syscalls", "sys_exit_read")?;
            attached.extend(["pt_tty_exec", "pt_tty_exit", "pt_tty_read"]);
            if opts.tty_output_budget > 0 {
                attach_tp(&mut ebpf, "pt_tty_write", "syscalls", "sys_exit_write")?;
                attached.push("pt_tty_write");
            }
        }
        let connects = want(abi::KIND_CONNECT) || want(abi::KIND_CONNECT_RESULT) || want(abi::KIND_UDP_SEND);
        let (sockets, dns) = (opts.sockets && want(abi::KIND_SOCK), opts.dns && want(abi::KIND_DNS));
        if opts.network && (connects || sockets || dns) {
            let root = match &opts.cgroup2_root {
                Some(p) => p.clone(),
                None => find_cgroup2().ok_or(CaptureError::NoCgroup2)?,
            };
            let cg = fs::File::open(&root)
                .map_err(|source| CaptureError::Io { path: root.display().to_string(), source })?;
            if connects {
                attached.extend(attach_connect_hooks(&mut ebpf, &btf, &cg)?);
            }
            if sockets {
                attached.extend(attach_socket_hooks(&mut ebpf, &btf, &cg)?);
            }
            if dns {
                let p: &mut CgroupSkb = program(&mut ebpf, "pt_dns_ingress")?;
                p.load().map_err(|e| refused("pt_dns_ingress", "cgroup_skb/ingress", e))?;
                p.attach(&cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                    .map_err(|e| refused("pt_dns_ingress", "cgroup_skb/ingress", e))?;
                attached.push("pt_dns_ingress");
            }
        }

        let counters = Counters {
            sent: PerCpuArray::try_from(
                ebpf.take_map("sent_by_kind").ok_or(CaptureError::MissingMap("sent_by_kind"))?,
            )?,
            dropped: PerCpuArray::try_from(
                ebpf.take_map("drops_by_kind").ok_or(CaptureError::MissingMap("drops_by_kind"))?,
            )?,
            refused: PerCpuArray::try_from(
                ebpf.take_map("refused_by_kind").ok_or(CaptureError::MissingMap("refused_by_kind"))?,
            )?,
            dropped_cgroups: BpfHashMap::try_from(
                ebpf.take_map("drops_by_cgroup").ok_or(CaptureError::MissingMap("drops_by_cgroup"))?,
            )?,
            inflight: PerCpuArray::try_from(ebpf.take_map("inflight").ok_or(CaptureError::MissingMap("inflight"))?)?,
            file_inflight: BpfHashMap::try_from(
                ebpf.take_map("file_inflight").ok_or(CaptureError::MissingMap("file_inflight"))?,
            )?,
            setns_inflight: BpfHashMap::try_from(
                ebpf.take_map("setns_inflight").ok_or(CaptureError::MissingMap("setns_inflight"))?,
            )?,
            connect_inflight: BpfHashMap::try_from(
                ebpf.take_map("connect_inflight").ok_or(CaptureError::MissingMap("connect_inflight"))?,
            )?,
            cgroups_seen: std::cell::RefCell::new(CgroupsSeen { list: Vec::new(), totals: [u64::MAX; 2] }),
        };
        let ring = RingBuf::try_from(ebpf.take_map("events").ok_or(CaptureError::MissingMap("events"))?)?;
        let (tx, rx) = mpsc::channel(reader::batches_for(opts.channel_capacity));
        let stats = Arc::new(stats);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let parked = Array::try_from(ebpf.take_map("reader_parked").ok_or(CaptureError::MissingMap("reader_parked"))?)?;
        let reader = tokio::spawn(reader::run(ring, parked, tx, stats.clone(), opts.poll_interval, stop_rx));
        Ok(Capture { _ebpf: ebpf, counters, stats, events: rx, attached, stop, reader })
    }

    /// Stops reading after a last drain of the ring; the events channel then closes.
    pub async fn stop(self) -> (Counters, Arc<reader::ReaderStats>) {
        let _ = self.stop.send(true);
        let _ = self.reader.await;
        (self.counters, self.stats)
    }
}

/// Checks what can be checked before the kernel is asked, so the error names the cause.
fn preflight(opts: &CaptureOptions) -> Result<(), CaptureError> {
    let caps = effective_caps();
    let mut missing = Vec::new();
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |c: u32| caps & (1u64 << c) != 0;
    let admin = has(CAP_SYS_ADMIN);
    if !(has(CAP_BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || admin) {
        missing.push("CAP_PERFMON");
    }
    let network_kinds =
        [abi::KIND_CONNECT, abi::KIND_CONNECT_RESULT, abi::KIND_UDP_SEND, abi::KIND_SOCK, abi::KIND_DNS]
            .iter()
            .any(|k| opts.kinds & (1 << k) != 0);
    if opts.network && network_kinds && !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN (for the connect hooks; or turn them off: `podtrail capture --no-network`, `network = false` under `[capture]` for `podtrail run`)");
    }
    if !missing.is_empty() {
        return Err(CaptureError::Privilege { missing: missing.join(", ") });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CaptureError::NoBtf);
    }
    ensure_tracefs()
}

/// Tracepoint programs are attached by id, read from tracefs; a minimal node image may not
/// have it mounted.
fn ensure_tracefs() -> Result<(), CaptureError> {
    let dir = Path::new("/sys/kernel/tracing");
    if dir.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("static string has no NUL");
    let (src, target) = (c("tracefs"), c("/sys/kernel/tracing"));
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(CaptureError::NoTracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}

/// Effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// The cgroup2 mount: `/sys/fs/cgroup` on a pure v2 node, `/sys/fs/cgroup/unified` on hybrid.
pub fn find_cgroup2() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.into_iter().next()
}
