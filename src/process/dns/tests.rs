use super::*;
use crate::process::metrics::ProcessMetrics;

const S: u64 = 1_000_000_000;

/// An answer to `q` giving it `ips` with `ttl`, as the kernel would hand it over.
fn ev(cgroup_id: u64, ts_ns: u64, q: &str, ips: &[[u8; 4]], ttl: u32) -> DnsEvent {
    let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, ips.len() as u8, 0, 0, 0, 0];
    for l in q.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    for ip in ips {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 4]);
        m.extend_from_slice(ip);
    }
    DnsEvent {
        ts_ns,
        cgroup_id,
        server: ("203.0.113.53".parse().unwrap(), 53),
        msg_len: m.len() as u16,
        truncated: false,
        payload: m,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn answers(m: &ProcessMetrics, r: &'static str) -> u64 {
    m.dns.answers.get_or_create(&vec![("result", r)]).get()
}

#[test]
fn a_name_is_per_container_and_lives_its_ttl_raised_to_the_floor() {
    let m = ProcessMetrics::default();
    let cfg = DnsConfig { min_ttl_s: 10, max_ttl_s: 100, ..Default::default() };
    let mut d = DnsNames::new(&cfg, &m);
    d.learn(&ev(1, 0, "api.example.test", &[[203, 0, 113, 80]], 0));
    d.learn(&ev(2, 0, "long.example.test", &[[203, 0, 113, 81]], 100_000));
    assert_eq!(d.name_for(1, ip("203.0.113.80"), 9 * S).as_deref(), Some("api.example.test"));
    assert_eq!(d.name_for(2, ip("203.0.113.80"), 1), None, "another container never asked");
    // TTL 0 kept for the 10 s floor, then gone; a week-long TTL cut to 100 s
    assert_eq!(d.name_for(1, ip("203.0.113.80"), 11 * S), None);
    assert_eq!(d.name_for(2, ip("203.0.113.81"), 99 * S).as_deref(), Some("long.example.test"));
    assert_eq!(d.name_for(2, ip("203.0.113.81"), 101 * S), None);
    assert_eq!(d.len(), 0);
    assert_eq!(m.dns.destinations.get_or_create(&vec![("name", "known")]).get(), 2);
    assert_eq!(m.dns.destinations.get_or_create(&vec![("name", "unknown")]).get(), 3);
    assert_eq!(answers(&m, "names"), 2);
}

#[test]
fn the_latest_answer_for_an_address_wins() {
    let mut d = DnsNames::default();
    d.learn(&ev(1, 0, "old.test", &[[10, 0, 0, 1]], 60));
    d.learn(&ev(1, S, "new.test", &[[10, 0, 0, 1]], 60));
    assert_eq!(d.name_for(1, ip("10.0.0.1"), 2 * S).as_deref(), Some("new.test"));
    assert_eq!(d.len(), 1);
}

#[test]
fn both_bounds_forget_the_least_recently_used_and_count_it() {
    let m = ProcessMetrics::default();
    let cfg = DnsConfig { max_names_per_container: 2, max_containers: 2, ..Default::default() };
    let mut d = DnsNames::new(&cfg, &m);
    d.learn(&ev(1, 0, "three.test", &[[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]], 60));
    assert_eq!(d.len(), 2);
    assert_eq!(d.name_for(1, ip("10.0.0.1"), 1), None, "the oldest address went");
    d.learn(&ev(2, 0, "b.test", &[[10, 0, 0, 9]], 60));
    d.learn(&ev(3, 0, "c.test", &[[10, 0, 0, 9]], 60));
    assert_eq!(d.name_for(1, ip("10.0.0.3"), 1), None, "cgroup 1 was the least recently used");
    assert_eq!(d.len(), 2);
    let ev_of = |c| m.cache_evictions.get_or_create(&vec![("cache", c)]).get();
    assert_eq!((ev_of("dns_names"), ev_of("dns_containers")), (1, 1));
    assert_eq!(m.dns.names.get(), 2);
}

#[test]
fn bad_messages_are_counted_by_what_they_are() {
    let m = ProcessMetrics::default();
    let mut d = DnsNames::new(&DnsConfig::default(), &m);
    let mut garbled = ev(1, 0, "x.test", &[[10, 0, 0, 1]], 60);
    garbled.payload[12] = 0xc0; // the question's name: a pointer to itself
    garbled.payload[13] = 12;
    d.learn(&garbled);
    let mut query = ev(1, 0, "x.test", &[], 60);
    query.payload[2] = 0;
    d.learn(&query);
    d.learn(&ev(1, 0, "nx.test", &[], 60));
    let mut cut = ev(1, 0, "cut.test", &[[10, 0, 0, 1]], 60);
    cut.payload.truncate(cut.payload.len() - 2);
    cut.truncated = true;
    d.learn(&cut);
    let got: Vec<u64> = RESULTS.iter().map(|r| answers(&m, r)).collect();
    assert_eq!(got, [0, 1, 1, 1, 1], "{RESULTS:?}");
    assert!(d.is_empty());
}

#[test]
fn the_config_is_checked() {
    assert!(DnsConfig::default().check().is_ok());
    assert!(DnsConfig { max_containers: 0, ..Default::default() }.check().is_err());
    assert!(DnsConfig { min_ttl_s: 10, max_ttl_s: 5, ..Default::default() }.check().is_err());
    assert!(DnsConfig { max_containers: 1 << 20, max_names_per_container: 1 << 10, ..Default::default() }
        .check()
        .is_err());
}
