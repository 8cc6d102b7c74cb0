//! A small, defensive reader of DNS answers (RFC 1035 wire format): what name the question
//! asked for, and which addresses the answer gave it, through any CNAME chain.
//!
//! In: the bytes of a UDP datagram that came from port 53, as the kernel copied them (perhaps
//! cut at 512 bytes), from anyone: nothing in it is trusted. Out: an [`Answer`] or a
//! [`WireError`] naming why not. It never panics and always ends: every read is bounds
//! checked, each compression pointer must land before the previous one's target (so a chain
//! of them cannot loop) and is followed at most [`MAX_HOPS`] times, names stop at 255
//! octets, records at
//! [`MAX_RECORDS`]. The property tests below feed it random and hostile messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A name longer than this many octets is malformed (RFC 1035).
const MAX_NAME: usize = 255;
/// Compression pointers followed for one name.
const MAX_HOPS: usize = 32;
/// Resource records read from one message (a 512-byte message holds fewer).
const MAX_RECORDS: usize = 128;
/// Addresses taken from one answer.
pub const MAX_ADDRS: usize = 32;
/// CNAME links followed from the question's name.
const MAX_CHAIN: usize = 16;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// What an answer said: the name the process asked for, and the addresses the answer gave
/// it (directly or at the end of a CNAME chain), each with its TTL in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The question's name, lower case, without the final dot (`\DDD` for bytes that are not
    /// printable ASCII, `\.` for a dot inside a label).
    pub question: String,
    pub addrs: Vec<(IpAddr, u32)>,
    /// The message ended before its last record (the kernel keeps 512 bytes): `addrs` are
    /// those of the records that were whole.
    pub cut: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A query, or an opcode other than QUERY, or not exactly one question: not an answer
    /// a resolver would use.
    #[error("not an answer to one question")]
    NotAnswer,
    #[error("message ends inside {0}")]
    Short(&'static str),
    #[error("compression pointer that does not point backwards")]
    BadPointer,
    #[error("too many compression pointers in one name")]
    TooManyHops,
    #[error("name longer than 255 bytes")]
    LongName,
    #[error("reserved label type")]
    BadLabel,
    #[error("{0} record with a wrong length")]
    BadRdata(&'static str),
}

struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Short(what))?;
        let b = self.msg.get(self.at..end).ok_or(WireError::Short(what))?;
        self.at = end;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A (possibly compressed) name at the cursor; the cursor moves past its encoding here.
    fn name(&mut self) -> Result<String, WireError> {
        let (name, end) = read_name(self.msg, self.at)?;
        self.at = end;
        Ok(name)
    }
}

/// Reads the name at `start`: its presentation form (lower case) and where its encoding ends
/// in the message (after the first pointer, or the root label).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), WireError> {
    let mut out = String::new();
    let mut at = start;
    let mut end = None;
    let mut hops = 0;
    // octets of the name as RFC 1035 counts them (labels and their length bytes)
    let mut octets = 1;
    // every pointer must land before the previous one's target (or the name's start): the
    // targets strictly decrease, so no chain of pointers can loop
    let mut floor = start;
    loop {
        let len = *msg.get(at).ok_or(WireError::Short("name"))? as usize;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((out, end.unwrap_or(at + 1)));
                }
                let label = msg.get(at + 1..at + 1 + len).ok_or(WireError::Short("label"))?;
                if !out.is_empty() {
                    out.push('.');
                }
                octets += 1 + len;
                if octets > MAX_NAME {
                    return Err(WireError::LongName);
                }
                push_label(&mut out, label);
                at += 1 + len;
            }
            0xc0 => {
                let lo = *msg.get(at + 1).ok_or(WireError::Short("pointer"))? as usize;
                let target = ((len & 0x3f) << 8) | lo;
                if target >= floor {
                    return Err(WireError::BadPointer);
                }
                floor = target;
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(WireError::TooManyHops);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// A label in presentation form, lower case: printable ASCII as is (a dot or a backslash
/// escaped), any other byte as `\DDD`, so a name is one readable, unambiguous string.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x21..=0x7e => out.push(b.to_ascii_lowercase() as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
}

/// One resource record as far as this reader cares.
enum Record {
    Addr(String, IpAddr, u32),
    Cname(String, String),
    Other,
}

fn record(r: &mut Reader) -> Result<Record, WireError> {
    let owner = r.name()?;
    let rtype = r.u16("record type")?;
    let class = r.u16("record class")?;
    let ttl = r.u32("record ttl")?;
    let len = r.u16("record length")? as usize;
    let rdata_at = r.at;
    let rdata = r.bytes(len, "record data")?;
    if class != CLASS_IN {
        return Ok(Record::Other);
    }
    // RFC 2181: a TTL with the top bit set is read as 0
    let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
    Ok(match rtype {
        TYPE_A => {
            let a: [u8; 4] = rdata.try_into().map_err(|_| WireError::BadRdata("A"))?;
            Record::Addr(owner, IpAddr::V4(Ipv4Addr::from(a)), ttl)
        }
        TYPE_AAAA => {
            let a: [u8; 16] = rdata.try_into().map_err(|_| WireError::BadRdata("AAAA"))?;
            Record::Addr(owner, IpAddr::V6(Ipv6Addr::from(a)), ttl)
        }
        TYPE_CNAME => {
            let (target, end) = read_name(r.msg, rdata_at)?;
            if end != rdata_at + len {
                return Err(WireError::BadRdata("CNAME"));
            }
            Record::Cname(owner, target)
        }
        _ => Record::Other,
    })
}

/// Parses one DNS message. `cut`: the kernel kept only its start, so a record that runs past
/// the end is where the copy stopped, not a lie (the records before it are used).
pub fn parse(msg: &[u8], cut: bool) -> Result<Answer, WireError> {
    let mut r = Reader { msg, at: 0 };
    let _id = r.u16("header")?;
    let flags = r.u16("header")?;
    let qd = r.u16("header")?;
    let an = r.u16("header")?;
    let _ns = r.u16("header")?;
    let _ar = r.u16("header")?;
    let response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if !response || opcode != 0 || qd != 1 {
        return Err(WireError::NotAnswer);
    }
    let question = r.name()?;
    let _qtype = r.u16("question")?;
    let _qclass = r.u16("question")?;

    let mut addrs = Vec::new();
    let mut cnames = Vec::new();
    let mut was_cut = false;
    for _ in 0..(an as usize).min(MAX_RECORDS) {
        match record(&mut r) {
            Ok(Record::Addr(owner, ip, ttl)) => addrs.push((owner, ip, ttl)),
            Ok(Record::Cname(owner, target)) => cnames.push((owner, target)),
            Ok(Record::Other) => {}
            Err(WireError::Short(_)) if cut => {
                was_cut = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    // the names that stand for the question: itself and the CNAME chain from it (records
    // about other names are not the question's, whatever the server put there)
    let mut chain = vec![question.clone()];
    for _ in 0..MAX_CHAIN {
        let last = chain.last().expect("starts with the question");
        match cnames.iter().find(|(owner, _)| owner == last) {
            Some((_, target)) if !chain.contains(target) => chain.push(target.clone()),
            _ => break,
        }
    }
    let addrs = addrs
        .into_iter()
        .filter(|(owner, ..)| chain.contains(owner))
        .map(|(_, ip, ttl)| (crate::scope::normalize(ip), ttl))
        .take(MAX_ADDRS)
        .collect();
    Ok(Answer { question, addrs, cut: was_cut })
}

#[cfg(test)]
mod tests;
