//! What the process stage hands to the stages after it: sessions and their processes, as
//! plain owned data. The process table (`table.rs`) and session tracker (`session/`) build
//! these; the span builder (`crate::spans`) and the console view (`crate::export::console`)
//! read them. Nothing here knows about the kernel's structs or about OpenTelemetry.
//!
//! Times are kernel boot-time nanoseconds (`bpf_ktime_get_boot_ns`); `crate::clock` turns them
//! into wall-clock time.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

mod text;
mod update;
pub use text::Text;
pub use update::*;

use crate::capture::event::{ExitStatus, FileOp, ProcessKey, Transport};

/// Stable within one agent run and derived from the session root's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionId(pub ProcessKey);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A process entered the container from outside its cgroup (runc exec: kubectl exec,
    /// kubectl cp, crictl exec, exec probes).
    Exec,
    /// A process on the node joined the container's namespaces (nsenter, setns).
    Node,
    /// The init of an ephemeral container (kubectl debug).
    Debug,
    /// Not a session: a run of a watched executable (tcpdump, nsenter, ...) anywhere, on the
    /// host or in any container, with its descendants (issue 6).
    Watched,
    /// Not a session: connects by a container process outside every session to a destination
    /// outside the cluster, folded over a window (issue 6, `process::activity::Outbound`).
    Outbound,
    /// Not a session: a process tree a container started after its init (an application
    /// spawning `sh -c`, a cron job), recorded in the `containers` and `all` scopes.
    Workload,
    /// Not a session: a process tree on the host itself, recorded in the `all` scope.
    Host,
}

impl SessionKind {
    /// A recorded process tree that is not a session (`workload`, `host`): a watched run or
    /// an exec session started by one of its members becomes a trace of its own.
    pub fn is_tree(&self) -> bool {
        matches!(self, SessionKind::Workload | SessionKind::Host)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SessionKind::Exec => "exec",
            SessionKind::Node => "node",
            SessionKind::Debug => "debug",
            SessionKind::Watched => "watched_exec",
            SessionKind::Outbound => "outbound",
            SessionKind::Workload => "workload",
            SessionKind::Host => "host",
        }
    }

    /// Whether a Kubernetes request can stand behind this kind (kubectl exec, kubectl debug):
    /// the others never wait for attribution.
    pub fn attributable(&self) -> bool {
        matches!(self, SessionKind::Exec | SessionKind::Debug)
    }
}

/// Who a container is, as far as this node can tell. Its text is [`Text`] (counted, shared):
/// the span stage's attributes for the container's sessions point at these strings instead of
/// copying them, and an enriched copy (`crate::enrich::kube::SessionFilter`) shares what it
/// does not change (issue 15).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// Full container id (64 hex for containerd/docker/CRI-O; whatever `ctr` was given).
    pub id: Text,
    pub cgroup_id: u64,
    pub pod_namespace: Option<Text>,
    pub pod_name: Option<Text>,
    pub pod_uid: Option<Text>,
    pub container_name: Option<Text>,
    /// Owner workload kind and name (Deployment/api, DaemonSet/x, ...).
    pub workload_kind: Option<Text>,
    pub workload_name: Option<Text>,
    pub node_name: Option<Text>,
    /// The image as the pod spec or the runtime names it (`registry/repo:tag`), and its id
    /// (the digest the runtime resolved: `containerStatuses[].imageID`), when known.
    pub image_name: Option<Text>,
    pub image_id: Option<Text>,
    /// The pod's labels of `kube.pod_labels` it has, in that order (from the pod watch).
    pub pod_labels: Vec<(Text, Text)>,
    /// Where the pod identity came from: "kube_api", "containerd_labels", "cgroup".
    pub source: &'static str,
    /// When the container's init process started (boot ns), as the process stage saw it (its
    /// exec, or /proc at start-up): a file changed later lies in the container's writable
    /// layer, not its image. None when the init was not seen.
    pub started_ns: Option<u64>,
}

/// How a [`ConnectRecord`] leads out of (or into) the container (issue 18).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetOp {
    /// connect(2): `addr`/`port` is the destination.
    #[default]
    Connect,
    /// Datagrams that named their destination (sendto/sendmsg): `addr`/`port`, folded per
    /// image and destination (`activity.count` datagrams).
    #[serde(rename = "sendto")]
    SendTo,
    /// A TCP socket started listening: `addr`/`port` is the local address.
    Listen,
    /// An accepted connection: `addr`/`port` is the client, `local` the accepting address.
    Accept,
    /// A raw or ICMP socket was created (`transport` says which); no address.
    Socket,
}

impl NetOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetOp::Connect => "connect",
            NetOp::SendTo => "sendto",
            NetOp::Listen => "listen",
            NetOp::Accept => "accept",
            NetOp::Socket => "socket",
        }
    }
}

/// A connect made by a process image, with its outcome once known; or another way out
/// (`op`): a datagram's destination, a listening socket, an accepted connection, a raw socket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectRecord {
    /// What this record is; `Connect` unless a [`NetOp`] says otherwise.
    pub op: NetOp,
    /// Accept: the local address that accepted.
    pub local: Option<(IpAddr, u16)>,
    pub ts_ns: u64,
    /// When the outcome was known.
    pub end_ns: Option<u64>,
    pub transport: Transport,
    pub addr: IpAddr,
    pub port: u16,
    /// Destination the socket really reached, when something rewrote it.
    pub final_addr: Option<(IpAddr, u16)>,
    pub outcome: ConnectOutcome,
    /// A negative errno for failures.
    pub error: Option<i32>,
    /// UDP only: the socket sent data (a connect without data is resolver address sorting).
    pub udp_sent: bool,
    /// Outbound records outside sessions only: the repeats this record stands for.
    pub activity: Option<ActivityMarks>,
    /// `podtrail.network.destination.scope` as classified when the connect was seen (the
    /// ranges may be learned later); None: classify when the span is built.
    pub scope: Option<&'static str>,
    /// Connects and datagrams: the name a DNS answer gave `addr` in this container before
    /// (the name the process asked for, not a CNAME's target); None: no answer seen.
    #[serde(serialize_with = "ser_opt_name")]
    pub name: Option<std::sync::Arc<str>>,
}

fn ser_opt_name<S: serde::Serializer>(n: &Option<std::sync::Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.serialize_str(n),
        None => s.serialize_none(),
    }
}

impl ConnectRecord {
    /// What a rule's `on: connect` looks at: a connect or a datagram that carries traffic (a
    /// UDP connect that never sent is a resolver sorting addresses). Listens, accepts and raw
    /// sockets have no rule fields yet. The process stage says such a record at once
    /// ([`Live::Net`]) and the rules evaluate exactly these: one predicate for both.
    pub fn is_rule_subject(&self) -> bool {
        matches!(self.op, NetOp::Connect | NetOp::SendTo) && (self.transport != Transport::Udp || self.udp_sent)
    }

    /// A connect as the kernel reported it, its outcome not known yet.
    pub fn pending(c: &crate::capture::event::ConnectEvent) -> Self {
        ConnectRecord {
            op: NetOp::Connect,
            local: None,
            ts_ns: c.ts_ns,
            end_ns: None,
            transport: c.transport,
            addr: c.addr,
            port: c.port,
            final_addr: None,
            outcome: ConnectOutcome::Pending,
            error: None,
            udp_sent: false,
            activity: None,
            scope: None,
            name: None,
        }
    }
}

impl ConnectRecord {
    /// A way out that is not a connect, from its kernel record: done when seen (`outcome`
    /// `sent`, `listening`, `accepted` or `opened`), a sendto counting one datagram.
    pub fn from_sock(s: &crate::capture::event::SockEvent) -> Self {
        use crate::capture::event::SockOp;
        let (op, outcome) = match s.op {
            SockOp::SendTo => (NetOp::SendTo, ConnectOutcome::Sent),
            SockOp::Listen => (NetOp::Listen, ConnectOutcome::Listening),
            SockOp::Accept => (NetOp::Accept, ConnectOutcome::Accepted),
            SockOp::Create => (NetOp::Socket, ConnectOutcome::Opened),
        };
        let unspecified = (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
        let (addr, port) = match s.op {
            SockOp::Listen => s.local,
            _ => s.peer,
        }
        .unwrap_or(unspecified);
        ConnectRecord {
            op,
            local: if s.op == SockOp::Accept { s.local } else { None },
            ts_ns: s.ts_ns,
            end_ns: None,
            transport: s.transport,
            addr,
            port,
            final_addr: None,
            outcome,
            error: None,
            udp_sent: s.op == SockOp::SendTo,
            activity: (s.op == SockOp::SendTo).then_some(ActivityMarks {
                count: 1,
                first_ns: s.ts_ns,
                last_ns: s.ts_ns,
                suppressed_before: 0,
            }),
            scope: None,
            name: None,
        }
    }
}

/// What an outbound record (`SessionKind::Outbound`) folded and what was suppressed before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ActivityMarks {
    /// Connects folded into this record, itself included.
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Connects of the same container the rate limit suppressed since its previous record.
    pub suppressed_before: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectOutcome {
    Pending,
    Connected,
    Refused,
    TimedOut,
    Unreachable,
    Error,
    /// A datagram that named its destination left (sendto/sendmsg).
    Sent,
    /// A socket started listening.
    Listening,
    /// A connection was accepted.
    Accepted,
    /// A raw or ICMP socket was created.
    Opened,
}

impl ConnectOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectOutcome::Pending => "pending",
            ConnectOutcome::Connected => "connected",
            ConnectOutcome::Refused => "refused",
            ConnectOutcome::TimedOut => "timed_out",
            ConnectOutcome::Unreachable => "unreachable",
            ConnectOutcome::Error => "error",
            ConnectOutcome::Sent => "sent",
            ConnectOutcome::Listening => "listening",
            ConnectOutcome::Accepted => "accepted",
            ConnectOutcome::Opened => "opened",
        }
    }

    /// From connect(2)'s or the handshake's result (0 or -errno).
    pub fn from_error(err: i32) -> Self {
        match -err {
            0 => ConnectOutcome::Connected,
            111 => ConnectOutcome::Refused,           // ECONNREFUSED
            110 => ConnectOutcome::TimedOut,          // ETIMEDOUT
            101 | 113 => ConnectOutcome::Unreachable, // ENETUNREACH, EHOSTUNREACH
            115 | 114 => ConnectOutcome::Pending,     // EINPROGRESS, EALREADY
            _ => ConnectOutcome::Error,
        }
    }
}

/// One image of a process: from its exec (or its fork, for a child that never exec'd) to the
/// next exec or the exit.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImageRecord {
    /// 0 for the first image; +1 per exec. With the process key, it names the span.
    pub exec_index: u32,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// A forked child that has not exec'd: it runs its parent's image.
    pub inherited: bool,
    /// Shared, as are the paths below: a fork's image and a live update's copy of it cost a
    /// reference-count bump, not a copy of every argument (issue 15). Redaction replaces the
    /// whole argv, and only when it changes something.
    #[serde(serialize_with = "ser_slice")]
    pub argv: Arc<[Vec<u8>]>,
    pub argv_truncated: bool,
    /// Values in `argv` replaced by redaction tokens (`crate::redact`); 0 until the export
    /// task redacts the record.
    pub argv_redacted: u32,
    #[serde(serialize_with = "ser_slice")]
    pub filename: Arc<[u8]>,
    #[serde(serialize_with = "ser_opt_slice")]
    pub interp: Option<Arc<[u8]>>,
    #[serde(serialize_with = "ser_slice")]
    pub exe_path: Arc<[u8]>,
    pub fileless: bool,
    pub tty: bool,
    pub uid: u32,
    pub euid: u32,
    pub connects: Vec<ConnectRecord>,
    /// Operations on watched files (shell histories, /etc/shadow, tokens, ...), in order.
    pub files: Vec<FileRecord>,
    /// When the executable was last changed (its inode change time, in boot ns): later than
    /// the session's or the container's start means it was written there (a download), not
    /// shipped with the image. None when unknown or older than the boot.
    pub exe_written_ns: Option<u64>,
    /// The executable's (device, inode) as the kernel ran it: what it is, whatever its name
    /// ((0, 0): unknown).
    pub exe_file: (u32, u64),
    /// The watched tool this image runs, judged by content as well as by the executable's
    /// name (`crate::process::identity`): `tcpdump` for a renamed copy of tcpdump too.
    pub identity: Option<String>,
    /// For a run through the dynamic loader (`ld.so /bin/x`): the program it runs.
    pub program: Option<Vec<u8>>,
    /// Connects to destinations past the image's cap of folded destinations: counted, not
    /// kept (`MAX_CONNECT_RECORDS`: memory stays bounded whatever one process does).
    pub connects_over_cap: u64,
    /// The working directory the image started in (`process.working_directory`), resolved
    /// by the kernel at exec; None when unknown (an image found in /proc, or a test's).
    #[serde(serialize_with = "crate::text::ser_opt_bytes")]
    pub cwd: Option<Arc<[u8]>>,
}

/// A shared slice, serialized as the `Vec` it replaced was (a sequence of its items).
fn ser_slice<S: Serializer, T: Serialize>(v: &Arc<[T]>, s: S) -> Result<S::Ok, S::Error> {
    v[..].serialize(s)
}

/// [`ser_slice`] of an optional one.
fn ser_opt_slice<S: Serializer, T: Serialize>(v: &Option<Arc<[T]>>, s: S) -> Result<S::Ok, S::Error> {
    v.as_deref().serialize(s)
}

/// What an image did to a watched file (from `Event::File`; see `FileEvent` for the fields).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileRecord {
    pub ts_ns: u64,
    pub op: FileOp,
    pub write: bool,
    /// open(2) flags, or the mode for chmod.
    pub flags: u32,
    /// Absolute; for symlink the link's target as given, for rename/link the old name.
    #[serde(serialize_with = "crate::text::ser_bytes")]
    pub path: Vec<u8>,
    /// rename/link: the new name; symlink: the new link.
    #[serde(serialize_with = "crate::text::ser_opt_bytes")]
    pub path2: Option<Vec<u8>>,
    /// 0 / a file descriptor, or a negative errno (0 for io_uring: it completes later).
    pub result: i64,
    pub truncated: bool,
    /// The name the process gave when it reached `path` by another (a symlink, a hard link,
    /// `/proc/self/fd/N`); see `FileEvent::given`.
    #[serde(serialize_with = "crate::text::ser_opt_bytes")]
    pub given: Option<Vec<u8>>,
    /// The file a watched name led to, when another (a symlink to /dev/null).
    #[serde(serialize_with = "crate::text::ser_opt_bytes")]
    pub resolved: Option<Vec<u8>>,
    /// Submitted through io_uring: its opcode.
    pub io_uring: Option<u8>,
}

impl ImageRecord {
    /// A copy without its connect and file records (a live update carries only the one it
    /// says): they are not cloned to be dropped; its argv and paths are shared, not copied.
    pub fn without_records(&self) -> ImageRecord {
        ImageRecord {
            exec_index: self.exec_index,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            inherited: self.inherited,
            argv: self.argv.clone(),
            argv_truncated: self.argv_truncated,
            argv_redacted: self.argv_redacted,
            filename: self.filename.clone(),
            interp: self.interp.clone(),
            exe_path: self.exe_path.clone(),
            fileless: self.fileless,
            tty: self.tty,
            uid: self.uid,
            euid: self.euid,
            connects: Vec::new(),
            files: Vec::new(),
            exe_written_ns: self.exe_written_ns,
            exe_file: self.exe_file,
            identity: self.identity.clone(),
            program: self.program.clone(),
            connects_over_cap: self.connects_over_cap,
            cwd: self.cwd.clone(),
        }
    }

    /// The command as the user typed it: basename of argv[0] (busybox applets, symlinks),
    /// else the executable's basename.
    pub fn command_name(&self) -> Vec<u8> {
        self.command_bytes().to_vec()
    }

    /// [`Self::command_name`], borrowed.
    pub fn command_bytes(&self) -> &[u8] {
        match self.argv.first() {
            Some(a0) if !a0.is_empty() => crate::text::basename(a0),
            _ => crate::text::basename(&self.exe_path),
        }
    }
}

/// A process of a session, with every image it ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessRecord {
    pub key: ProcessKey,
    pub parent: Option<ProcessKey>,
    /// The `exec_index` of the parent's image current when this process was forked: with
    /// `parent` it names the parent span, so the span stage can export this process when it
    /// ends instead of waiting for its parent's record. None when the parent was not in the
    /// table (exited before a late fork record, or never seen).
    pub parent_exec_index: Option<u32>,
    pub nspid: u32,
    pub fork_ns: u64,
    pub exit_ns: Option<u64>,
    pub exit: Option<ExitStatus>,
    /// Learned from /proc at start-up rather than seen being created.
    pub from_proc: bool,
    pub images: Vec<ImageRecord>,
    /// A final record of a process that exited with no child of its own left in the process
    /// table: every child it forked has ended (its record went before this one), and an exited
    /// process forks nothing, so no later record names it as parent (unless a child's fork
    /// and first events were lost in the kernel and it shows up after this exit). The span and
    /// rules stages then keep nothing for it as a parent (issue 15: the storm's 20 000 ended
    /// processes filled both stages' 16 384-entry tables). False when unsure (/proc-learned
    /// processes, lost exits, live records, the agent stopping). Not exported.
    #[serde(skip)]
    pub leaf: bool,
}

/// What the session stage knows about a session; repeated on every update.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub kind: SessionKind,
    /// Shared by the sessions of one container (the process stage's container table hands out
    /// one per container and metadata change): each session's own copy of the dozen strings
    /// was a third of an open session's bytes (issue 15).
    pub container: Arc<ContainerInfo>,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// The root's first image's argv (what the request asked to run).
    pub root_argv: Vec<Vec<u8>>,
    pub root_tty: bool,
    /// KUBERNETES_EXEC_AUDIT_ID from the root's first image (KEP-6035).
    pub env_audit_id: Option<String>,
    /// The node user (loginuid) of a node session.
    pub node_user: Option<u32>,
    /// The session this one was opened from (nsenter from inside another session).
    pub parent_session: Option<SessionId>,
    /// Events lost in the kernel for this container while the session ran.
    pub events_lost: u64,
    /// The agent stopped (or started) while the session ran: part of it was not seen.
    pub incomplete: bool,
    pub from_proc: bool,
    /// The root's command is one of its container's exec probe commands (set between the
    /// process and span stages, `crate::enrich::kube::SessionFilter`): the span stage drops
    /// the session only if no API request matches it within the hold and it has no terminal.
    pub probe: bool,
}

impl SessionInfo {
    /// A session of `kind` opened at `start_ns`, nothing else known yet.
    pub fn new(id: SessionId, kind: SessionKind, container: impl Into<Arc<ContainerInfo>>, start_ns: u64) -> Self {
        SessionInfo {
            id,
            kind,
            container: container.into(),
            start_ns,
            end_ns: None,
            root_argv: Vec::new(),
            root_tty: false,
            env_audit_id: None,
            node_user: None,
            parent_session: None,
            events_lost: 0,
            incomplete: false,
            from_proc: false,
            probe: false,
        }
    }
}

/// Commands as the API server and the kernel see them: shared by attribution (does a request
/// fit a session?) and the pod index (is a session one of its container's exec probes?).
/// Basename of a path-like argv element (`/bin/sh` -> `sh`, `./backup.sh` -> `backup.sh`).
fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// argv[0] of a request and of the kernel are the same program when equal or when their
/// basenames are (runc resolves `sh` through PATH and the kernel may report `/bin/sh`).
fn same_program(requested: &str, kernel: &str) -> bool {
    requested == kernel || (!basename(requested).is_empty() && basename(requested) == basename(kernel))
}

/// Does the kernel argv of a session root fit the command a request asked for?
///
/// Allows for the kernel's rewriting of `#!` scripts: a request for `[./s.sh, a]` becomes
/// `[/bin/sh, ./s.sh, a]` (or `[/usr/bin/env, bash, /path/s.sh, a]` with an interpreter
/// argument), where the script is the path runc resolved.
pub fn command_matches(requested: &[String], kernel: &[String]) -> bool {
    let Some((req0, req_rest)) = requested.split_first() else { return false };
    let direct = |k: &[String]| -> bool {
        match k.split_first() {
            Some((k0, k_rest)) => same_program(req0, k0) && k_rest == req_rest,
            None => false,
        }
    };
    if direct(kernel) {
        return true;
    }
    // `#!interp` and `#!interp arg`: the script and its arguments follow the interpreter part.
    (1..=2).any(|skip| kernel.len() == requested.len() + skip && direct(&kernel[skip..]))
}
