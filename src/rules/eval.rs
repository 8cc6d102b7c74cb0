//! Rules against one process record: every exec'd image, every connect that becomes a span,
//! every file operation, each as a [`Subject`] with its context.
//!
//! In: the rule set, a session context, a `ProcessRecord`, its ancestors' names, the paths the
//! session wrote so far. Out: [`Alert`]s, each naming the span it belongs on ([`Target`]).
//! Nothing is dropped here.

use std::collections::HashSet;
use std::sync::Arc;

use super::lang::Rule;
use super::subject::{ProcCtx, SessionCtx, Subject, Trigger};
use crate::capture::event::FileOp;
use crate::model::{FileRecord, ImageRecord, ProcessRecord};
use crate::scope::{normalize, ScopeConfig};

/// The span an alert goes on: an image span, or one of its connect spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Image { exec_index: u32 },
    Connect { exec_index: u32, index: u32 },
}

/// One rule that matched.
#[derive(Clone, Debug)]
pub struct Alert {
    pub rule: Arc<Rule>,
    pub target: Target,
    /// When what triggered it happened (kernel boot ns).
    pub ts_ns: u64,
    /// The file operation that triggered it, for file rules.
    pub file: Option<FileRecord>,
}

/// Paths a file operation leaves written (an open for writing, the new name of a rename or
/// link): an exec of one of them later in the session is "download then execute".
pub fn written_paths(files: &[FileRecord]) -> impl Iterator<Item = &[u8]> + '_ {
    files.iter().filter(|f| f.result >= 0).filter_map(|f| match f.op {
        FileOp::Open if f.write => Some(f.path.as_slice()),
        FileOp::Rename | FileOp::Link => f.path2.as_deref(),
        _ => None,
    })
}

/// When the executable was last changed (its inode change time, boot ns), if known: the exec
/// hook reads it, so it also covers files the file hooks do not watch (an unpacked archive).
fn exe_written_ns(img: &ImageRecord) -> Option<u64> {
    img.exe_written_ns
}

/// Evaluates every rule against one process's record.
pub fn evaluate(
    rules: &[Arc<Rule>],
    session: SessionCtx,
    rec: &ProcessRecord,
    ancestors: &[std::borrow::Cow<str>],
    written: &HashSet<Vec<u8>>,
    scope: &ScopeConfig,
) -> Vec<Alert> {
    let mut out = Vec::new();
    if rules.is_empty() {
        return out;
    }
    let is_root = rec.key == session.info.id.0;
    let first_exec = rec.images.iter().position(|i| !i.inherited);
    let mut own_written: HashSet<&[u8]> = HashSet::new();
    for (idx, img) in rec.images.iter().enumerate() {
        if img.inherited && img.connects.is_empty() && img.files.is_empty() {
            continue; // a forked child's image before its exec: nothing here is a subject
        }
        let by_write = written.contains(&img.exe_path[..]) || own_written.contains(&img.exe_path[..]);
        let written_at = exe_written_ns(img).filter(|_| !img.inherited && !img.exe_path.is_empty());
        let by_ctime = written_at.is_some_and(|t| t >= session.info.start_ns);
        // changed after the container's init started: in its writable layer, not its image
        let in_container = written_at.zip(session.info.container.started_ns).is_some_and(|(t, c)| t >= c);
        let names = super::subject::names_of(img);
        let cmdline = std::cell::OnceCell::new();
        let process = ProcCtx {
            rec,
            image: img,
            session_root: is_root && Some(idx) == first_exec,
            ancestors,
            names: &names,
            cmdline: &cmdline,
            exe_written_in_session: !img.inherited && !img.exe_path.is_empty() && (by_write || by_ctime),
            exe_written_in_container: in_container,
        };
        let mut check = |trigger: Trigger, target: Target, ts_ns: u64, file: Option<&FileRecord>| {
            let s = Subject { session, process, trigger };
            for r in rules.iter().filter(|r| r.matches(&s)) {
                out.push(Alert { rule: r.clone(), target, ts_ns, file: file.cloned() });
            }
        };
        let image = Target::Image { exec_index: img.exec_index };
        if !img.inherited {
            check(Trigger::Exec, image, img.start_ns, None);
        }
        for (ci, c) in img.connects.iter().enumerate() {
            if !c.is_rule_subject() {
                continue; // resolver address sorting; listens, accepts, raw sockets (no rule field yet)
            }
            let ip = normalize(c.addr);
            let target = Target::Connect { exec_index: img.exec_index, index: ci as u32 };
            check(Trigger::Connect(c, ip, c.scope.unwrap_or_else(|| scope.classify(ip))), target, c.ts_ns, None);
        }
        for f in &img.files {
            check(Trigger::File(f), image, f.ts_ns, Some(f));
        }
        own_written.extend(written_paths(&img.files));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::ProcessKey;
    use crate::model::{ContainerInfo, SessionId, SessionInfo, SessionKind};

    const S: u64 = 1_000_000_000;
    const RULE: &str = "Download then execute";

    fn shipped() -> Vec<Arc<Rule>> {
        let (rules, errors) =
            super::super::lang::parse(super::super::source::DEFAULT_RULES, "default.yaml", "podtrail");
        assert!(errors.is_empty(), "{errors:?}");
        rules
    }

    fn info(session_start: u64, container_start: Option<u64>) -> SessionInfo {
        SessionInfo {
            root_argv: vec![b"sh".to_vec()],
            ..SessionInfo::new(
                SessionId(ProcessKey { pid: 100, start_ns: session_start }),
                SessionKind::Exec,
                ContainerInfo { id: "c1".into(), source: "cgroup", started_ns: container_start, ..Default::default() },
                session_start,
            )
        }
    }

    /// pid 101 exec'ing `exe` at 50 s, the file changed at `written`.
    fn exec_of(exe: &str, written: Option<u64>) -> ProcessRecord {
        let img = ImageRecord {
            exec_index: 0,
            start_ns: 50 * S,
            end_ns: Some(51 * S),
            inherited: false,
            argv: vec![exe.as_bytes().to_vec()].into(),
            argv_truncated: false,
            argv_redacted: 0,
            filename: exe.as_bytes().into(),
            interp: None,
            exe_path: exe.as_bytes().into(),
            fileless: false,
            tty: false,
            uid: 0,
            euid: 0,
            connects: vec![],
            files: vec![],
            exe_written_ns: written,
            exe_file: (0, 0),
            identity: None,
            program: None,
            connects_over_cap: 0,
            cwd: None,
        };
        ProcessRecord {
            key: ProcessKey { pid: 101, start_ns: 50 * S },
            parent: Some(ProcessKey { pid: 100, start_ns: 40 * S }),
            parent_exec_index: Some(0),
            nspid: 7,
            fork_ns: 50 * S,
            exit_ns: Some(51 * S),
            exit: None,
            from_proc: false,
            images: vec![img],
            leaf: false,
        }
    }

    fn fires(info: &SessionInfo, rec: &ProcessRecord) -> bool {
        let ctx = SessionCtx { info, who: None, attribution_configured: false };
        evaluate(&shipped(), ctx, rec, &[], &HashSet::new(), &ScopeConfig::default())
            .iter()
            .any(|a| a.rule.name == RULE)
    }

    #[test]
    fn exe_changed_during_the_session_fires_download_then_execute() {
        // container and session start at 10 s and 40 s; the file was written at 45 s
        assert!(fires(&info(40 * S, Some(10 * S)), &exec_of("/tmp/tool", Some(45 * S))));
        // the container's start unknown: the session's start still decides
        assert!(fires(&info(40 * S, None), &exec_of("/tmp/tool", Some(45 * S))));
    }

    #[test]
    fn exe_changed_after_the_container_started_but_before_the_session_fires() {
        // dropped into the writable layer by an earlier session or by the workload itself
        assert!(fires(&info(40 * S, Some(10 * S)), &exec_of("/tmp/tool", Some(20 * S))));
    }

    #[test]
    fn exe_from_the_image_or_of_unknown_age_does_not_fire() {
        assert!(!fires(&info(40 * S, Some(10 * S)), &exec_of("/bin/busybox", Some(5 * S))), "older than the container");
        assert!(!fires(&info(40 * S, Some(10 * S)), &exec_of("/bin/busybox", None)), "change time before the boot");
        assert!(
            !fires(&info(40 * S, None), &exec_of("/tmp/tool", Some(20 * S))),
            "before the session, container start unknown"
        );
    }

    #[test]
    fn connect_name_matches_the_name_a_dns_answer_gave_and_never_an_unnamed_ip() {
        let yaml = "- name: Paste site\n  severity: high\n  category: exfiltration\n  description: x\n  \
                    on: connect\n  match:\n    connect.name: {suffix: .pastebin.test}\n";
        let (rules, errors) = super::super::lang::parse(yaml, "t.yaml", "t");
        assert!(errors.is_empty(), "{errors:?}");
        let mut rec = exec_of("/usr/bin/curl", None);
        let conn = |ip: &str, name: Option<&str>| crate::model::ConnectRecord {
            op: crate::model::NetOp::Connect,
            local: None,
            ts_ns: 50 * S,
            end_ns: None,
            transport: crate::capture::event::Transport::Tcp,
            addr: ip.parse().unwrap(),
            port: 443,
            final_addr: None,
            outcome: crate::model::ConnectOutcome::Connected,
            error: None,
            udp_sent: false,
            activity: None,
            scope: None,
            name: name.map(Into::into),
        };
        rec.images[0].connects = vec![
            conn("203.0.113.7", Some("api.pastebin.test")),
            conn("203.0.113.8", None),
            conn("203.0.113.9", Some("pastebin.test.example")),
        ];
        let info = info(40 * S, None);
        let ctx = SessionCtx { info: &info, who: None, attribution_configured: false };
        let alerts = evaluate(&rules, ctx, &rec, &[], &HashSet::new(), &ScopeConfig::default());
        let hit: Vec<_> = alerts.iter().map(|a| a.target).collect();
        assert_eq!(hit, vec![Target::Connect { exec_index: 0, index: 0 }]);
    }

    #[test]
    fn an_inherited_image_is_not_an_exec_of_a_written_file() {
        let mut rec = exec_of("/tmp/tool", Some(45 * S));
        rec.images[0].inherited = true;
        assert!(!fires(&info(40 * S, Some(10 * S)), &rec));
    }
}
