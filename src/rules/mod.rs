//! Rules stage: detection rules over podtrail's events, raised inside the traces.
//!
//! In: `SessionUpdate`s (tapped before the span stage) and the spans built from them, the
//! identity the span stage attributed, rule files. Out: the same spans, with an `alert` span
//! event (`security_rule.*`, `podtrail.alert.severity`) on each span whose exec, connect or
//! file operation matched a rule, and the session's root marked with `podtrail.alerts.count`,
//! `podtrail.alerts.max_severity` and `podtrail.alerts.rules`. Dropped: nothing; a rule that
//! does not parse is left out and reported with its line.
//!
//! Layout: [`lang`] (the YAML rule language), [`matchers`] (strings, globs, ranges, ports),
//! [`subject`] (what a rule looks at), [`eval`] (rules against one process record),
//! [`stage`] (where it runs: between the span stage and the sinks), [`source`] (shipped
//! rules, the configured file, reload). docs/rules.md is the reference.

pub mod eval;
pub mod lang;
pub mod matchers;
pub mod source;
pub mod stage;
pub mod subject;

pub use eval::{Alert, Target};
pub use lang::{Rule, RuleError, Severity};
pub use source::{RuleSource, RulesConfig, DEFAULT_RULES};
pub use stage::{AlertStage, RecordingAttributor, RuleSet};
pub use subject::On;
