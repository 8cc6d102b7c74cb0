//! Secrets leave nothing past the span stage's input: every update is redacted as it arrives
//! ([`redact_update`]) and every identity as the attributor hands it over ([`Sanitizing`]), so
//! the hold, the rules and every sink see only tokens (`crate::redact`).
//!
//! In: `SessionUpdate`s, identities. Out: the same with argv values and client strings
//! replaced by keyed tokens and capped. Dropped: nothing; each replacement is counted on its
//! image (`argv_redacted`) or identity.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::SystemTime;

use super::identity::Attributor;
use crate::model::SessionUpdate;

/// The redactor for this run: the configured key, or (none configured, or the key file gone
/// since the configuration was checked) a random one, said once in the log. Never the key.
pub fn build_redactor(cfg: &crate::redact::RedactConfig) -> crate::redact::Redactor {
    use crate::redact::{KeySource, Redactor};
    let r = Redactor::new(cfg).unwrap_or_else(|e| {
        tracing::error!("{e}: secrets are redacted under a random key for this run instead");
        Redactor::random()
    });
    match r.source {
        KeySource::Random => tracing::warn!(
            "spans.redact: no key configured, secrets are redacted under a random key for this run (one secret gives one token only within this run; set spans.redact.key_file to the cluster's key)"
        ),
        KeySource::Config | KeySource::File => {
            tracing::info!(source = ?r.source, "spans.redact: secrets are redacted under the configured key")
        }
    }
    r
}

/// Replaces the secrets in the argv of every process record of an update, counting them on
/// the image. The root's `root_argv` stays as the kernel saw it: it is only compared with the
/// API request's command (itself redacted after the match) and never written.
pub fn redact_update(r: &crate::redact::Redactor, cache: &mut ArgvCache, u: &mut SessionUpdate) {
    let recs: &mut [crate::model::ProcessRecord] = match u {
        SessionUpdate::Started(_) => return,
        SessionUpdate::ProcessEnded(_, rec) | SessionUpdate::Live(_, rec, _) => std::slice::from_mut(rec),
        SessionUpdate::Ended(_, recs) => recs,
        SessionUpdate::Transcript(_, chunk) => {
            // a line is redacted as one argv element: the flag rules on its words, then the
            // text patterns (`export DB_PASSWORD=x`, `mysql -pX`, a Bearer token)
            for l in &mut chunk.lines {
                l.redacted += r.argv(std::slice::from_mut(&mut l.text));
            }
            return;
        }
    };
    for rec in recs {
        for img in &mut rec.images {
            img.argv_redacted += cache.argv(r, &mut img.argv);
        }
    }
}

/// Argvs the cache keeps at most; when full it starts over (cheap, and bounded).
const CACHE_ENTRIES: usize = 1024;
/// Argvs longer than this (all arguments' bytes) are redacted every time, not kept.
const CACHE_ARGV_BYTES: usize = 1024;

/// An argv as the kernel gave it, shared with the image it came from (`ImageRecord::argv`).
type Argv = Arc<[Vec<u8>]>;
/// A redacted argv and how many values it replaced.
type Redacted = (Argv, u32);

/// Recent argvs compared before the map is asked: the same command said live and again when
/// it ends, or repeated by a loop, is found by comparing lengths and bytes, without hashing it.
const RECENT: usize = 4;

/// Redaction results by argv: the redactor is a pure function of the argv (under one key), and
/// a busy session runs the same few commands thousands of times, each said live and again when
/// it ends (issue 15: 20 000 execs of one command were redacted ~60 000 times, 3% of the
/// agent's CPU). Every image is still redacted and counted; only the work is shared. Bounded:
/// `CACHE_ENTRIES` argvs of at most `CACHE_ARGV_BYTES` each (about 2 MiB at worst), plus
/// `RECENT` of them again. The map keeps std's keyed SipHash: its keys are argvs, which
/// whoever runs commands in a container chooses (no colliding keys made offline); a hit among
/// the recent ones costs a comparison instead of hashing every byte of the argv (SipHash of
/// the argv was ~2% of the agent's samples in the session storm; BENCHMARKS.md, hot16). An
/// argv missing from the map is hashed once for both the lookup and the insertion (a table
/// hashed by std's `RandomState`, whose `HashMap` hashed it twice), and one too long to be kept
/// is not hashed at all.
///
/// Only argvs with nothing to redact are kept in the map; one with a secret is remembered
/// among the `RECENT` ones alone (with its redacted copy), so a secret leaves the cache after
/// the next few commands instead of staying until a thousand other argvs have come (the map
/// held every argv, secrets included, up to `CACHE_ENTRIES` of them). The price: a loop
/// alternating more than `RECENT` distinct commands that carry secrets redacts each of them
/// every time (what any argv the cache has not seen costs: the redactor's search and one
/// HMAC per secret); one command with a secret in a loop (`mysql -pX ...` run again and
/// again, said live and again when it ends) is still found among the recent ones. And the
/// argvs with secrets no longer fill the map, nor clear it, in a storm of new secrets
/// (issue 15's redaction rows: every argv is new there).
#[derive(Debug, Default)]
pub struct ArgvCache {
    /// Argvs with nothing to redact, hashed by `state`.
    map: hashbrown::HashTable<Argv>,
    state: std::hash::RandomState,
    /// The last argvs looked up, most recent first, with what they become.
    recent: Vec<(Argv, Option<Redacted>)>,
}

/// Applies a remembered result to `argv`; the count of values it replaced. An argv with
/// nothing to redact is left as it is (still shared); a redacted one shares the result.
fn apply(hit: &Option<Redacted>, argv: &mut Argv) -> u32 {
    match hit {
        None => 0,
        Some((red, n)) => {
            *argv = red.clone();
            *n
        }
    }
}

impl ArgvCache {
    /// [`crate::redact::Redactor::argv`], remembered: replaces `argv` by its redaction when
    /// that changes something (copy on write: most argvs never change), returns the count.
    pub fn argv(&mut self, r: &crate::redact::Redactor, argv: &mut Argv) -> u32 {
        if let Some(i) = self.recent.iter().position(|(a, _)| a == argv) {
            self.recent[..=i].rotate_right(1);
            return apply(&self.recent[0].1, argv);
        }
        if argv.iter().map(Vec::len).sum::<usize>() > CACHE_ARGV_BYTES {
            // never kept: redacted every time (copied only when something is replaced)
            let result: Option<Redacted> = r.redacted(argv).map(|(red, n)| (red.into(), n));
            return apply(&result, argv);
        }
        let hash = self.state.hash_one(&argv[..]);
        let result = match self.map.find(hash, |a| a == argv) {
            Some(_) => None,
            None => {
                // copied only when something is replaced
                let result: Option<Redacted> = r.redacted(argv).map(|(red, n)| (red.into(), n));
                // only an argv with nothing to redact is kept (see the type's comment)
                if result.is_none() {
                    if self.map.len() >= CACHE_ENTRIES {
                        self.map.clear();
                    }
                    let state = &self.state;
                    self.map.insert_unique(hash, argv.clone(), |a| state.hash_one(&a[..]));
                }
                result
            }
        };
        if self.recent.len() >= RECENT {
            self.recent.pop();
        }
        let key = argv.clone();
        let n = apply(&result, argv);
        self.recent.insert(0, (key, result));
        n
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The attributor as the span stage sees it: every identity redacted and capped
/// ([`super::SessionIdentity::sanitize`]) before any span, rule or log reads it.
pub struct Sanitizing {
    pub inner: Arc<dyn Attributor>,
    pub redactor: Arc<crate::redact::Redactor>,
    pub cfg: super::SpansConfig,
}

impl Sanitizing {
    fn clean(&self, mut w: super::SessionIdentity) -> super::SessionIdentity {
        w.sanitize(&self.redactor, &self.cfg);
        w
    }
}

impl Attributor for Sanitizing {
    fn attribute(&self, info: &crate::model::SessionInfo) -> Option<super::SessionIdentity> {
        self.inner.attribute(info).map(|w| self.clean(w))
    }
    fn unmatched_requests(&self, now: SystemTime) -> Vec<crate::attribute::Attribution> {
        self.inner.unmatched_requests(now)
    }
    fn attribute_late(
        &self,
        info: &crate::model::SessionInfo,
        settled: std::time::Duration,
    ) -> Option<super::SessionIdentity> {
        self.inner.attribute_late(info, settled).map(|w| self.clean(w))
    }
    fn revision(&self) -> Option<u64> {
        self.inner.revision()
    }
    fn identity_of(&self, a: &crate::attribute::Attribution) -> super::SessionIdentity {
        self.clean(super::SessionIdentity::from(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Redactor;

    fn argv(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn an_argv_with_nothing_to_redact_stays_shared_and_a_redacted_one_is_replaced() {
        let r = Redactor::random();
        let mut cache = ArgvCache::default();
        for round in 0..2 {
            let plain: Argv = argv(&["/bin/true", "storm-arg"]).into();
            let mut shared = plain.clone();
            assert_eq!(cache.argv(&r, &mut shared), 0);
            assert!(Arc::ptr_eq(&shared, &plain), "round {round}: an unchanged argv is not copied");
            let secret: Argv = argv(&["app", "--token", "hunter2"]).into();
            let mut redacted = secret.clone();
            assert!(cache.argv(&r, &mut redacted) > 0);
            assert_eq!(&secret[..], &argv(&["app", "--token", "hunter2"])[..], "the image's original is untouched");
            assert_ne!(redacted, secret, "round {round}");
        }
    }

    #[test]
    fn a_remembered_argv_is_redacted_and_counted_as_the_redactor_would() {
        let r = Redactor::random();
        let mut cache = ArgvCache::default();
        let inputs = [
            argv(&["curl", "-H", "Authorization: Bearer abc.def", "https://u:pw@x.test/"]),
            argv(&["app", "--token", "hunter2"]),
            argv(&["/bin/true", "storm-arg"]),
        ];
        for round in 0..3 {
            for a in &inputs {
                let (mut plain, mut cached) = (a.clone(), Argv::from(a.as_slice()));
                let n = r.argv(&mut plain);
                assert_eq!(cache.argv(&r, &mut cached), n, "round {round}: {a:?}");
                assert_eq!(&cached[..], &plain[..], "round {round}");
            }
        }
        assert!(r.argv(&mut inputs[1].clone()) > 0, "the fixture has a secret to redact");
        assert_eq!(cache.len(), 1, "only the argv with nothing to redact is kept in the map");
    }

    #[test]
    fn the_recent_argvs_and_the_map_agree_past_the_recent_window() {
        let r = Redactor::random();
        let mut cache = ArgvCache::default();
        // more distinct argvs than the recent window, with and without secrets, in an order
        // that makes each lookup hit the recent ones, the map, or neither
        let inputs: Vec<Vec<Vec<u8>>> =
            (0..RECENT + 3)
                .map(|i| {
                    if i % 2 == 0 {
                        argv(&["app", "--token", &format!("s{i}")])
                    } else {
                        argv(&["ls", &i.to_string()])
                    }
                })
                .collect();
        let n = inputs.len();
        let order = (0..4).flat_map(|round| (0..n).map(move |i| (i * (round + 1)) % n));
        for i in order {
            let (mut plain, mut cached) = (inputs[i].clone(), Argv::from(inputs[i].as_slice()));
            let n = r.argv(&mut plain);
            assert_eq!(cache.argv(&r, &mut cached), n, "{:?}", inputs[i]);
            assert_eq!(&cached[..], &plain[..]);
            assert!(cache.recent.len() <= RECENT);
        }
        assert_eq!(cache.len(), inputs.iter().filter(|a| r.redacted(a).is_none()).count());
    }

    #[test]
    fn an_argv_with_a_secret_leaves_the_cache_after_the_recent_ones() {
        let r = Redactor::random();
        let mut cache = ArgvCache::default();
        let secret: Argv = argv(&["mysql", "-pS3cret", "db"]).into();
        let mut a = secret.clone();
        assert_eq!(cache.argv(&r, &mut a), 1);
        // again (said live, then ended): found among the recent ones, the same result
        let mut again = secret.clone();
        assert_eq!(cache.argv(&r, &mut again), 1);
        assert!(Arc::ptr_eq(&a, &again), "the recent result is shared");
        assert_eq!(cache.len(), 0, "not kept in the map");
        for i in 0..RECENT {
            cache.argv(&r, &mut argv(&["ls", &i.to_string()]).into());
        }
        let holds = |c: &ArgvCache| {
            c.recent.iter().any(|(k, _)| k[..] == secret[..]) || c.map.iter().any(|k| k[..] == secret[..])
        };
        assert!(!holds(&cache), "the raw argv with its secret is gone from the cache");
        let mut later = secret.clone();
        assert_eq!(cache.argv(&r, &mut later), 1, "redacted again, the same");
        assert_eq!(later, a);
    }

    #[test]
    fn the_cache_stays_bounded_and_long_argvs_are_not_kept() {
        let r = Redactor::random();
        let mut cache = ArgvCache::default();
        for i in 0..CACHE_ENTRIES * 2 + 5 {
            cache.argv(&r, &mut argv(&["cmd", &i.to_string()]).into());
            assert!(cache.len() <= CACHE_ENTRIES);
        }
        let before = cache.len();
        let long = "x".repeat(CACHE_ARGV_BYTES + 1);
        let mut a: Argv = argv(&["echo", &long, "--token=s3cret"]).into();
        let n = cache.argv(&r, &mut a);
        let mut plain = argv(&["echo", &long, "--token=s3cret"]);
        assert_eq!(n, r.argv(&mut plain));
        assert_eq!(&a[..], &plain[..], "a long argv is redacted too");
        assert_eq!(cache.len(), before, "a long argv is redacted, not kept");
    }
}
