use super::*;

fn r() -> Redactor {
    Redactor::new(&RedactConfig { key: "test-key".into(), ..Default::default() }).unwrap()
}

fn red(args: &[&str]) -> (Vec<String>, u32) {
    let mut v: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    let n = r().argv(&mut v);
    (v.into_iter().map(|a| String::from_utf8(a).unwrap()).collect(), n)
}

fn none_left(out: &[String], secrets: &[&str]) {
    let all = out.join(" ");
    for s in secrets {
        assert!(!all.contains(s), "{s} survived in {all}");
    }
}

#[test]
fn the_token_is_keyed_stable_and_short() {
    let a = r();
    assert_eq!(a.token(b"S3cret"), a.token(b"S3cret"));
    assert_ne!(a.token(b"S3cret"), a.token(b"S3cret2"));
    let other = Redactor::new(&RedactConfig { key: "other".into(), ..Default::default() }).unwrap();
    assert_ne!(a.token(b"S3cret"), other.token(b"S3cret"), "the key changes the token");
    let t = a.token(b"S3cret");
    assert!(t.starts_with("<redacted:") && t.ends_with('>') && t.len() == 10 + 10 + 1, "{t}");
    // RFC 4231 test case 2 checks the HMAC construction itself ("Jefe" is hashed first
    // here, so compare against HMAC under SHA-256("Jefe") computed independently).
    let k: [u8; 32] = Sha256::digest(b"Jefe").into();
    let h = Redactor::with_key(k, vec![], KeySource::Config);
    let mut i = Sha256::new();
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for j in 0..32 {
        ipad[j] ^= k[j];
        opad[j] ^= k[j];
    }
    i.update(ipad);
    i.update(b"what do ya want for nothing?");
    let mut o = Sha256::new();
    o.update(opad);
    o.update(i.finalize());
    assert_eq!(h.token(b"what do ya want for nothing?"), format!("<redacted:{}>", hex::encode(&o.finalize()[..5])));
}

#[test]
fn password_and_token_flags() {
    let (o, n) = red(&["app", "--password", "S3cret", "--token=T0ken", "--api-key", "K3y", "-v"]);
    assert_eq!(n, 3, "{o:?}");
    none_left(&o, &["S3cret", "T0ken", "K3y"]);
    assert_eq!(o[1], "--password");
    assert!(o[3].starts_with("--token=<redacted:"), "{o:?}");
    assert_eq!(o[6], "-v");
    // a flag naming a file takes no secret
    let (o, n) = red(&["app", "--token-file", "/var/run/token"]);
    assert_eq!((n, o[2].as_str()), (0, "/var/run/token"));
}

#[test]
fn database_clients_attached_password() {
    let (o, n) = red(&["mysql", "-uroot", "-pS3cret", "-h", "db"]);
    assert_eq!(n, 1);
    assert!(o[2].starts_with("-p<redacted:"), "{o:?}");
    assert_eq!(o[1], "-uroot");
    // -p alone prompts: the database name after it stays
    let (o, n) = red(&["mysql", "-p", "shop"]);
    assert_eq!((n, o[2].as_str()), (0, "shop"));
    // psql's -p is a port and is left alone
    let (o, n) = red(&["psql", "-p5432"]);
    assert_eq!((n, o[1].as_str()), (0, "-p5432"));
    // inside a script, and the same secret gives the same token
    let (o, n) = red(&["sh", "-c", "mysql -pS3cret -e 'select 1' | mariadb -p'S3cret'"]);
    assert_eq!(n, 2, "{o:?}");
    none_left(&o, &["S3cret"]);
    let toks: Vec<&str> = o[2].matches("<redacted:").collect();
    assert_eq!(toks.len(), 2);
    let t = r().token(b"S3cret");
    assert_eq!(o[2].matches(t.as_str()).count(), 2, "{}", o[2]);
}

#[test]
fn headers_bearer_and_url_credentials() {
    let (o, n) = red(&[
        "wget",
        "--header",
        "Authorization: Bearer abc.def-123",
        "https://user:pa55word@example.com/x?access_token=qq1&y=1",
    ]);
    none_left(&o, &["abc.def-123", "pa55word", "qq1"]);
    assert_eq!(n, 3, "{o:?}");
    assert!(o[2].starts_with("Authorization: Bearer <redacted:"), "{o:?}");
    assert!(o[3].starts_with("https://user:<redacted:") && o[3].contains("@example.com/x?access_token=<redacted:"));
    assert!(o[3].ends_with("&y=1"));
    let (o, _) = red(&["curl", "-H", "authorization: Basic dXNlcjpwYXNz", "-u", "admin:hunter2", "x"]);
    none_left(&o, &["dXNlcjpwYXNz", "hunter2"]);
    assert!(o[4].starts_with("admin:<redacted:"), "{o:?}");
    let (o, _) = red(&["sh", "-c", "curl -H 'Authorization: Bearer xyz123' https://h/"]);
    none_left(&o, &["xyz123"]);
}

#[test]
fn assignments_and_cloud_keys() {
    let (o, n) = red(&[
        "env",
        "DB_PASSWORD=pw1",
        "GITHUB_TOKEN=ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "PATH=/bin",
        "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG",
        "MYSQL_PWD=pw2",
        "PWD=/root",
    ]);
    none_left(&o, &["pw1", "ghp_aaaa", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "pw2"]);
    assert_eq!(o[3], "PATH=/bin");
    assert_eq!(o[7], "PWD=/root");
    assert_eq!(n, 5, "{o:?}");
    let (o, n) = red(&["aws", "configure", "set", "x", "ASIAXXXXXXXXXXXXXXXX"]);
    assert_eq!(n, 1);
    none_left(&o, &["ASIAXXXXXXXXXXXXXXXX"]);
}

#[test]
fn configured_patterns_and_bad_ones() {
    let cfg = RedactConfig { key: "k".into(), patterns: vec!["--pin (\\d+)".into()], ..Default::default() };
    let red = Redactor::new(&cfg).unwrap();
    let mut s = "unlock --pin 1234 now".to_string();
    assert_eq!(red.string(&mut s), 1);
    assert!(s.starts_with("unlock --pin <redacted:") && s.ends_with(" now"), "{s}");
    let bad = RedactConfig { patterns: vec!["(".into()], ..Default::default() };
    assert!(Redactor::new(&bad).unwrap_err().to_string().contains("spans.redact.patterns"));
}

#[test]
fn plain_commands_are_untouched_and_tokens_are_not_redacted_again() {
    let (o, n) = red(&["ls", "-la", "/tmp", "--color=auto"]);
    assert_eq!((n, o.join(" ").as_str()), (0, "ls -la /tmp --color=auto"));
    let mut v: Vec<Vec<u8>> = vec![b"x".to_vec(), b"Authorization: Bearer abc".to_vec()];
    let a = r();
    a.argv(&mut v);
    let once = v.clone();
    assert_eq!(a.argv(&mut v), 0);
    assert_eq!(v, once);
    // not UTF-8: still scanned, the bytes around the secret kept
    let mut v = vec![b"\xff--password=zz\xfe".to_vec()];
    assert_eq!(a.argv(&mut v), 1);
    assert!(!v[0].windows(2).any(|w| w == b"zz"));
}

/// The alternation the built-in patterns were, with a capture group for each secret: the
/// reference for where [`secret_in`] says a secret is.
static ALTERNATION: LazyLock<Regex> = LazyLock::new(|| {
    let header = r"(?i:\b(?:(?:proxy-)?authorization|x-api-key|x-auth-token|x-access-token|private-token|cookie)[ \t]*:[ \t]*(?:(?:bearer|basic|token|digest|negotiate)[ \t]+)?)(?P<h>[^\s'\x22]+)";
    let bearer = r"(?i:\bbearer[ \t]+)(?P<b>[A-Za-z0-9\-._~+/]+=*)";
    let url = r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:'\x22]*:(?P<u>[^\s/?#@'\x22]+)@";
    let assign = r"[A-Za-z0-9_.\-]*(?i:password|passwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|credentials?|_pwd|auth[_\-]?key)[A-Za-z0-9_.\-]*=(?P<a>[^\s&;'\x22]+)";
    let cloud = r"\b(?P<c>(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}|(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,})";
    Regex::new(&format!("(?-u:{header}|{bearer}|{url}|{assign}|{cloud})")).unwrap()
});

/// (match, secret) ranges as the alternation's captures give them, and as the patterns'
/// search and [`secret_in`] do.
fn both(src: &[u8]) -> (Vec<[usize; 4]>, Vec<[usize; 4]>) {
    let old = ALTERNATION
        .captures_iter(src)
        .map(|c| {
            let w = c.get(0).unwrap();
            let m = ["h", "b", "u", "a", "c"].iter().find_map(|g| c.name(g)).unwrap();
            [w.start(), w.end(), m.start(), m.end()]
        })
        .collect();
    let new = BUILTIN
        .find_iter(src)
        .map(|m| {
            let (a, b) = secret_in(m.pattern().as_usize(), &src[m.range()]);
            [m.start(), m.end(), m.start() + a, m.start() + b]
        })
        .collect();
    (old, new)
}

#[test]
fn each_secret_is_where_the_capture_groups_put_it() {
    for s in [
        "Authorization: Bearer abc.def-123",
        "authorization :abc:def",
        "Proxy-Authorization:\tBasic  x",
        "Authorization: Basic",
        "cookie:a:b x-api-key : k bearer t0k==",
        "X-Auth-Token=abc",
        "_authorization://u:p@h",
        "https://user:pa55:word@example.com/x?access_token=qq1&y=1 ftp://:p@h",
        "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE token=a=b ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "--header=Authorization: Bearer tok1abcdef0123456789 \x0bbearer\x0bx",
    ] {
        let (old, new) = both(s.as_bytes());
        assert!(!old.is_empty(), "{s}");
        assert_eq!(old, new, "{s}");
    }
}

use proptest::strategy::Strategy as _;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
    #[test]
    fn the_patterns_find_what_the_alternation_captured(parts in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::sample::select(vec![
                "Authorization", "proxy-authorization", "X-API-KEY", "x-auth-token", "private-token",
                "Cookie", "bearer", "Basic", "token", "password", "DB_PASSWD", "api-key", "_pwd",
                "credential", "auth_key", "AKIA", "ASIA0123456789ABCDEF", "ghp_", "glpat-", "xoxb-",
                "://", "https", "user", ":", "@", "=", " ", "\t", "\n", "\x0b", "'", "\"", "/", "?",
                "#", "&", ";", "-", "_", ".", "+", "~", "==", "<redacted:0123456789>",
            ]).prop_map(|s| s.as_bytes().to_vec()),
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            "[A-Za-z0-9]{1,24}".prop_map(|s| s.into_bytes()),
        ],
        0..24,
    )) {
        let src = parts.concat();
        let (old, new) = both(&src);
        proptest::prop_assert_eq!(old, new);
    }
}

#[test]
fn key_file_and_random_key() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("key");
    std::fs::write(&p, "cluster-key\n").unwrap();
    let f = Redactor::new(&RedactConfig { key_file: Some(p.clone()), ..Default::default() }).unwrap();
    let c = Redactor::new(&RedactConfig { key: "cluster-key".into(), ..Default::default() }).unwrap();
    assert_eq!(f.source, KeySource::File);
    assert_eq!(f.token(b"x"), c.token(b"x"), "trailing newline of a Secret file ignored");
    let a = Redactor::new(&RedactConfig::default()).unwrap();
    let b = Redactor::new(&RedactConfig::default()).unwrap();
    assert_eq!(a.source, KeySource::Random);
    assert_ne!(a.token(b"x"), b.token(b"x"));
    std::fs::write(&p, "\n").unwrap();
    assert!(Redactor::new(&RedactConfig { key_file: Some(p), ..Default::default() }).is_err());
}

#[test]
fn the_quick_check_says_yes_to_every_kind_of_secret() {
    for s in [
        "Authorization: x",
        "bearer\tabc",
        "https://u:p@h",
        "token=x",
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAXXXXXXXXXXXXXXXX",
        "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "github_pat_aaaaaaaaaaaaaaaaaaaaaaaa",
        "glpat-aaaaaaaaaaaaaaaaaaaaaaa",
        "xoxb-0123456789",
    ] {
        assert!(may_match(s.as_bytes()), "{s}");
        assert!(BUILTIN.find(s.as_bytes()).is_some(), "{s}");
    }
    for s in ["/tmp/page", "/bin/true", "storm-arg", "-la", "AKIB", "gx", "xo", "A", "g", "x", ""] {
        assert!(!may_match(s.as_bytes()), "{s}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
    /// What [`may_match`] says no to, the patterns find nothing in: the check only spares
    /// searches, it never hides a secret.
    #[test]
    fn the_quick_check_never_hides_a_match(parts in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::sample::select(vec![
                "Authorization", "X-API-KEY", "cookie", "bearer", "BEARER", "Basic", "token", "password",
                "_pwd", "auth_key", "AKIA", "ASIA", "AROA", "AIDA", "0123456789ABCDEF", "ghp_", "gho_",
                "github_pat_", "glpat-", "xoxb-", "xoxp-", "://", "https", ":", "@", "=", " ", "\t", "\n",
                "\x0b", "'", "\"", "/", "-", "_", "A", "g", "h", "l", "x", "o",
            ]).prop_map(|s| s.as_bytes().to_vec()),
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            "[A-Za-z0-9_\\-]{1,24}".prop_map(|s| s.into_bytes()),
        ],
        0..24,
    )) {
        let src = parts.concat();
        if !may_match(&src) {
            proptest::prop_assert!(BUILTIN.find(&src[..]).is_none(), "{:?}", String::from_utf8_lossy(&src));
        }
    }
}

#[test]
fn flags_are_matched_without_dashes_in_lower_case_long_or_not_utf8() {
    let long = format!("--{}token", "x".repeat(70));
    for (flag, n) in [
        (b"--PASSWORD".as_slice(), 1),
        (b"--Api-Key", 1),
        (b"-Pw", 1),
        (b"--\xffpassword", 1),
        (b"--p\xffassword", 0),
        (b"--Password-File", 0),
        (b"-p", 0),
        (long.as_bytes(), 1),
    ] {
        let mut v = vec![b"app".to_vec(), flag.to_vec(), b"S3cret".to_vec()];
        assert_eq!(r().argv(&mut v), n, "{:?}", String::from_utf8_lossy(flag));
        assert_eq!(v[2].starts_with(b"<redacted:"), n == 1);
    }
}

/// The secrets of every match of a search to the end of `src` (the reference for
/// [`builtin_secrets`], which stops once the rest cannot match).
fn every_secret(src: &[u8]) -> Vec<(usize, usize)> {
    BUILTIN
        .find_iter(src)
        .map(|m| {
            let (a, b) = secret_in(m.pattern().as_usize(), &src[m.range()]);
            (m.start() + a, m.start() + b)
        })
        .filter(|&(a, b)| a < b && !src[a..b].starts_with(TOKEN_PREFIX.as_bytes()))
        .collect()
}

fn found(src: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    builtin_secrets(src, |a, b| v.push((a, b)));
    v
}

#[test]
fn the_search_stops_early_only_where_nothing_follows() {
    for s in [
        "--password=s3cret",
        "http://svc:pw1x9@10.244.1.5:8080/item/1",
        "AWS_ACCESS_KEY_ID=AKIA0000000000000001 wget ...; tar ...; cat ...",
        "token=a token=b",
        "token=a AKIAIOSFODNN7EXAMPLE",
        "token=a xoxb-0123456789",
        "Authorization: Bearer abc",
        "",
    ] {
        assert_eq!(found(s.as_bytes()), every_secret(s.as_bytes()), "{s}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
    /// Stopping the search where the rest cannot match finds every secret a search to the end
    /// finds, at the same places.
    #[test]
    fn stopping_early_finds_every_secret(parts in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::sample::select(vec![
                "Authorization", "X-API-KEY", "cookie", "bearer", "BEARER", "Basic", "token", "password",
                "_pwd", "auth_key", "AKIA", "ASIA", "AROA", "AIDA", "0123456789ABCDEF", "ghp_", "gho_",
                "github_pat_", "glpat-", "xoxb-", "xoxp-", "://", "https", "user", ":", "@", "=", " ",
                "\t", "\n", "\x0b", "'", "\"", "/", "-", "_", "A", "g", "h", "l", "x", "o", "&", ";",
                "<redacted:0123456789>",
            ]).prop_map(|s| s.as_bytes().to_vec()),
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            "[A-Za-z0-9_\\-]{1,24}".prop_map(|s| s.into_bytes()),
        ],
        0..32,
    )) {
        let src = parts.concat();
        proptest::prop_assert_eq!(found(&src), every_secret(&src), "{:?}", String::from_utf8_lossy(&src));
    }
}
