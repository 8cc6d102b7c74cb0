//! The one rule for turning kernel bytes into text: valid UTF-8 stays as it is, every byte
//! that is not part of valid UTF-8 becomes `\xNN`, and a literal backslash becomes `\\` so the
//! result can be read back without ambiguity. Used by the JSON capture output, the console
//! tree and span attributes alike. Also the one percent-encoder and decoder (URL queries,
//! audit request URIs, OTLP header values).
//!
//! For a terminal, [`display_safe`] also shows every character that would act on the terminal
//! rather than be read (C0 and C1 controls, ESC, DEL, bidi overrides and isolates, zero-width
//! and other format characters) as an escape (`\x1b`, `\u{202e}`), and [`shell_quote`] quotes
//! one argv element the way a POSIX shell would read it back.

use std::borrow::Cow;

use serde::Serializer;

/// A character that changes how a terminal shows the text around it instead of showing itself.
pub fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// `s` with every character that acts on a terminal escaped (`\x1b` below U+0080, else
/// `\u{202e}`); newlines kept when `keep_newlines` (a multi-line rendering).
pub fn display_safe(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| acts_on_terminal(c) && !(keep_newlines && c == '\n')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !acts_on_terminal(c) || (keep_newlines && c == '\n') {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// A JSON text with every character that acts on a terminal written as a JSON `\uXXXX`
/// escape (UTF-16 units), so the line still parses to the same strings.
pub fn json_terminal_safe(json: &str) -> Cow<'_, str> {
    if !json.chars().any(acts_on_terminal) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if acts_on_terminal(c) {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One argv element as a POSIX shell would read it back: as is when it holds only characters
/// no shell treats specially, else in single quotes (`'` written `'\''`). `sh -c 'a | b'`
/// then reads unambiguously. Characters that act on a terminal are escaped as well.
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        return Cow::Borrowed(s);
    }
    let quoted = format!("'{}'", s.replace('\'', "'\\''"));
    Cow::Owned(display_safe(&quoted, false).into_owned())
}

/// `bytes` as text: UTF-8 kept, a backslash doubled, each invalid byte written `\\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    // nearly every argv and path: UTF-8 without a backslash, copied in one piece rather than
    // pushed character by character (the span builder escapes several per span; issue 15)
    if !bytes.contains(&b'\\') {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_owned();
        }
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The basename of a path given as bytes.
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `b` as [`escape`] writes it, borrowed when that is `b` itself (UTF-8 without a backslash:
/// nearly every argv and path), so serializing an event allocates nothing per field.
pub fn escaped(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\\') => Cow::Borrowed(s),
        _ => Cow::Owned(escape(b)),
    }
}

pub fn ser_bytes<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escaped(b))
}

pub fn ser_opt_bytes<S: Serializer, B: AsRef<[u8]>>(b: &Option<B>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&escaped(b.as_ref())),
        None => s.serialize_none(),
    }
}

pub fn ser_bytes_list<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|b| escaped(b)))
}

/// The inverse of [`escape`]: `\\` is a backslash, `\xNN` the byte NN, anything else as is.
/// Err names the first escape that is neither (escape never writes one).
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = s.get(i + 2..i + 4).ok_or_else(|| format!("a cut \\x escape at byte {i}"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("\\x{hex} at byte {i} is not hex"))?);
                i += 4;
            }
            _ => return Err(format!("a lone backslash at byte {i}")),
        }
    }
    Ok(out)
}

/// Reads what [`ser_bytes`] wrote.
pub fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    unescape(&s).map_err(serde::de::Error::custom)
}

/// Reads what [`ser_opt_bytes`] wrote.
pub fn de_opt_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let s = <Option<String> as serde::Deserialize>::deserialize(d)?;
    s.map(|s| unescape(&s).map_err(serde::de::Error::custom)).transpose()
}

/// [`de_bytes`] into a shared buffer.
pub fn de_shared_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::sync::Arc<[u8]>, D::Error> {
    de_bytes(d).map(Into::into)
}

/// [`de_opt_bytes`] into a shared buffer.
pub fn de_opt_shared_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::sync::Arc<[u8]>>, D::Error> {
    Ok(de_opt_bytes(d)?.map(Into::into))
}

/// Reads what [`ser_bytes_list`] wrote.
pub fn de_bytes_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let v = <Vec<String> as serde::Deserialize>::deserialize(d)?;
    v.iter().map(|s| unescape(s).map_err(serde::de::Error::custom)).collect()
}

/// Percent-encodes every byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`), so
/// the result is safe in a path segment and a query value alike.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` becomes the byte; an invalid escape is kept literally and invalid UTF-8 is replaced,
/// never an error. `plus_is_space` is `application/x-www-form-urlencoded` (query strings);
/// without it `+` stays `+` (OTLP header values, path segments).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_reads_back_what_escape_wrote_and_refuses_what_it_never_writes() {
        let raw: &[u8] = b"a\\x41 \xff\x00 \\ \xc3\x28 done";
        assert_eq!(unescape(&escape(raw)).unwrap(), raw);
        assert_eq!(unescape("caf\u{e9}").unwrap(), "caf\u{e9}".as_bytes());
        assert!(unescape("a\\q").unwrap_err().contains("lone backslash"), "an unknown escape is an error");
        assert!(unescape("a\\x4").is_err(), "a cut \\x escape is an error");
        assert!(unescape("a\\xzz").is_err(), "non-hex is an error");
    }

    #[test]
    fn invalid_utf8_becomes_hex_and_backslash_is_doubled() {
        assert_eq!(escape(b"a b"), "a b");
        assert_eq!(escape(b"caf\xc3\xa9"), "café");
        assert_eq!(escape(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape(b"a\\xff"), "a\\\\xff");
    }

    #[test]
    fn escaped_borrows_only_what_escape_leaves_alone() {
        for raw in [&b"a b"[..], b"caf\xc3\xa9", b"\xff\xfeok", b"a\\xff", b"", b"\\", b"x\xc3"] {
            let e = escaped(raw);
            assert_eq!(e, escape(raw), "{raw:?}");
            assert_eq!(matches!(e, Cow::Borrowed(_)), e.as_bytes() == raw, "{raw:?}");
        }
    }

    #[test]
    fn terminal_controls_and_bidi_are_shown_escaped() {
        assert_eq!(display_safe("ls -la", false), "ls -la");
        assert_eq!(display_safe("a\x1b[2Jb", false), "a\\x1b[2Jb");
        assert_eq!(display_safe("x\u{202e}gpj.exe", false), "x\\u{202e}gpj.exe");
        assert_eq!(display_safe("\u{2066}a\u{2069}\u{9b}", false), "\\u{2066}a\\u{2069}\\u{9b}");
        assert_eq!(display_safe("a\nb\r", true), "a\nb\\x0d");
        assert_eq!(display_safe("a\nb", false), "a\\x0ab");
        assert_eq!(display_safe("café ✓", false), "café ✓");
    }

    #[test]
    fn json_lines_stay_json_and_terminal_safe() {
        let j = serde_json::to_string(&"a\u{202e}b\x1b").unwrap();
        let safe = json_terminal_safe(&j);
        assert!(!safe.contains('\u{202e}') && !safe.contains('\x1b'), "{safe}");
        assert_eq!(serde_json::from_str::<String>(&safe).unwrap(), "a\u{202e}b\x1b");
    }

    #[test]
    fn argv_elements_are_quoted_as_a_shell_reads_them() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("/bin/sh"), "/bin/sh");
        assert_eq!(shell_quote("a | b"), "'a | b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("\x1b]0;pwned\x07"), "'\\x1b]0;pwned\\x07'");
    }

    #[test]
    fn basename_of_paths() {
        assert_eq!(basename(b"/bin/busybox"), b"busybox");
        assert_eq!(basename(b"wget"), b"wget");
        assert_eq!(basename(b"/x/"), b"");
    }

    #[test]
    fn percent_encoding_round_trips_and_decoding_never_fails() {
        assert_eq!(percent_encode("node a/b"), "node%20a%2Fb");
        assert_eq!(percent_encode("a-b.c_d~9"), "a-b.c_d~9");
        for s in ["node a/b", "é+%", "", "k=v,w"] {
            assert_eq!(percent_decode(&percent_encode(s), true), s);
            assert_eq!(percent_decode(&percent_encode(s), false), s);
        }
        assert_eq!(percent_decode("a+b%20c", true), "a b c");
        assert_eq!(percent_decode("a+b%20c", false), "a+b c");
        assert_eq!(percent_decode("%C3%A9%FF", false), "é\u{FFFD}");
        assert_eq!(percent_decode("%zz%4%", false), "%zz%4%");
        assert_eq!(percent_decode("%41", false), "A");
    }
}
