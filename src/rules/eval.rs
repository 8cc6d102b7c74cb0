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
use crate::capture::event::{FileOp, Transport};
use crate::process::model::{FileRecord, ImageRecord, ProcessRecord};
use crate::spans::scope::{normalize, ScopeConfig};

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

/// When the executable was last changed, if the capture reports it (the exe's ctime).
fn exe_written_ns(_img: &ImageRecord) -> Option<u64> {
    // The exec hook's `exe_ctime_ns` (-> `ImageRecord::exe_written_ns`) lands with issue 7's
    // kernel work; until then a write seen by the file hooks is the only evidence.
    None
}

/// Evaluates every rule against one process's record.
pub fn evaluate(
    rules: &[Arc<Rule>],
    session: SessionCtx,
    rec: &ProcessRecord,
    ancestors: &[String],
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
        let by_write = written.contains(&img.exe_path) || own_written.contains(img.exe_path.as_slice());
        let by_ctime = exe_written_ns(img).is_some_and(|t| t >= session.info.start_ns);
        let process = ProcCtx {
            rec,
            image: img,
            session_root: is_root && Some(idx) == first_exec,
            ancestors: ancestors.to_vec(),
            exe_written_in_session: !img.inherited && !img.exe_path.is_empty() && (by_write || by_ctime),
        };
        let mut check = |trigger: Trigger, target: Target, ts_ns: u64, file: Option<&FileRecord>| {
            let s = Subject { session, process: process.clone(), trigger };
            for r in rules.iter().filter(|r| r.matches(&s)) {
                out.push(Alert { rule: r.clone(), target, ts_ns, file: file.cloned() });
            }
        };
        let image = Target::Image { exec_index: img.exec_index };
        if !img.inherited {
            check(Trigger::Exec, image, img.start_ns, None);
        }
        for (ci, c) in img.connects.iter().enumerate() {
            if c.transport == Transport::Udp && !c.udp_sent {
                continue; // resolver address sorting: not a span, not traffic
            }
            let ip = normalize(c.addr);
            let target = Target::Connect { exec_index: img.exec_index, index: ci as u32 };
            check(Trigger::Connect(c, ip, scope.classify(ip)), target, c.ts_ns, None);
        }
        for f in &img.files {
            check(Trigger::File(f), image, f.ts_ns, Some(f));
        }
        own_written.extend(written_paths(&img.files));
    }
    out
}
