//! The one rule for turning kernel bytes into text: valid UTF-8 stays as it is, every byte
//! that is not part of valid UTF-8 becomes `\xNN`, and a literal backslash becomes `\\` so the
//! result can be read back without ambiguity. Used by the JSON capture output, the console
//! tree and span attributes alike.

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
}
