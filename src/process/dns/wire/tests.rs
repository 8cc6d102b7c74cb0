use super::*;
use proptest::prelude::*;

/// A name in wire form, uncompressed.
fn name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in n.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn header(flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut h = vec![0xab, 0xcd];
    for v in [flags, qd, an, 0, 0] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    h
}

fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// A response to `q` (type A) with `records`.
fn answer(q: &str, records: &[Vec<u8>]) -> Vec<u8> {
    let mut m = header(0x8180, 1, records.len() as u16);
    m.extend(name(q));
    m.extend_from_slice(&[0, 1, 0, 1]);
    for r in records {
        m.extend_from_slice(r);
    }
    m
}

/// A pointer to the question's name (it starts right after the 12-byte header).
const TO_QUESTION: [u8; 2] = [0xc0, 12];

#[test]
fn an_address_record_names_its_address() {
    let m = answer("API.Example.test", &[rr(&TO_QUESTION, TYPE_A, 300, &[203, 0, 113, 80])]);
    let a = parse(&m, false).unwrap();
    assert_eq!(a.question, "api.example.test");
    assert_eq!(a.addrs, vec![("203.0.113.80".parse().unwrap(), 300)]);
    assert!(!a.cut);
}

#[test]
fn a_cname_chain_gives_the_addresses_to_the_name_asked_for() {
    let m = answer(
        "www.example.test",
        &[
            rr(&TO_QUESTION, TYPE_CNAME, 60, &name("edge.cdn.test")),
            rr(&name("edge.cdn.test"), TYPE_CNAME, 60, &name("api.example.test")),
            rr(&name("api.example.test"), TYPE_AAAA, 30, &"2001:db8::80".parse::<Ipv6Addr>().unwrap().octets()),
            rr(&name("api.example.test"), TYPE_A, 30, &[203, 0, 113, 80]),
            // not on the chain: a server cannot name another address this way
            rr(&name("bank.test"), TYPE_A, 30, &[198, 51, 100, 1]),
        ],
    );
    let a = parse(&m, false).unwrap();
    assert_eq!(a.question, "www.example.test");
    let ips: Vec<String> = a.addrs.iter().map(|(ip, _)| ip.to_string()).collect();
    assert_eq!(ips, ["2001:db8::80", "203.0.113.80"]);
}

#[test]
fn answers_without_addresses_and_queries() {
    let nx = answer("nothing.test", &[]);
    assert_eq!(parse(&nx, false).unwrap().addrs, vec![]);
    let mut q = answer("x.test", &[]);
    q[2] = 0x01; // QR clear: a query
    assert_eq!(parse(&q, false), Err(WireError::NotAnswer));
    let mut two = answer("x.test", &[]);
    two[5] = 2;
    assert_eq!(parse(&two, false), Err(WireError::NotAnswer));
}

#[test]
fn a_message_cut_by_the_kernel_keeps_its_whole_records() {
    let m = answer(
        "many.test",
        &[rr(&TO_QUESTION, TYPE_A, 5, &[10, 0, 0, 1]), rr(&TO_QUESTION, TYPE_A, 5, &[10, 0, 0, 2])],
    );
    let cut = &m[..m.len() - 3];
    let a = parse(cut, true).unwrap();
    assert_eq!(a.addrs, vec![("10.0.0.1".parse().unwrap(), 5)]);
    assert!(a.cut);
    // the same bytes claiming to be whole are a lie
    assert_eq!(parse(cut, false), Err(WireError::Short("record data")));
}

#[test]
fn hostile_names_are_errors_not_loops() {
    // a pointer to itself, forwards, and two pointing at each other
    let mut m = header(0x8180, 1, 0);
    m.extend_from_slice(&[0xc0, 12]);
    assert_eq!(parse(&m, false), Err(WireError::BadPointer));
    let mut m = header(0x8180, 1, 0);
    m.extend_from_slice(&[0xc0, 40, 0, 1, 0, 1]);
    assert_eq!(parse(&m, false), Err(WireError::BadPointer));
    // a record's owner: a label ending in a pointer back to that label, each lap "backwards"
    let mut looped = header(0x8180, 1, 1);
    looped.extend_from_slice(&[0, 0, 1, 0, 1]);
    looped.extend_from_slice(&[1, b'a', 0xc0, 17]);
    assert_eq!(parse(&looped, false), Err(WireError::BadPointer));
    // reserved label types, a name over 255 octets, a label past the end
    let mut m = header(0x8180, 1, 0);
    m.extend_from_slice(&[0x41, 0]);
    assert_eq!(parse(&m, false), Err(WireError::BadLabel));
    let long = ["abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0"; 5].join(".");
    assert_eq!(parse(&answer(&long, &[]), false), Err(WireError::LongName));
    let mut m = header(0x8180, 1, 0);
    m.extend_from_slice(&[60, b'a']);
    assert_eq!(parse(&m, false), Err(WireError::Short("label")));
    // an A record of 3 bytes
    let m = answer("x.test", &[rr(&TO_QUESTION, TYPE_A, 5, &[1, 2, 3])]);
    assert_eq!(parse(&m, false), Err(WireError::BadRdata("A")));
}

#[test]
fn a_cname_loop_ends() {
    let m = answer(
        "a.test",
        &[
            rr(&TO_QUESTION, TYPE_CNAME, 5, &name("b.test")),
            rr(&name("b.test"), TYPE_CNAME, 5, &name("a.test")),
            rr(&name("b.test"), TYPE_A, 5, &[10, 9, 9, 9]),
        ],
    );
    assert_eq!(parse(&m, false).unwrap().addrs, vec![("10.9.9.9".parse().unwrap(), 5)]);
}

#[test]
fn odd_bytes_in_labels_are_escaped() {
    let mut m = header(0x8180, 1, 0);
    m.extend_from_slice(&[3, b'a', b'.', 0xff, 2, b'\\', b' ', 0, 0, 1, 0, 1]);
    assert_eq!(parse(&m, false).unwrap().question, "a\\.\\255.\\\\\\032");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20000))]
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<bool>()) {
        let _ = parse(&bytes, cut);
    }

    /// A real answer with some of its bytes replaced: the hostile inputs that get furthest.
    #[test]
    fn parse_never_panics_on_damaged_answers(
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
        keep in 12usize..200,
        cut in any::<bool>(),
    ) {
        let mut m = answer(
            "www.example.test",
            &[
                rr(&TO_QUESTION, TYPE_CNAME, 60, &[3, b'a', b'p', b'i', 0xc0, 16]),
                rr(&[3, b'a', b'p', b'i', 0xc0, 16], TYPE_A, 30, &[203, 0, 113, 80]),
            ],
        );
        for (at, b) in edits {
            if let Some(x) = m.get_mut(at) {
                *x = b;
            }
        }
        m.truncate(keep);
        if let Ok(a) = parse(&m, cut) {
            prop_assert!(a.addrs.len() <= MAX_ADDRS);
            prop_assert!(a.question.len() <= 4 * MAX_NAME);
        }
    }
}
