//! The check the durable queue makes on a record read from its file before sending it without
//! decoding it ([`well_formed`]).
//!
//! In: a record's bytes after its metadata. Out: whether they can go into a request as a
//! `Span` message. Nothing is dropped here (the caller counts a record that fails).

/// Whether `b` is a sequence of well-formed protobuf fields (keys, lengths within the
/// message) with a span's trace and span id: the check the durable queue makes on a record it
/// sends without decoding (its checksum already caught damage on disk; this catches a record
/// that was never a span).
pub fn well_formed(mut b: &[u8]) -> bool {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= ((x & 0x7f) as u64) << shift;
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }
    /// A varint of one byte (every key of a span's fields but its flags', most lengths)
    /// without the loop, else [`varint`].
    #[inline(always)]
    fn short_varint(b: &mut &[u8]) -> Option<u64> {
        match b.split_first() {
            Some((&x, rest)) if x < 0x80 => {
                *b = rest;
                Some(x as u64)
            }
            _ => varint(b),
        }
    }
    let mut ids = 0;
    while !b.is_empty() {
        let Some(key) = short_varint(&mut b) else { return false };
        if key >> 3 == 0 {
            return false;
        }
        let skip = match key & 7 {
            0 => match short_varint(&mut b) {
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            5 => 4,
            2 => match short_varint(&mut b) {
                Some(n) if n <= b.len() as u64 => {
                    if (key == (1 << 3 | 2) && n == 16) || (key == (2 << 3 | 2) && n == 8) {
                        ids += 1;
                    }
                    n as usize
                }
                _ => return false,
            },
            _ => return false,
        };
        let Some(rest) = b.get(skip..) else { return false };
        b = rest;
    }
    ids == 2
}
