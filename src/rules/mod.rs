//! Rules stage: detection rules over podtrail's events, raised inside the traces.
//!
//! In: what the span stage did (the identity it attributed, live execs, the records it built
//! spans from, the spans), rule files. Out: the same spans, with an `alert` span sent when an
//! exec raises it, an `alert` span event (`security_rule.*`, `podtrail.alert.severity`) on
//! each span whose exec, connect or file operation matched a rule, and the session's root
//! marked with `podtrail.alerts.count`,
//! `podtrail.alerts.max_severity` and `podtrail.alerts.rules`. Dropped: nothing; a rule that
//! does not parse is left out and reported with its line.
//!
//! Layout: [`lang`] (the YAML rule language), [`matchers`] (strings, globs, ranges, ports),
//! [`subject`] (what a rule looks at), [`eval`] (rules against one process record),
//! [`stage`] (what it does with the span stage's output), [`task`] (the stage as a task
//! between the span stage and export), [`source`] (shipped rules, the configured file,
//! reload). docs/rules.md is the reference.

pub mod eval;
pub mod lang;
pub mod matchers;
pub mod source;
pub mod stage;
pub mod subject;
pub mod task;

pub use eval::{Alert, Target};
pub use lang::{Rule, RuleError, Severity};
pub use source::{RuleSource, RulesConfig, DEFAULT_RULES};
pub use stage::{AlertStage, RuleSet};
pub use subject::On;
