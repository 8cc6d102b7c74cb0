//! The rule language: a YAML list of rules, each a name, a severity, a description, what it
//! looks at (`on: exec | connect | file`) and conditions (`match`, all must hold; `unless`,
//! the rule stays quiet when all of these hold; `any: [{...}, {...}]` inside either, one of
//! the blocks must hold). docs/rules.md is the reference.
//!
//! In: rule file text. Out: compiled [`Rule`]s and, for each rule that does not parse, a
//! [`RuleError`] with its line: every item of the list is parsed on its own, so one broken
//! rule (even a YAML syntax error inside it) leaves the others working.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_norway::Value;

use super::matchers::{self, StrMatcher};
use super::subject::{On, Subject, Trigger};
use crate::capture::event::FileOp;
use crate::scope::{normalize, Cidr};
use crate::text::escaped;

/// Ordered: the root carries the highest one of its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// 1 (info) to 5 (critical): a number a table can sort worst first.
    pub fn number(self) -> i64 {
        self as i64 + 1
    }
}

/// A rule that did not parse: where, which, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// Where the rules came from (a file path, or `default` for the shipped rules).
    pub source: String,
    /// 1-based line in that source.
    pub line: usize,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.source, self.line)?;
        if let Some(r) = &self.rule {
            write!(f, "rule {r:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub description: String,
    pub category: Option<String>,
    pub reference: Option<String>,
    /// The rule file's name for `security_rule.ruleset.name` (`podtrail-default` for shipped).
    pub ruleset: String,
    pub on: On,
    /// Where it was defined (for messages).
    pub line: usize,
    when: Vec<Cond>,
    unless: Vec<Cond>,
}

impl Rule {
    pub fn matches(&self, s: &Subject) -> bool {
        self.on == s.trigger.on() && all(&self.when, s) && (self.unless.is_empty() || !all(&self.unless, s))
    }
}

fn all(conds: &[Cond], s: &Subject) -> bool {
    conds.iter().all(|c| c.holds(s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    severity: Severity,
    description: String,
    on: On,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default, rename = "match")]
    when: Option<serde_norway::Mapping>,
    #[serde(default)]
    unless: Option<serde_norway::Mapping>,
}

fn yes() -> bool {
    true
}

/// Fields a condition can name; each knows which `on:` it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ProcessName,
    ProcessExe,
    ProcessCmdline,
    ProcessArgs,
    ProcessTty,
    ProcessFileless,
    ProcessSessionRoot,
    ProcessExeWritten,
    ProcessExeInContainer,
    ProcessUid,
    ParentName,
    AncestorName,
    ContainerId,
    K8sNamespace,
    K8sPod,
    K8sContainer,
    K8sWorkload,
    SessionKind,
    SessionAttributed,
    AttributionConfigured,
    UserName,
    UserGroups,
    ClientAddress,
    ConnectAddress,
    ConnectPort,
    ConnectScope,
    ConnectTransport,
    ConnectName,
    FileOp,
    FilePath,
    FileWrite,
    FileFlags,
    FileFailed,
}

const FIELDS: &[(&str, Field)] = &[
    ("process.name", Field::ProcessName),
    ("process.exe", Field::ProcessExe),
    ("process.cmdline", Field::ProcessCmdline),
    ("process.args", Field::ProcessArgs),
    ("process.tty", Field::ProcessTty),
    ("process.fileless", Field::ProcessFileless),
    ("process.session_root", Field::ProcessSessionRoot),
    ("process.exe_written_in_session", Field::ProcessExeWritten),
    ("process.exe_written_in_container", Field::ProcessExeInContainer),
    ("process.uid", Field::ProcessUid),
    ("parent.name", Field::ParentName),
    ("ancestor.name", Field::AncestorName),
    ("container.id", Field::ContainerId),
    ("k8s.namespace", Field::K8sNamespace),
    ("k8s.pod", Field::K8sPod),
    ("k8s.container", Field::K8sContainer),
    ("k8s.workload", Field::K8sWorkload),
    ("session.kind", Field::SessionKind),
    ("session.attributed", Field::SessionAttributed),
    ("session.attribution_configured", Field::AttributionConfigured),
    ("user.name", Field::UserName),
    ("user.groups", Field::UserGroups),
    ("client.address", Field::ClientAddress),
    ("connect.address", Field::ConnectAddress),
    ("connect.port", Field::ConnectPort),
    ("connect.scope", Field::ConnectScope),
    ("connect.transport", Field::ConnectTransport),
    ("connect.name", Field::ConnectName),
    ("file.op", Field::FileOp),
    ("file.path", Field::FilePath),
    ("file.write", Field::FileWrite),
    ("file.flags", Field::FileFlags),
    ("file.failed", Field::FileFailed),
];

impl Field {
    fn needs(self) -> Option<On> {
        use Field::*;
        match self {
            ConnectAddress | ConnectPort | ConnectScope | ConnectTransport | ConnectName => Some(On::Connect),
            FileOp | FilePath | FileWrite | FileFlags | FileFailed => Some(On::File),
            _ => None,
        }
    }
}

/// open(2) flags a rule can name.
const OPEN_FLAGS: &[(&str, u32)] =
    &[("wronly", 0o1), ("rdwr", 0o2), ("creat", 0o100), ("trunc", 0o1000), ("append", 0o2000)];

#[derive(Clone, Debug)]
enum Test {
    Str(StrMatcher),
    Bool(bool),
    Cidrs(Vec<Cidr>),
    Ports(Vec<(u16, u16)>),
    Uints(Vec<u32>),
    FileOps(Vec<FileOp>),
    Flags(u32),
}

#[derive(Clone, Debug)]
enum Cond {
    Field(Field, Test),
    Any(Vec<Vec<Cond>>),
}

impl Cond {
    fn holds(&self, s: &Subject) -> bool {
        match self {
            Cond::Any(blocks) => blocks.iter().any(|b| all(b, s)),
            Cond::Field(f, t) => field_holds(*f, t, s),
        }
    }
}

fn opt_str(m: &StrMatcher, v: Option<&str>) -> bool {
    v.is_some_and(|v| m.matches(v))
}

fn field_holds(f: Field, t: &Test, s: &Subject) -> bool {
    use Field as F;
    let info = s.session.info;
    let c = &info.container;
    let who = s.session.who;
    match (f, t) {
        (F::ProcessName, Test::Str(m)) => m.any(s.names().iter().map(|n| n.as_ref())),
        (F::ProcessExe, Test::Str(m)) => m.matches(&escaped(&s.process.image.exe_path)),
        (F::ProcessCmdline, Test::Str(m)) => m.matches(s.cmdline()),
        (F::ProcessArgs, Test::Str(m)) => s.process.image.argv.iter().skip(1).any(|a| m.matches(&escaped(a))),
        (F::ProcessTty, Test::Bool(b)) => s.process.image.tty == *b,
        (F::ProcessFileless, Test::Bool(b)) => s.process.image.fileless == *b,
        (F::ProcessSessionRoot, Test::Bool(b)) => s.process.session_root == *b,
        (F::ProcessExeWritten, Test::Bool(b)) => s.process.exe_written_in_session == *b,
        (F::ProcessExeInContainer, Test::Bool(b)) => s.process.exe_written_in_container == *b,
        (F::ProcessUid, Test::Uints(u)) => u.contains(&s.process.image.euid),
        (F::ParentName, Test::Str(m)) => s.process.ancestors.first().is_some_and(|a| m.matches(a)),
        (F::AncestorName, Test::Str(m)) => m.any(s.process.ancestors.iter().map(|a| a.as_ref())),
        (F::ContainerId, Test::Str(m)) => m.matches(&c.id),
        (F::K8sNamespace, Test::Str(m)) => opt_str(m, c.pod_namespace.as_deref()),
        (F::K8sPod, Test::Str(m)) => opt_str(m, c.pod_name.as_deref()),
        (F::K8sContainer, Test::Str(m)) => opt_str(m, c.container_name.as_deref()),
        (F::K8sWorkload, Test::Str(m)) => opt_str(m, c.workload_name.as_deref()),
        (F::SessionKind, Test::Str(m)) => m.matches(crate::spans::build::session_kind(info, who)),
        (F::SessionAttributed, Test::Bool(b)) => who.is_some() == *b,
        (F::AttributionConfigured, Test::Bool(b)) => s.session.attribution_configured == *b,
        (F::UserName, Test::Str(m)) => opt_str(m, who.and_then(|w| w.user_name.as_deref())),
        (F::UserGroups, Test::Str(m)) => who.is_some_and(|w| m.any(w.user_groups.iter().map(String::as_str))),
        (F::ClientAddress, Test::Cidrs(cs)) => who
            .and_then(|w| w.client_address.as_deref())
            .and_then(|a| a.parse().ok())
            .is_some_and(|ip| cs.iter().any(|c| c.contains(ip))),
        (F::ConnectAddress, Test::Cidrs(cs)) => match s.trigger {
            Trigger::Connect(_, ip, _) => cs.iter().any(|c| c.contains(normalize(ip))),
            _ => false,
        },
        (F::ConnectPort, Test::Ports(ps)) => match s.trigger {
            Trigger::Connect(c, ..) => ps.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c.port)),
            _ => false,
        },
        (F::ConnectScope, Test::Str(m)) => matches!(s.trigger, Trigger::Connect(_, _, scope) if m.matches(scope)),
        (F::ConnectTransport, Test::Str(m)) => {
            matches!(s.trigger, Trigger::Connect(c, ..) if m.matches(c.transport.as_str()))
        }
        // the name a DNS answer gave the address; a destination no answer named never matches
        (F::ConnectName, Test::Str(m)) => matches!(s.trigger, Trigger::Connect(c, ..) if opt_str(m, c.name.as_deref())),
        (F::FileOp, Test::FileOps(ops)) => matches!(s.trigger, Trigger::File(r) if ops.contains(&r.op)),
        // either name the operation touches: a rename onto, or a symlink at, the path counts
        (F::FilePath, Test::Str(m)) => match s.trigger {
            Trigger::File(r) => {
                m.matches(&escaped(&r.path)) || r.path2.as_ref().is_some_and(|p| m.matches(&escaped(p)))
            }
            _ => false,
        },
        (F::FileWrite, Test::Bool(b)) => matches!(s.trigger, Trigger::File(r) if r.write == *b),
        (F::FileFlags, Test::Flags(mask)) => {
            matches!(s.trigger, Trigger::File(r) if r.op == FileOp::Open && r.flags & mask != 0)
        }
        (F::FileFailed, Test::Bool(b)) => matches!(s.trigger, Trigger::File(r) if (r.result < 0) == *b),
        _ => false, // a field paired with the wrong test is refused at parse time
    }
}

fn file_op(s: &str) -> Result<FileOp, String> {
    Ok(match s {
        "open" => FileOp::Open,
        "unlink" => FileOp::Unlink,
        "rename" => FileOp::Rename,
        "truncate" => FileOp::Truncate,
        "chmod" => FileOp::Chmod,
        "link" => FileOp::Link,
        "symlink" => FileOp::Symlink,
        "io_uring" => FileOp::IoUring,
        o => {
            return Err(format!(
                "unknown file op {o:?} (open, unlink, rename, truncate, chmod, link, symlink, io_uring)"
            ))
        }
    })
}

fn test_for(f: Field, v: &Value) -> Result<Test, String> {
    use Field as F;
    Ok(match f {
        F::ProcessTty
        | F::ProcessFileless
        | F::ProcessSessionRoot
        | F::ProcessExeWritten
        | F::ProcessExeInContainer
        | F::SessionAttributed
        | F::AttributionConfigured
        | F::FileWrite
        | F::FileFailed => Test::Bool(matchers::boolean(v)?),
        F::ClientAddress | F::ConnectAddress => Test::Cidrs(matchers::cidrs(v)?),
        F::ConnectPort => Test::Ports(matchers::ports(v)?),
        F::ProcessUid => Test::Uints(matchers::uints(v)?),
        F::FileOp => Test::FileOps(matchers::scalars(v)?.iter().map(|s| file_op(s)).collect::<Result<_, _>>()?),
        F::FileFlags => {
            let mut mask = 0;
            for s in matchers::scalars(v)? {
                let bit = OPEN_FLAGS.iter().find(|(n, _)| *n == s).map(|(_, b)| *b);
                mask |= bit.ok_or_else(|| format!("unknown open flag {s:?} (wronly, rdwr, creat, trunc, append)"))?;
            }
            Test::Flags(mask)
        }
        _ => Test::Str(StrMatcher::parse(v)?),
    })
}

/// A condition block; errors name the offending key.
fn conds(m: &serde_norway::Mapping, on: On) -> Result<Vec<Cond>, (String, String)> {
    let mut out = Vec::new();
    for (k, v) in m {
        let key =
            k.as_str().ok_or_else(|| (String::new(), "condition names are words like process.name".to_string()))?;
        if key == "any" {
            let Value::Sequence(blocks) = v else {
                return Err((key.into(), "any: takes a list of condition blocks".into()));
            };
            let mut alts = Vec::new();
            for b in blocks {
                let Value::Mapping(b) = b else {
                    return Err((key.into(), "any: takes a list of condition blocks".into()));
                };
                alts.push(conds(b, on)?);
            }
            out.push(Cond::Any(alts));
            continue;
        }
        let Some((_, f)) = FIELDS.iter().find(|(n, _)| *n == key) else {
            return Err((
                key.into(),
                format!(
                    "unknown field {key:?}; known: {}",
                    FIELDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if let Some(need) = f.needs() {
            if need != on {
                return Err((
                    key.into(),
                    format!("{key} needs on: {}, this rule is on: {}", need.as_str(), on.as_str()),
                ));
            }
        }
        out.push(Cond::Field(*f, test_for(*f, v).map_err(|e| (key.to_string(), format!("{key}: {e}")))?));
    }
    Ok(out)
}

/// The line (1-based, within `chunk`) of the first line mentioning `needle` as a key.
fn line_of(chunk: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    chunk
        .lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(needle) && t[needle.len()..].trim_start().starts_with(':')
        })
        .map(|i| i + 1)
}

/// Parses a rule file: a YAML list whose items start with `- ` in the first column.
/// Returns the rules that parsed and an error for each that did not.
pub fn parse(text: &str, source: &str, ruleset: &str) -> (Vec<Arc<Rule>>, Vec<RuleError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let err =
        |line: usize, rule: Option<String>, message: String| RuleError { source: source.into(), line, rule, message };
    // (first line number, text) of each item
    let mut items: Vec<(usize, String)> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let n = i + 1;
        if l.starts_with("- ") || l == "-" {
            items.push((n, format!(" {}\n", &l[1..])));
        } else if let Some((_, body)) = items.last_mut() {
            body.push_str(l);
            body.push('\n');
        } else if !(l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---") {
            errors.push(err(n, None, "a rule file is a list: each rule starts with \"- \" in the first column".into()));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (start, body) in items {
        let raw: RawRule = match serde_norway::from_str(&body) {
            Ok(r) => r,
            Err(e) => {
                let line = e.location().map(|l| start + l.line() - 1).unwrap_or(start);
                let name = body
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("name:"))
                    .map(|n| n.trim().trim_matches(['"', '\'']).to_owned());
                errors.push(err(line, name, e.to_string()));
                continue;
            }
        };
        let at = |key: &str| line_of(&body, key).map(|l| start + l - 1).unwrap_or(start);
        if !names.insert(raw.name.clone()) {
            errors.push(err(
                start,
                Some(raw.name.clone()),
                "a rule with this name is defined earlier in the file".into(),
            ));
            continue;
        }
        let empty = serde_norway::Mapping::new();
        let when = conds(raw.when.as_ref().unwrap_or(&empty), raw.on);
        let unless = conds(raw.unless.as_ref().unwrap_or(&empty), raw.on);
        match (when, unless) {
            (Ok(when), Ok(unless)) => {
                if raw.enabled {
                    rules.push(Arc::new(Rule {
                        name: raw.name,
                        severity: raw.severity,
                        description: raw.description.trim().to_owned(),
                        category: raw.category,
                        reference: raw.reference,
                        ruleset: ruleset.into(),
                        on: raw.on,
                        line: start,
                        when,
                        unless,
                    }));
                }
            }
            (Err((key, msg)), _) | (_, Err((key, msg))) => errors.push(err(at(&key), Some(raw.name), msg)),
        }
    }
    (rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "# comment\n- name: a\n  severity: high\n  description: d\n  on: exec\n  match:\n    process.name: sh\n";

    #[test]
    fn a_list_of_rules_parses() {
        let (r, e) = parse(GOOD, "t.yaml", "t");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].name.as_str(), r[0].severity, r[0].on, r[0].line), ("a", Severity::High, On::Exec, 2));
    }

    #[test]
    fn a_broken_rule_is_reported_with_its_line_and_the_others_load() {
        let text = format!(
            "{GOOD}- name: bad-syntax\n  severity: high\n  description: [unclosed\n  on: exec\n\
             - name: bad-field\n  severity: low\n  description: d\n  on: exec\n  match:\n    process.colour: red\n\
             - name: wrong-on\n  severity: low\n  description: d\n  on: exec\n  match:\n    file.path: /x\n\
             - name: bad-severity\n  severity: urgent\n  description: d\n  on: exec\n\
             - name: last\n  severity: info\n  description: d\n  on: file\n  match:\n    file.op: [unlink]\n"
        );
        let (r, e) = parse(&text, "t.yaml", "t");
        let names: Vec<_> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "last"]);
        let lines: Vec<_> = e.iter().map(|e| (e.rule.clone().unwrap_or_default(), e.line)).collect();
        assert_eq!(
            lines,
            [("bad-syntax".into(), 10), ("bad-field".into(), 17), ("wrong-on".into(), 23), ("bad-severity".into(), 25)],
            "{e:#?}"
        );
        assert!(e[1].message.contains("process.colour"), "{}", e[1]);
        assert!(e[2].message.contains("needs on: file"), "{}", e[2]);
        assert!(e[0].to_string().starts_with("t.yaml:10: rule \"bad-syntax\": "), "{}", e[0]);
    }

    #[test]
    fn stray_text_duplicates_and_disabled_rules() {
        let text = format!(
            "rules:\n{GOOD}{GOOD}- name: off\n  severity: low\n  description: d\n  on: exec\n  enabled: false\n"
        );
        let (r, e) = parse(&text, "t.yaml", "t");
        assert_eq!(r.len(), 1, "the duplicate and the disabled one are left out");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].line, 1);
        assert!(e[1].message.contains("earlier"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (cond, on, needle) in [
            ("connect.port: http", "connect", "connect.port"),
            ("file.op: delete", "file", "delete"),
            ("file.flags: [sync]", "file", "sync"),
            ("process.tty: maybe", "exec", "true or false"),
            ("process.exe: {glob: '[x'}", "exec", "unclosed"),
            ("any: {process.tty: true}", "exec", "list of condition blocks"),
        ] {
            let text = format!("- name: x\n  severity: low\n  description: d\n  on: {on}\n  match:\n    {cond}\n");
            let (r, e) = parse(&text, "t", "t");
            assert!(r.is_empty() && e.len() == 1, "{cond}: {e:?}");
            assert!(e[0].message.contains(needle), "{cond}: {}", e[0]);
            assert_eq!(e[0].line, 6, "{cond}");
        }
    }
}
