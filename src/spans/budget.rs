//! Bounds on what one session can send, so that Tempo's limits (2048 bytes per attribute, 5 MB
//! per trace) are enforced here, visibly, rather than silently by the backend.
//!
//! In: argv bytes, span keys. Out: capped argv text with a "cut" flag; fold decisions; span
//! cap decisions. What is cut, folded or capped is counted and marked on the session's root.

use std::sync::Arc;

use opentelemetry::trace::SpanId;
use sha2::{Digest, Sha256};

use crate::capture::event::ExitStatus;
use crate::hashing::FastMap;
use crate::lru::SmallLru;
use crate::text::escape;

/// argv as text, at most `max_bytes` in total (escaped UTF-8 bytes). When the first argument
/// alone is too long it is cut at a character boundary; later arguments are kept whole or
/// dropped. Returns whether anything was cut.
pub fn cap_argv(argv: &[Vec<u8>], max_bytes: usize) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(argv.len());
    let mut used = 0usize;
    for a in argv {
        let s = escape(a);
        if used + s.len() <= max_bytes {
            used += s.len();
            out.push(s);
            continue;
        }
        if out.is_empty() {
            let mut end = max_bytes.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.push(s[..end].to_owned());
        }
        return (out, true);
    }
    (out, false)
}

/// Short digest of what makes two spans "the same" for folding.
pub fn fold_digest(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = FoldHasher::new();
    for p in parts {
        h.part(p);
    }
    h.finish()
}

/// [`fold_digest`] fed part by part (the same bytes: each part's length, then the part), so a
/// caller need not gather its parts in a list first.
pub struct FoldHasher(Sha256);

impl Default for FoldHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl FoldHasher {
    pub fn new() -> Self {
        FoldHasher(Sha256::new())
    }

    pub fn part(&mut self, p: &[u8]) {
        self.0.update((p.len() as u32).to_le_bytes());
        self.0.update(p);
    }

    /// A part that is `v`'s `Debug` text, written on the stack when it is short (an exit
    /// status: it was a `format!` per ended process).
    pub fn part_debug(&mut self, v: &impl std::fmt::Debug) {
        use std::fmt::Write;
        let mut buf = StackText { buf: [0; 64], len: 0 };
        if write!(buf, "{v:?}").is_ok() {
            self.part(&buf.buf[..buf.len]);
        } else {
            self.part(format!("{v:?}").as_bytes());
        }
    }

    /// A part that is an exit status's `Debug` text (`None`, `Some(Code(0))`, ...): the bytes
    /// `format!("{exit:?}")` gives, an exit code written without the formatting machinery
    /// (its `Debug` write was 10 of the span stage's 144 samples in the storm, once per
    /// ended process); a signal takes [`Self::part_debug`].
    pub fn part_exit(&mut self, exit: &Option<ExitStatus>) {
        match exit {
            None => self.part(b"None"),
            Some(ExitStatus::Code(c)) => {
                // "Some(Code(" + sign and up to 10 digits + "))"
                let mut b = [0u8; 24];
                b[..10].copy_from_slice(b"Some(Code(");
                let mut n = 10;
                if *c < 0 {
                    b[n] = b'-';
                    n += 1;
                }
                let (mut v, mut digits, mut d) = (c.unsigned_abs(), [0u8; 10], 0);
                loop {
                    digits[d] = b'0' + (v % 10) as u8;
                    d += 1;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                for &x in digits[..d].iter().rev() {
                    b[n] = x;
                    n += 1;
                }
                b[n..n + 2].copy_from_slice(b"))");
                self.part(&b[..n + 2]);
            }
            Some(_) => self.part_debug(exit),
        }
    }

    pub fn finish(self) -> [u8; 8] {
        let d = self.0.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }
}

/// The fold digest of one image: each argument, the executable's path, then its process's exit
/// status when it is the last image (`exit`), else an empty part.
///
/// A repeat of one of the last few images digested on this thread (equal argv, path and exit)
/// takes its digest from them instead of hashing again: in a storm of one command every ended
/// process's two images (the shell's it was forked with, the command's) were three SHA-256
/// blocks per exec (issue 15, exec20). The digest is a function of those bytes alone, so the
/// memo changes no result; it holds the last [`IMAGE_MEMO`] argv and paths (shared, not
/// copied) until they are replaced.
pub fn image_digest(argv: &Arc<[Vec<u8>]>, exe_path: &Arc<[u8]>, exit: Option<&Option<ExitStatus>>) -> [u8; 8] {
    let exit = exit.copied();
    IMAGE_DIGESTS.with(|m| {
        let mut m = m.borrow_mut();
        let same = |e: &ImageDigest| {
            e.exit == exit
                && (Arc::ptr_eq(&e.exe_path, exe_path) || e.exe_path == *exe_path)
                && (Arc::ptr_eq(&e.argv, argv) || e.argv == *argv)
        };
        if let Some(e) = m.entries.iter().flatten().find(|e| same(e)) {
            return e.digest;
        }
        let mut h = FoldHasher::new();
        for a in argv.iter() {
            h.part(a);
        }
        h.part(exe_path);
        match &exit {
            Some(x) => h.part_exit(x),
            None => h.part(b""),
        }
        let digest = h.finish();
        let at = m.next;
        m.entries[at] = Some(ImageDigest { argv: argv.clone(), exe_path: exe_path.clone(), exit, digest });
        m.next = (at + 1) % IMAGE_MEMO;
        digest
    })
}

/// Images whose digests a thread remembers ([`image_digest`]).
pub const IMAGE_MEMO: usize = 4;

struct ImageDigest {
    argv: Arc<[Vec<u8>]>,
    exe_path: Arc<[u8]>,
    /// Some: the last image, with its process's exit status.
    exit: Option<Option<ExitStatus>>,
    digest: [u8; 8],
}

#[derive(Default)]
struct ImageDigests {
    entries: [Option<ImageDigest>; IMAGE_MEMO],
    /// Replaced next.
    next: usize,
}

thread_local! {
    static IMAGE_DIGESTS: std::cell::RefCell<ImageDigests> = std::cell::RefCell::new(ImageDigests::default());
}

/// Text written into a fixed buffer; an error once it would not fit.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// One group of identical spans past the fold threshold.
#[derive(Clone, Debug)]
pub struct Fold<T> {
    pub id: SpanId,
    pub count: u64,
    pub first_start_ns: u64,
    pub last_end_ns: u64,
    /// What the fold span is built from (the first folded item).
    pub template: T,
}

/// Distinct (parent, command) pairs a session's fold table remembers: the least recently seen
/// is forgotten first (a command seen again after that may keep `after` more spans, under the
/// session's span cap), so a session of a hundred thousand distinct commands stays bounded.
pub const MAX_FOLD_KEYS: usize = 16_384;
/// Fold spans a session holds until its end: past this, a new group of repeats is not folded
/// but capped (counted on the root as `podtrail.session.spans_capped`).
pub const MAX_FOLDS: usize = 1_024;

/// Per-session fold state: the first `after` identical spans under one parent pass; the rest
/// join one fold span per (parent, digest).
#[derive(Debug)]
pub struct FoldTable<T> {
    after: u32,
    /// Keyed by span id and SHA-256 digest: values nobody picks, hashed with foldhash
    /// ([`crate::hashing::SessionState`]: every open session holds one).
    seen: SmallLru<(SpanId, [u8; 8]), u32, crate::hashing::SessionState>,
    /// Made at the first fold: most sessions never repeat anything `after` times, and an
    /// empty map and list inline were 56 bytes of every open session (issue 15).
    folded: Option<Box<Folds<T>>>,
}

/// The fold spans of a [`FoldTable`], and the order they began in.
#[derive(Debug)]
struct Folds<T> {
    folds: FastMap<(SpanId, [u8; 8]), Fold<T>>,
    order: Vec<(SpanId, [u8; 8])>,
}

pub enum FoldDecision {
    /// Export it as its own span.
    Keep,
    /// Folded into the span with this id (use it as the parent of its children).
    Folded(SpanId),
    /// A repeat past the threshold with no room for another fold span: not exported.
    Capped,
}

impl<T> FoldTable<T> {
    pub fn new(after: u32) -> Self {
        FoldTable { after, seen: SmallLru::with_hasher(MAX_FOLD_KEYS), folded: None }
    }

    pub fn offer(
        &mut self,
        parent: SpanId,
        digest: [u8; 8],
        start_ns: u64,
        end_ns: u64,
        template: impl FnOnce() -> T,
    ) -> FoldDecision {
        let key = (parent, digest);
        let n = self.seen.get_or_insert_with(key, || 0);
        if *n < self.after {
            *n += 1;
            return FoldDecision::Keep;
        }
        let f = self.folded.get_or_insert_with(|| Box::new(Folds { folds: FastMap::default(), order: Vec::new() }));
        if !f.folds.contains_key(&key) && f.folds.len() >= MAX_FOLDS {
            return FoldDecision::Capped;
        }
        let fold = f.folds.entry(key).or_insert_with(|| {
            f.order.push(key);
            Fold {
                id: super::ids::fold_span_id(parent, &digest),
                count: 0,
                first_start_ns: start_ns,
                last_end_ns: end_ns,
                template: template(),
            }
        });
        fold.count += 1;
        fold.first_start_ns = fold.first_start_ns.min(start_ns);
        fold.last_end_ns = fold.last_end_ns.max(end_ns);
        FoldDecision::Folded(fold.id)
    }

    /// Items folded so far (not counting the kept ones).
    pub fn folded(&self) -> u64 {
        self.folded.iter().flat_map(|f| f.folds.values()).map(|f| f.count).sum()
    }

    /// The folds, in the order they began, with their parent span.
    pub fn drain(&mut self) -> Vec<(SpanId, Fold<T>)> {
        let Some(mut f) = self.folded.take() else { return Vec::new() };
        let order = std::mem::take(&mut f.order);
        order.into_iter().filter_map(|k| f.folds.remove(&k).map(|fold| (k.0, fold))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_cut_at_argument_boundaries_and_marked() {
        let argv: Vec<Vec<u8>> = vec![b"curl".to_vec(), b"-s".to_vec(), vec![b'x'; 100]];
        assert_eq!(cap_argv(&argv, 1024), (vec!["curl".into(), "-s".into(), "x".repeat(100)], false));
        assert_eq!(cap_argv(&argv, 10), (vec!["curl".into(), "-s".into()], true));
        let (first, cut) = cap_argv(&[vec![b'y'; 50]], 8);
        assert_eq!((first, cut), (vec!["y".repeat(8)], true));
    }

    #[test]
    fn a_multibyte_first_argument_is_cut_on_a_character_boundary() {
        let (out, cut) = cap_argv(&["ééé".as_bytes().to_vec()], 3);
        assert!(cut);
        assert_eq!(out, vec!["é".to_string()]);
    }

    #[test]
    fn the_hasher_digests_the_same_bytes_as_the_list() {
        let exit = Some(crate::capture::event::ExitStatus::Code(3));
        let mut h = FoldHasher::new();
        h.part(b"true");
        h.part(b"/bin/true");
        h.part_debug(&exit);
        let listed = fold_digest(&[b"true", b"/bin/true", format!("{exit:?}").as_bytes()]);
        assert_eq!(h.finish(), listed);
        // a Debug text longer than the stack buffer takes the heap, same bytes
        let long = "x".repeat(100);
        let mut h = FoldHasher::new();
        h.part_debug(&long);
        assert_eq!(h.finish(), fold_digest(&[format!("{long:?}").as_bytes()]));
        assert_ne!(fold_digest(&[b"ab"]), fold_digest(&[b"a", b"b"]), "parts are length-prefixed");
    }

    #[test]
    fn an_exit_status_is_digested_as_its_debug_text() {
        let signal = ExitStatus::Signal { signal: 9, core_dumped: true };
        let codes = [0, 1, 7, 10, 255, -1, -10, i32::MAX, i32::MIN].map(|c| Some(ExitStatus::Code(c)));
        for exit in codes.into_iter().chain([None, Some(signal)]) {
            let mut h = FoldHasher::new();
            h.part_exit(&exit);
            assert_eq!(h.finish(), fold_digest(&[format!("{exit:?}").as_bytes()]), "{exit:?}");
        }
    }

    #[test]
    fn repeats_past_the_threshold_fold_into_one_span() {
        let mut t: FoldTable<u32> = FoldTable::new(2);
        let p = SpanId::from_bytes([1; 8]);
        let d = fold_digest(&[b"true"]);
        assert!(matches!(t.offer(p, d, 10, 11, || 0), FoldDecision::Keep));
        assert!(matches!(t.offer(p, d, 20, 21, || 0), FoldDecision::Keep));
        let FoldDecision::Folded(a) = t.offer(p, d, 30, 31, || 3) else { panic!("not folded") };
        let FoldDecision::Folded(b) = t.offer(p, d, 40, 41, || 4) else { panic!("not folded") };
        assert_eq!(a, b);
        // Another parent starts its own count.
        assert!(matches!(t.offer(SpanId::from_bytes([2; 8]), d, 50, 51, || 0), FoldDecision::Keep));
        assert_eq!(t.folded(), 2);
        let folds = t.drain();
        assert_eq!(folds.len(), 1);
        let f = &folds[0].1;
        assert_eq!((f.count, f.first_start_ns, f.last_end_ns, f.template), (2, 30, 41, 3));
    }

    #[test]
    fn the_table_stays_bounded_whatever_the_session_runs() {
        let mut t: FoldTable<u32> = FoldTable::new(1);
        let p = SpanId::from_bytes([1; 8]);
        let mut capped = 0;
        for i in 0..(MAX_FOLD_KEYS as u32 * 2) {
            let d = fold_digest(&[&i.to_le_bytes()]);
            for _ in 0..2 {
                if matches!(t.offer(p, d, 1, 2, || 0), FoldDecision::Capped) {
                    capped += 1;
                }
            }
        }
        assert!(t.seen.len() <= MAX_FOLD_KEYS);
        assert_eq!(t.folded.as_ref().map_or(0, |f| f.folds.len()), MAX_FOLDS);
        assert_eq!(t.folded() + capped, MAX_FOLD_KEYS as u64 * 2, "every repeat folded or capped");
    }
}
