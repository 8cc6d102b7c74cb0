//! Spans stage: exec sessions -> OpenTelemetry `SpanData`, one trace per session.
//!
//! In: `SessionUpdate`s from the process stage, identities from an [`Attributor`].
//! Out: `SpanData` (root last per session) for `crate::export`.
//! Dropped, each counted and marked on the session's root: spans over the per-session cap,
//! repeats folded into one span, argv bytes over the cap, UDP connects that sent nothing.
//!
//! Layout: [`keys`] (podtrail's attribute keys, documented in docs/attributes.md), [`ids`]
//! (ids derived from the kernel's view), [`build`] (one pure function per span kind),
//! [`budget`] (argv cap, folding), [`session`] (one session's assembly), [`hold`] (waiting
//! for attribution, live `session opened` spans), [`redaction`] (secrets out of updates and
//! identities), [`task`] (the stage as a task between bounded channels), [`config`].
//! Destination scopes are [`crate::scope`].

pub mod budget;
pub mod build;
pub mod config;
pub mod hold;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod redaction;
pub mod session;
pub mod task;

pub use build::BuildCtx;
pub use config::{HoldConfig, SpansConfig};
pub use hold::{LiveUpdate, Output, Release, SpanStage};
pub use identity::{Attributor, NoAttributor, SessionIdentity};
pub use redaction::{build_redactor, redact_update, ArgvCache, Sanitizing};
pub use session::{BuiltSpan, Capped, EndedRecord, OverCap, SessionSpans};
pub use task::SpanTask;
