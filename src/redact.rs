//! Secrets stay out of the trail: argv, the requested command of an API request and the URLs
//! inside them are redacted once, where session updates and identities enter the span stage
//! (`crate::spans::redaction`), so every sink (OTLP, OTLP/JSON file, console, the rules'
//! alerts, podtrail's own logs of those spans) only ever sees the redacted form.
//!
//! In: argv (bytes, maybe not UTF-8) and strings from clients. Out: the same with each secret
//! value replaced by a keyed token `<redacted:0123456789>` (HMAC-SHA256 of the value under the
//! cluster's key, first 5 bytes in hex), and how many values were replaced, which the span
//! builder puts on the span (`podtrail.process.args_redacted`). The same secret gives the same
//! token under one key, so two sessions using one leaked credential can still be found; without
//! the key a token says nothing about the value.
//!
//! What is recognised (built in, always on):
//! - the value after a password or token flag: `--password X`, `--token X`, `--api-key X`,
//!   `--client-secret X`, `-storepass X` (a separate word), and `--password=X` (any
//!   `name=value` whose name says password, passwd, secret, token, api key, access key,
//!   private key, credential, `_pwd`);
//! - `-pSECRET` of MySQL/MariaDB clients (their `-p` takes the password attached), `sshpass -p`,
//!   `redis-cli -a X`, curl's `-u user:password`;
//! - `Authorization:` (and `Proxy-Authorization`, `X-Api-Key`, `X-Auth-Token`, `Private-Token`,
//!   `Cookie`) header values, and the token after `Bearer`, also inside one argv element
//!   (`-H 'Authorization: Bearer abc'`, or a whole `sh -c '...'` script);
//! - the password in a URL's user info (`https://user:pass@host/`: the user stays);
//! - AWS access key ids (`AKIA...`, `ASIA...`), GitHub, GitLab and Slack tokens by their prefix;
//! - configured regular expressions (`[spans.redact] patterns`): the first capture group when
//!   the pattern has one, else the whole match.
//!
//! Words inside one argv element (a shell script given to `sh -c`) get the same flag rules as
//! argv itself. Dropped: nothing; a value that only looks like a secret is redacted as well
//! (the cost of a false positive is a token where a word was).
//!
//! The session root's raw argv (`SessionInfo::root_argv`) is kept in memory for matching the
//! API request's command (which is redacted only after the match); it is never written out.

use std::path::PathBuf;
use std::sync::LazyLock;

use regex::bytes::{Captures, Regex};
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::util::iter::Searcher;
use regex_automata::util::syntax;
use regex_automata::{meta, Input, MatchKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[spans.redact]`: how secrets in commands are replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// The cluster's redaction key, any text (hashed into the HMAC key). The same key on every
    /// agent makes tokens comparable across nodes and restarts. Empty: `key_file`, else a
    /// random key for this run (logged as such; tokens then match only within one run).
    pub key: String,
    /// A file holding the key (a mounted Kubernetes Secret); trailing whitespace is ignored.
    /// Takes precedence over `key`.
    pub key_file: Option<PathBuf>,
    /// Extra regular expressions (Rust `regex` syntax, matched on bytes) whose first capture
    /// group, or whole match without one, is redacted: e.g. `"(?i)--db-url=\\S+://[^@]*@"`.
    pub patterns: Vec<String>,
}

/// Why a redaction config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("spans.redact.key_file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error("spans.redact.key_file {0} is empty")]
    EmptyKey(String),
    #[error("spans.redact.patterns {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
}

/// Where the key came from: logged at start (never the key itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Config,
    File,
    /// No key configured: random for this run.
    Random,
}

/// The built redactor: HMAC states precomputed, patterns compiled.
#[derive(Clone)]
pub struct Redactor {
    inner: Sha256,
    outer: Sha256,
    custom: Vec<Regex>,
    pub source: KeySource,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").field("source", &self.source).field("patterns", &self.custom.len()).finish()
    }
}

/// The mark a redacted value leaves; also how an already redacted value is recognised.
pub const TOKEN_PREFIX: &str = "<redacted:";
/// A token's length: the prefix, 10 hex digits, `>`.
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 10 + 1;

// The text patterns, one per kind of secret, in order of preference: a search finds what
// their alternation `header|bearer|url|assign|cloud` finds (leftmost first, the earlier pattern
// where two match at one place), and says which pattern matched. Where the secret starts and
// ends inside the match follows from the pattern ([`secret_in`]), so the search asks for no
// capture groups: the captures were the largest part of redacting a secret (BENCHMARKS.md,
// exp18 and exp19).
const HEADER: &str = r"(?i:\b(?:(?:proxy-)?authorization|x-api-key|x-auth-token|x-access-token|private-token|cookie)[ \t]*:[ \t]*(?:(?:bearer|basic|token|digest|negotiate)[ \t]+)?)[^\s'\x22]+";
const BEARER: &str = r"(?i:\bbearer[ \t]+)[A-Za-z0-9\-._~+/]+=*";
const URL: &str = r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:'\x22]*:[^\s/?#@'\x22]+@";
const ASSIGN: &str = r"[A-Za-z0-9_.\-]*(?i:password|passwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|credentials?|_pwd|auth[_\-]?key)[A-Za-z0-9_.\-]*=[^\s&;'\x22]+";
const CLOUD: &str = r"\b(?:(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}|(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,})";
const PATTERNS: [&str; 5] = [HEADER, BEARER, URL, ASSIGN, CLOUD];

static BUILTIN: LazyLock<meta::Regex> = LazyLock::new(|| {
    // as `regex::bytes::Regex` builds its own (bytes, not UTF-8; leftmost first), with only
    // the whole match of each pattern kept
    let pats: Vec<String> = PATTERNS.iter().map(|p| format!("(?-u:{p})")).collect();
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(10 * (1 << 20)))
                .hybrid_cache_capacity(2 * (1 << 20))
                .match_kind(MatchKind::LeftmostFirst)
                .utf8_empty(false)
                .which_captures(WhichCaptures::Implicit),
        )
        .syntax(syntax::Config::new().utf8(false))
        .build_many(&pats)
        .expect("built-in redaction patterns")
});

thread_local! {
    /// The built-in patterns' search state for this thread: the span task's worker threads
    /// search every argv element, and a cache of their own spares the pool `find_iter` takes
    /// one from (a lock and unlock per element on any thread but the pool's first). The lazy
    /// DFA's states grow as needed, within `hybrid_cache_capacity` above.
    static SEARCH: std::cell::RefCell<meta::Cache> = std::cell::RefCell::new(BUILTIN.create_cache());
}

/// Whether `s` may hold a match of a built-in pattern: each needs a byte or a prefix that the
/// check below looks for. A header a `:` after its name, a URL the `:` of `://`, an assignment
/// its `=`, a bearer token the blank after `bearer`, a cloud token its prefix (`AKIA`,
/// `ASIA`, `AROA`, `AIDA`; `gh`, `gi` of `github_pat`, `gl` of `glpat-`; `xox`). Most argv elements (a
/// command, a path, a short flag) have none and skip the search; a proptest checks that no
/// text this says no to has a match.
fn may_match(s: &[u8]) -> bool {
    s.iter().enumerate().any(|(i, &b)| match b {
        b':' | b'=' | b' ' | b'\t' => true,
        b'A' => matches!(s.get(i + 1..i + 4), Some(b"KIA" | b"SIA" | b"ROA" | b"IDA")),
        b'g' => matches!(s.get(i + 1), Some(b'h' | b'i' | b'l')),
        b'x' => s[i + 1..].starts_with(b"ox"),
        _ => false,
    })
}

/// Each secret the built-in patterns find in `src`, in order, as `secret(start, end)`: the
/// matches of a search with this thread's cache, their secrets from [`secret_in`] (empty ones
/// and tokens left as they are). The search stops at a match when the rest of `src` cannot
/// hold another ([`may_match`]): a secret often ends its element, or is its element's last
/// (`--password=x`, a header, `sh -c '... TOKEN=x'`), and the search after it was half of
/// all searches (BENCHMARKS.md, exp20).
fn builtin_secrets(src: &[u8], mut secret: impl FnMut(usize, usize)) {
    if !may_match(src) {
        return;
    }
    SEARCH.with_borrow_mut(|cache| {
        // as `BUILTIN.find_iter(src)`, with this thread's cache (no pool to lock)
        let mut it = Searcher::new(Input::new(src));
        while let Some(m) = it.advance(|input| Ok(BUILTIN.search_with(cache, input))) {
            let (a, b) = secret_in(m.pattern().as_usize(), &src[m.range()]);
            let (a, b) = (m.start() + a, m.start() + b);
            if a < b && !src[a..b].starts_with(TOKEN_PREFIX.as_bytes()) {
                secret(a, b);
            }
            // a match after this one lies in the rest (and has what the check looks for)
            if !may_match(&src[m.end()..]) {
                break;
            }
        }
    });
}

/// The secret inside `m`, a match of built-in pattern `pattern`, as offsets into `m`: the value
/// after a header's name and scheme, after `bearer`, a URL's password (between the user's `:`
/// and the `@`), the value of an assignment, a cloud token whole.
fn secret_in(pattern: usize, m: &[u8]) -> (usize, usize) {
    let after = |b: u8| m.iter().position(|&x| x == b).map_or(0, |i| i + 1);
    // the value has no white space: it starts after the last blank (or at the start)
    let after_space = || m.iter().rposition(|&x| x == b' ' || x == b'\t').map_or(0, |i| i + 1);
    match pattern {
        // `name [ \t]* : [ \t]* (scheme [ \t]+)? value`: the name has no `:`, the value no
        // white space, so the value starts after the first `:` and after the last blank
        0 => (after(b':').max(after_space()), m.len()),
        // `bearer [ \t]+ value`
        1 => (after_space(), m.len()),
        // `scheme://user:password@`: the scheme and the user have no `:`
        2 => {
            let user = after(b':') + 2;
            (user + m[user..].iter().position(|&x| x == b':').map_or(0, |i| i + 1), m.len() - 1)
        }
        // `name=value`: the name has no `=`
        3 => (after(b'='), m.len()),
        _ => (0, m.len()),
    }
}
fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    use std::io::Read;
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k)).is_err() {
        // No urandom (should not happen on Linux): time and pid still make a key no one
        // outside this process knows in advance.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        k = Sha256::digest(seed.as_bytes()).into();
    }
    k
}

impl Redactor {
    /// Reads the key (file, config, or random) and compiles the patterns.
    pub fn new(cfg: &RedactConfig) -> Result<Redactor, RedactError> {
        let (key, source) = match &cfg.key_file {
            Some(p) => {
                let text = std::fs::read(p)
                    .map_err(|source| RedactError::KeyFile { path: p.display().to_string(), source })?;
                let trimmed = text.trim_ascii_end();
                if trimmed.is_empty() {
                    return Err(RedactError::EmptyKey(p.display().to_string()));
                }
                (Sha256::digest(trimmed).into(), KeySource::File)
            }
            None if !cfg.key.is_empty() => (Sha256::digest(cfg.key.as_bytes()).into(), KeySource::Config),
            None => (random_key(), KeySource::Random),
        };
        let custom = cfg
            .patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| RedactError::Pattern { pattern: p.clone(), message: e.to_string() }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Redactor::with_key(key, custom, source))
    }

    /// A redactor under a random key and the built-in patterns only.
    pub fn random() -> Redactor {
        Redactor::with_key(random_key(), Vec::new(), KeySource::Random)
    }

    fn with_key(key: [u8; 32], custom: Vec<Regex>, source: KeySource) -> Redactor {
        // HMAC (RFC 2104) with a 32-byte key: the padded key xor ipad / opad, absorbed once.
        let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
        for i in 0..32 {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        let mut outer = Sha256::new();
        outer.update(opad);
        Redactor { inner, outer, custom, source }
    }

    /// The token standing for `secret`: `<redacted:` + 10 hex digits of its HMAC + `>`.
    pub fn token(&self, secret: &[u8]) -> String {
        let mut t = Vec::with_capacity(TOKEN_LEN);
        self.token_into(secret, &mut t);
        String::from_utf8(t).expect("a token is ASCII")
    }

    /// [`Self::token`] appended to `out`: the HMAC from the key's precomputed inner and outer
    /// states (two SHA-256 blocks for a secret of up to 55 bytes), its first 5 bytes written
    /// as lower-case hex in place (no string formatted and copied per token).
    fn token_into(&self, secret: &[u8], out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut i = self.inner.clone();
        i.update(secret);
        let mut o = self.outer.clone();
        o.update(i.finalize());
        let mac = o.finalize();
        out.reserve(TOKEN_LEN);
        out.extend_from_slice(TOKEN_PREFIX.as_bytes());
        for &b in &mac[..5] {
            out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        out.push(b'>');
    }

    /// Redacts an argv in place; returns how many values were replaced.
    pub fn argv(&self, argv: &mut [Vec<u8>]) -> u32 {
        match self.redacted(argv) {
            Some((new, n)) => {
                for (a, b) in argv.iter_mut().zip(new) {
                    *a = b;
                }
                n
            }
            None => 0,
        }
    }

    /// [`Self::argv`] without touching `argv`: its redacted copy and the count, or None when
    /// nothing is to be replaced (most argvs: then nothing is copied).
    pub fn redacted(&self, argv: &[Vec<u8>]) -> Option<(Vec<Vec<u8>>, u32)> {
        let mut n = 0;
        // the replaced elements (empty until the first); the others are copied once, at the end
        let mut new: Vec<Option<Vec<u8>>> = Vec::new();
        let set = |new: &mut Vec<Option<Vec<u8>>>, i: usize, v: Vec<u8>| {
            if new.is_empty() {
                new.resize(argv.len(), None);
            }
            new[i] = Some(v);
        };
        for (i, from) in word_rules(argv.iter().map(|a| a.as_slice())) {
            let v = &argv[i];
            let mut red = Vec::with_capacity(from + TOKEN_LEN);
            red.extend_from_slice(&v[..from]);
            self.token_into(unquote(&v[from..]), &mut red);
            set(&mut new, i, red);
            n += 1;
        }
        for (i, a) in argv.iter().enumerate() {
            let cur = new.get(i).and_then(Option::as_deref).unwrap_or(a);
            if let Some((red, k)) = self.text(cur) {
                set(&mut new, i, red);
                n += k;
            }
        }
        if new.is_empty() {
            return None;
        }
        Some((argv.iter().zip(new).map(|(a, r)| r.unwrap_or_else(|| a.clone())).collect(), n))
    }

    /// Redacts strings (a requested command, a user agent) in place; returns the count.
    pub fn strings(&self, v: &mut [String]) -> u32 {
        let mut bytes: Vec<Vec<u8>> = v.iter().map(|s| s.as_bytes().to_vec()).collect();
        let n = self.argv(&mut bytes);
        if n > 0 {
            for (s, b) in v.iter_mut().zip(bytes) {
                *s = String::from_utf8_lossy(&b).into_owned();
            }
        }
        n
    }

    /// One string (a user agent, a URL): the text patterns and the flag rules of its words.
    pub fn string(&self, s: &mut String) -> u32 {
        match self.text(s.as_bytes()) {
            Some((new, n)) => {
                *s = String::from_utf8_lossy(&new).into_owned();
                n
            }
            None => 0,
        }
    }

    /// One element: flag rules on its words when it has several (a script), then the text
    /// patterns. None when nothing was redacted (the common case allocates nothing).
    fn text(&self, s: &[u8]) -> Option<(Vec<u8>, u32)> {
        let mut n = 0u32;
        let mut cur: Option<Vec<u8>> = None;
        if s.iter().any(|b| b.is_ascii_whitespace()) {
            let words = split_words(s);
            let hits = word_rules(words.iter().map(|&(a, b)| &s[a..b]));
            if !hits.is_empty() {
                let mut out = Vec::with_capacity(s.len());
                let mut last = 0;
                for (wi, from) in hits {
                    let (a, b) = words[wi];
                    out.extend_from_slice(&s[last..a + from]);
                    self.token_into(unquote(&s[a + from..b]), &mut out);
                    last = b;
                    n += 1;
                }
                out.extend_from_slice(&s[last..]);
                cur = Some(out);
            }
        }
        // the built-in patterns: each match's secret found from its pattern
        let src = cur.as_deref().unwrap_or(s);
        let mut out = Vec::new();
        let (mut last, mut k) = (0, 0u32);
        builtin_secrets(src, |a, b| {
            if out.is_empty() {
                out.reserve(src.len() + TOKEN_LEN);
            }
            out.extend_from_slice(&src[last..a]);
            self.token_into(&src[a..b], &mut out);
            last = b;
            k += 1;
        });
        if k > 0 {
            out.extend_from_slice(&src[last..]);
            n += k;
            cur = Some(out);
        }
        // configured patterns: the first capture group, or the whole match
        for re in &self.custom {
            let src = cur.as_deref().unwrap_or(s);
            if !re.is_match(src) {
                continue;
            }
            let mut k = 0u32;
            let out = re.replace_all(src, |c: &Captures| {
                let whole = c.get(0).expect("group 0");
                match c.get(1).unwrap_or(whole) {
                    m if !m.as_bytes().is_empty() && !m.as_bytes().starts_with(TOKEN_PREFIX.as_bytes()) => {
                        k += 1;
                        let mut r = src[whole.start()..m.start()].to_vec();
                        self.token_into(m.as_bytes(), &mut r);
                        r.extend_from_slice(&src[m.end()..whole.end()]);
                        r
                    }
                    _ => whole.as_bytes().to_vec(),
                }
            });
            if k > 0 {
                n += k;
                cur = Some(out.into_owned());
            }
        }
        cur.map(|c| (c, n))
    }
}

/// Byte ranges of the whitespace-separated words of `s`.
fn split_words(s: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in s.iter().enumerate() {
        match (b.is_ascii_whitespace(), start) {
            (true, Some(a)) => {
                out.push((a, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(a) = start {
        out.push((a, s.len()));
    }
    out
}

/// A value without one layer of surrounding quotes: `'S3cret'` and `S3cret` give one token.
fn unquote(v: &[u8]) -> &[u8] {
    let v = v.strip_prefix(b"'").or_else(|| v.strip_prefix(b"\"")).unwrap_or(v);
    v.strip_suffix(b"'").or_else(|| v.strip_suffix(b"\"")).unwrap_or(v)
}

/// Clients whose flags carry a password in a form the text patterns cannot see.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `-pSECRET` attached; `-p` / `--password` alone prompt, so the next word is not a value.
    MySql,
    /// `-u user:password`.
    Curl,
    /// `-a password`.
    Redis,
    /// `-p password` or `-pPASSWORD`.
    SshPass,
}

fn client(word: &[u8]) -> Option<Client> {
    match crate::text::basename(unquote(word)) {
        b"mysql" | b"mysqldump" | b"mysqladmin" | b"mysqlimport" | b"mysqlshow" | b"mysqlcheck" | b"mysqlpump"
        | b"mysqlslap" | b"mysqlsh" | b"mariadb" | b"mariadb-dump" | b"mariadb-admin" | b"mariadb-import"
        | b"mariadb-check" => Some(Client::MySql),
        b"curl" => Some(Client::Curl),
        b"redis-cli" | b"valkey-cli" => Some(Client::Redis),
        b"sshpass" => Some(Client::SshPass),
        _ => None,
    }
}

/// A flag (without its dashes, lower case) whose next word is a secret. Bytes: every name
/// below is ASCII, so a flag that is not UTF-8 matches as its lossy text would.
fn secret_flag(name: &[u8]) -> bool {
    const EXACT: &[&str] = &["pass", "pw", "pwd", "storepass", "keypass", "srcstorepass", "deststorepass"];
    const HAS: &[&str] = &[
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "api-key",
        "api_key",
        "access-key",
        "access_key",
    ];
    // A flag naming where the secret is (a file, a variable) takes no secret.
    const NOT: &[&str] = &["-file", "_file", "-path", "-dir", "-env", "-fd", "-stdin", "-cmd", "-command", "-type"];
    if NOT.iter().any(|s| name.ends_with(s.as_bytes())) {
        return false;
    }
    EXACT.iter().any(|e| name == e.as_bytes()) || HAS.iter().any(|k| name.windows(k.len()).any(|w| w == k.as_bytes()))
}

/// For each word that is (or ends in) a secret: its index and the offset the secret starts at.
fn word_rules<'a>(words: impl Iterator<Item = &'a [u8]>) -> Vec<(usize, usize)> {
    #[derive(Clone, Copy)]
    enum Next {
        No,
        Whole,
        UserPass,
    }
    let mut hits = Vec::new();
    let mut cl: Option<Client> = None;
    let mut next = Next::No;
    for (i, w) in words.enumerate() {
        let bare = unquote(w);
        match next {
            Next::Whole if !bare.is_empty() && !bare.starts_with(b"-") => hits.push((i, 0)),
            Next::UserPass => {
                if let Some(c) = w.iter().position(|&b| b == b':') {
                    hits.push((i, c + 1));
                }
            }
            _ => {}
        }
        let was = std::mem::replace(&mut next, Next::No);
        if !matches!(was, Next::No) {
            continue;
        }
        if matches!(bare, b"|" | b";" | b"&&" | b"||" | b"&") || w.ends_with(b";") {
            cl = None;
            continue;
        }
        if let Some(c) = client(w) {
            cl = Some(c);
            continue;
        }
        if !bare.starts_with(b"-") || bare.contains(&b'=') {
            continue;
        }
        match (cl, bare) {
            (Some(Client::MySql), b"-p" | b"--password") => continue,
            (Some(Client::MySql | Client::SshPass), f) if f.len() > 2 && f.starts_with(b"-p") && f[2] != b'-' => {
                // attached: -pS3cret (the quote, if any, stays with the value)
                let lead = usize::from(w.starts_with(b"'") || w.starts_with(b"\""));
                hits.push((i, lead + 2));
                continue;
            }
            (Some(Client::SshPass), b"-p") | (Some(Client::Redis), b"-a") => {
                next = Next::Whole;
                continue;
            }
            (Some(Client::Curl), b"-u" | b"--user" | b"--proxy-user" | b"-U") => {
                next = Next::UserPass;
                continue;
            }
            (Some(Client::Curl), f) if f.len() > 2 && f.starts_with(b"-u") && f[2] != b'-' => {
                if let Some(c) = w.iter().position(|&b| b == b':') {
                    hits.push((i, c + 1));
                }
                continue;
            }
            _ => {}
        }
        // the flag without its dashes, lower case: on the stack (every flag but a long one)
        let name = bare.trim_ascii_start();
        let name = &name[name.iter().position(|&b| b != b'-').unwrap_or(name.len())..];
        let mut buf = [0u8; 64];
        let long;
        let lower: &[u8] = match buf.get_mut(..name.len()) {
            Some(b) => {
                b.copy_from_slice(name);
                b.make_ascii_lowercase();
                b
            }
            None => {
                long = name.to_ascii_lowercase();
                &long
            }
        };
        if lower.len() >= 2 && secret_flag(lower) {
            next = Next::Whole;
        }
    }
    hits
}

#[cfg(test)]
mod tests;
