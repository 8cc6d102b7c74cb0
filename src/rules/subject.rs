//! What a rule looks at: one exec, connect or file operation of a session, with its context
//! (the image that did it, its ancestors, the container, who opened the session).
//!
//! In: records of the process stage and the session's identity. Out: a [`Subject`] that
//! conditions read field by field. Nothing is dropped.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::model::{ConnectRecord, FileRecord, ImageRecord, ProcessRecord, SessionInfo};
use crate::spans::SessionIdentity;
use crate::text::{basename, escape, escaped};

/// What triggered the evaluation (`on:` in a rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// A process image started by execve (not a forked child running its parent's image).
    Exec,
    /// A connect that became a span (TCP, or UDP that sent data).
    Connect,
    /// An operation on a watched file.
    File,
}

impl On {
    pub fn as_str(self) -> &'static str {
        match self {
            On::Exec => "exec",
            On::Connect => "connect",
            On::File => "file",
        }
    }
}

/// The session a subject belongs to.
#[derive(Clone, Copy, Debug)]
pub struct SessionCtx<'a> {
    pub info: &'a SessionInfo,
    /// None: no Kubernetes request was matched (or no attribution source is configured).
    pub who: Option<&'a SessionIdentity>,
    /// An attribution source is configured, so "no request behind it" means something.
    pub attribution_configured: bool,
}

/// The image a subject happened in. Borrowed whole (what is derived from the image, its
/// names and command line, is made once per image, not per rule: issue 15's profile had the
/// rules stage's per-condition strings among the agent's largest allocators).
#[derive(Clone, Copy, Debug)]
pub struct ProcCtx<'a> {
    pub rec: &'a ProcessRecord,
    pub image: &'a ImageRecord,
    /// The first exec'd image of the session's root process (what the request ran).
    pub session_root: bool,
    /// Command names of the ancestors known when the rule ran, nearest first (borrowed from
    /// the rules stage's names: not copied per evaluation).
    pub ancestors: &'a [Cow<'a, str>],
    /// [`Subject::names`], made once per image (borrowed from the image when nothing needs
    /// escaping).
    pub names: &'a [Cow<'a, str>; 2],
    /// [`Subject::cmdline`], made when a rule first asks.
    pub cmdline: &'a std::cell::OnceCell<String>,
    /// The executable was written after the session started (by the exe's change time, or by
    /// an earlier file write of the session to that path).
    pub exe_written_in_session: bool,
    /// The executable was changed after the container's init started (so it lies in the
    /// container's writable layer, not its image); false when the container's start is unknown.
    pub exe_written_in_container: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Trigger<'a> {
    Exec,
    /// The connect, its normalised destination, and its destination scope word.
    Connect(&'a ConnectRecord, IpAddr, &'static str),
    File(&'a FileRecord),
}

impl Trigger<'_> {
    pub fn on(&self) -> On {
        match self {
            Trigger::Exec => On::Exec,
            Trigger::Connect(..) => On::Connect,
            Trigger::File(_) => On::File,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub session: SessionCtx<'a>,
    pub process: ProcCtx<'a>,
    pub trigger: Trigger<'a>,
}

/// basename(argv[0]) and the executable's basename (a renamed argv[0] does not hide it).
pub fn names_of(img: &ImageRecord) -> [Cow<'_, str>; 2] {
    [escaped(img.command_bytes()), escaped(basename(&img.exe_path))]
}

impl Subject<'_> {
    /// basename(argv[0]) and the executable's basename (a renamed argv[0] does not hide it).
    pub fn names(&self) -> &[Cow<'_, str>; 2] {
        self.process.names
    }

    /// The argv, each argument escaped, joined by spaces.
    pub fn cmdline(&self) -> &str {
        self.process
            .cmdline
            .get_or_init(|| self.process.image.argv.iter().map(|a| escape(a)).collect::<Vec<_>>().join(" "))
    }
}
