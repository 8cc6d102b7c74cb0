//! Where rules come from: the shipped rules (`rules/default.yaml`, embedded), then the
//! configured file; reloaded when the file's modification time changes (polled).
//!
//! In: [`RulesConfig`]. Out: the current rule set, and the [`RuleError`]s of each load. A rule
//! that does not parse is left out and reported with its line; the others keep working. A
//! file that cannot be read at start-up stops the start; later, the last good rules stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::lang::{self, Rule, RuleError};
use super::stage::RuleSet;

/// The shipped rules.
pub const DEFAULT_RULES: &str = include_str!("../../rules/default.yaml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Evaluate rules at all.
    pub enabled: bool,
    /// Load the shipped rules (rules/default.yaml, built in).
    pub defaults: bool,
    /// A rule file of your own (same language, docs/rules.md); "" for none. Its rules are
    /// added to the shipped ones; a rule with the name of a shipped one replaces it.
    pub file: PathBuf,
    /// Names of shipped rules to leave out.
    pub disable: Vec<String>,
    /// Seconds between checks of the file's modification time (0: never reload).
    pub reload_s: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig { enabled: true, defaults: true, file: PathBuf::new(), disable: Vec::new(), reload_s: 2 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("rules.file {path}: {source} (fix the path, or set rules.file = \"\" to use only the shipped rules)")]
pub struct RulesFileError {
    pub path: String,
    pub source: std::io::Error,
}

pub struct RuleSource {
    cfg: RulesConfig,
    current: RuleSet,
    mtime: Option<SystemTime>,
    next_check: Instant,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl RuleSource {
    /// Loads the rules; errors of single rules are returned, not fatal.
    pub fn load(cfg: RulesConfig) -> Result<(RuleSource, Vec<RuleError>), RulesFileError> {
        let file = if cfg.file.as_os_str().is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&cfg.file)
                .map_err(|source| RulesFileError { path: cfg.file.display().to_string(), source })?;
            Some(text)
        };
        let mtime = file.as_ref().and_then(|_| modified(&cfg.file));
        let (rules, errors) = compose(&cfg, file.as_deref());
        let next_check = Instant::now() + Duration::from_secs(cfg.reload_s);
        Ok((RuleSource { cfg, current: Arc::new(rules), mtime, next_check }, errors))
    }

    /// No rules at all.
    pub fn none() -> RuleSource {
        let cfg = RulesConfig { enabled: false, ..RulesConfig::default() };
        RuleSource { cfg, current: Arc::new(Vec::new()), mtime: None, next_check: Instant::now() }
    }

    pub fn rules(&self) -> RuleSet {
        self.current.clone()
    }

    /// Reloads when the file changed; returns the new load's errors when it did.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<RuleError>> {
        if !self.cfg.enabled || self.cfg.reload_s == 0 || self.cfg.file.as_os_str().is_empty() || now < self.next_check
        {
            return None;
        }
        self.next_check = now + Duration::from_secs(self.cfg.reload_s);
        let m = modified(&self.cfg.file);
        if m == self.mtime {
            return None;
        }
        let text = match std::fs::read_to_string(&self.cfg.file) {
            Ok(t) => t,
            Err(e) => {
                self.mtime = m;
                tracing::warn!(file = %self.cfg.file.display(), "cannot reread the rule file, keeping the rules loaded before: {e}");
                return None;
            }
        };
        self.mtime = m;
        let (rules, errors) = compose(&self.cfg, Some(&text));
        tracing::info!(file = %self.cfg.file.display(), rules = rules.len(), errors = errors.len(), "rules reloaded");
        self.current = Arc::new(rules);
        Some(errors)
    }
}

/// Shipped rules (minus the disabled ones and those the file redefines), then the file's.
fn compose(cfg: &RulesConfig, file: Option<&str>) -> (Vec<Arc<Rule>>, Vec<RuleError>) {
    if !cfg.enabled {
        return (Vec::new(), Vec::new());
    }
    let (mut own, mut errors) = match file {
        Some(t) => {
            let name = cfg.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "rules".into());
            lang::parse(t, &cfg.file.display().to_string(), &name)
        }
        None => (Vec::new(), Vec::new()),
    };
    let mut out = Vec::new();
    if cfg.defaults {
        let (shipped, e) = lang::parse(DEFAULT_RULES, "rules/default.yaml", "podtrail-default");
        errors.extend(e);
        out.extend(
            shipped.into_iter().filter(|r| !cfg.disable.contains(&r.name) && !own.iter().any(|o| o.name == r.name)),
        );
    }
    out.append(&mut own);
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_rules_all_parse() {
        let (r, e) = lang::parse(DEFAULT_RULES, "rules/default.yaml", "podtrail-default");
        assert!(e.is_empty(), "{}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"));
        assert!(r.len() >= 9, "{} rules", r.len());
        for rule in &r {
            assert!(!rule.description.is_empty() && rule.category.is_some(), "{}", rule.name);
        }
    }

    #[test]
    fn file_rules_add_to_replace_and_disable_shipped_ones_and_reload_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.yaml");
        let rule = |name: &str, sev: &str| format!("- name: {name}\n  severity: {sev}\n  description: d\n  on: exec\n");
        std::fs::write(&path, rule("Packet capture", "critical") + &rule("mine", "low")).unwrap();
        let cfg = RulesConfig {
            file: path.clone(),
            disable: vec!["Fileless execution".into()],
            reload_s: 1,
            ..Default::default()
        };
        let (mut src, errors) = RuleSource::load(cfg).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let rules = src.rules();
        let pc: Vec<_> = rules.iter().filter(|r| r.name == "Packet capture").collect();
        assert_eq!(pc.len(), 1);
        assert_eq!(pc[0].ruleset, "mine", "the file's rule replaced the shipped one");
        assert!(!rules.iter().any(|r| r.name == "Fileless execution"));
        assert!(rules.iter().any(|r| r.name == "mine"));

        // a change: one good rule and one broken one
        std::fs::write(
            &path,
            rule("mine2", "low") + "- name: broken\n  severity: nope\n  description: d\n  on: exec\n",
        )
        .unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert!(src.poll(Instant::now()).is_none(), "not due yet");
        let errors = src.poll(Instant::now() + Duration::from_secs(2)).expect("reloaded");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 6);
        assert!(src.rules().iter().any(|r| r.name == "mine2") && !src.rules().iter().any(|r| r.name == "mine"));
        assert!(src.poll(Instant::now() + Duration::from_secs(4)).is_none(), "unchanged: no reload");

        // the file goes away: the last rules stay
        std::fs::remove_file(&path).unwrap();
        assert!(src.poll(Instant::now() + Duration::from_secs(6)).is_none());
        assert!(src.rules().iter().any(|r| r.name == "mine2"));
    }

    #[test]
    fn an_unreadable_file_stops_the_start_with_its_path() {
        let cfg = RulesConfig { file: "/nonexistent/rules.yaml".into(), ..Default::default() };
        let e = RuleSource::load(cfg).err().expect("refused").to_string();
        assert!(e.contains("/nonexistent/rules.yaml") && e.contains("rules.file"), "{e}");
    }
}
