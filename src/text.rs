//! The one rule for turning kernel bytes into text: valid UTF-8 stays as it is, every byte
//! that is not part of valid UTF-8 becomes `\xNN`, and a literal backslash becomes `\\` so the
//! result can be read back without ambiguity. Used by the JSON capture output, the console
//! tree and span attributes alike. Also the one percent-encoder and decoder (URL queries,
//! audit request URIs, OTLP header values).

use serde::Serializer;

pub fn escape(bytes: &[u8]) -> String {
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

pub fn ser_bytes<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escape(b))
}

pub fn ser_opt_bytes<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&escape(b)),
        None => s.serialize_none(),
    }
}

pub fn ser_bytes_list<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|b| escape(b)))
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
    fn invalid_utf8_becomes_hex_and_backslash_is_doubled() {
        assert_eq!(escape(b"a b"), "a b");
        assert_eq!(escape(b"caf\xc3\xa9"), "café");
        assert_eq!(escape(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape(b"a\\xff"), "a\\\\xff");
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
