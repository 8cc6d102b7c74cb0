//! Where a connect went, as one word: TraceQL cannot match CIDRs, so "outside the cluster" has
//! to be an attribute (`podtrail.network.destination.scope`).
//!
//! In: a destination address and the configured cluster ranges. Out: one of `loopback`, `pod`,
//! `service`, `node`, `private` (RFC 1918, CGNAT, link-local or ULA but in no configured
//! range: inside some private network, not provably the cluster), `external`.
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`, Java's habit) is classified as the IPv4 address.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, RwLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address range, `10.244.0.0/16` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an address range like 10.0.0.0/8")]
    Syntax(String),
    #[error("prefix length {1} is too long for {0}")]
    Prefix(String, u8),
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.trim().split_once('/').ok_or_else(|| CidrError::Syntax(s.into()))?;
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let prefix: u8 = p.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::Prefix(s.into(), prefix));
        }
        Ok(Cidr { addr: normalize(addr), prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Cidr {
    /// One address: `/32` or `/128`.
    pub fn host(ip: IpAddr) -> Cidr {
        let addr = normalize(ip);
        Cidr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalize(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The cluster's address ranges: the configured ones, plus those learned from the Kubernetes
/// API at run time ([`LearnedRanges`], shared by every clone, so the process stage, the span
/// builder and the rules all classify against the same, current ranges).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// Pod network ranges (the cluster CIDR, e.g. `10.244.0.0/16`).
    pub pod_cidrs: Vec<Cidr>,
    /// Service ranges (`--service-cluster-ip-range`, e.g. `10.96.0.0/12`).
    pub service_cidrs: Vec<Cidr>,
    /// Node addresses or ranges.
    pub node_cidrs: Vec<Cidr>,
    /// Also learn ranges from the Kubernetes API when the agent watches it (`[kube] watch`):
    /// nodes' `spec.podCIDRs` (pod), their InternalIP/ExternalIP addresses (node) and the
    /// `networking.k8s.io/v1` ServiceCIDRs (service). Learned ranges are added to the ones
    /// above.
    pub learn: bool,
    /// What was learned, kept up to date by the API watches (not configuration).
    #[serde(skip)]
    pub learned: LearnedRanges,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        ScopeConfig {
            pod_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            node_cidrs: Vec::new(),
            learn: true,
            learned: LearnedRanges::default(),
        }
    }
}

static PRIVATE: LazyLock<Vec<Cidr>> = LazyLock::new(|| {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"]
        .iter()
        .map(|c| c.parse().expect("a valid range"))
        .collect()
});

impl ScopeConfig {
    /// Runs per connect: the configured lists are a handful of entries, the learned ones are
    /// looked up by prefix length (a few hash probes however many nodes the cluster has).
    pub fn classify(&self, ip: IpAddr) -> &'static str {
        let ip = normalize(ip);
        if ip.is_loopback() || ip.is_unspecified() {
            return "loopback";
        }
        let hit = |list: &[Cidr]| list.iter().any(|c| c.contains(ip));
        let learned = self.learned.read();
        if hit(&self.pod_cidrs) || learned.pod.contains(ip) {
            "pod"
        } else if hit(&self.service_cidrs) || learned.service.contains(ip) {
            "service"
        } else if hit(&self.node_cidrs) || learned.node.contains(ip) {
            "node"
        } else if hit(&PRIVATE) {
            "private"
        } else {
            "external"
        }
    }

    /// The configured ranges of one kind.
    pub fn configured(&self, kind: RangeKind) -> &[Cidr] {
        match kind {
            RangeKind::Pod => &self.pod_cidrs,
            RangeKind::Service => &self.service_cidrs,
            RangeKind::Node => &self.node_cidrs,
        }
    }
}

/// The cluster networks a destination can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RangeKind {
    Pod,
    Service,
    Node,
}

impl RangeKind {
    pub const ALL: [RangeKind; 3] = [RangeKind::Pod, RangeKind::Service, RangeKind::Node];

    /// The scope word (`podtrail.network.destination.scope`).
    pub fn as_str(self) -> &'static str {
        match self {
            RangeKind::Pod => "pod",
            RangeKind::Service => "service",
            RangeKind::Node => "node",
        }
    }
}

/// A set of ranges answering "does one contain this address" with one hash probe per distinct
/// prefix length: learned ranges grow with the cluster (a podCIDR and an address or two per
/// node), and a linear scan would cost every connect that much.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// (is IPv6, prefix length) -> masked network addresses, as u128.
    by_prefix: Vec<((bool, u8), HashSet<u128>)>,
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match normalize(ip) {
        IpAddr::V4(v4) => (false, u32::from(v4) as u128),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

fn masked(v6: bool, value: u128, prefix: u8) -> u128 {
    let width = if v6 { 128 } else { 32 };
    if prefix == 0 {
        0
    } else {
        value & (u128::MAX << (width - prefix as u32))
    }
}

impl CidrSet {
    pub fn insert(&mut self, c: Cidr) {
        let (v6, value) = bits(c.addr);
        let key = (v6, c.prefix);
        let net = masked(v6, value, c.prefix);
        match self.by_prefix.iter_mut().find(|(k, _)| *k == key) {
            Some((_, set)) => {
                set.insert(net);
            }
            None => {
                self.by_prefix.push((key, HashSet::from([net])));
                self.by_prefix.sort_by_key(|(k, _)| *k);
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v6, value) = bits(ip);
        self.by_prefix
            .iter()
            .filter(|((f, _), _)| *f == v6)
            .any(|((_, prefix), set)| set.contains(&masked(v6, value, *prefix)))
    }
}

impl FromIterator<Cidr> for CidrSet {
    fn from_iter<I: IntoIterator<Item = Cidr>>(iter: I) -> Self {
        let mut s = CidrSet::default();
        for c in iter {
            s.insert(c);
        }
        s
    }
}

/// Ranges learned at run time, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LearnedTable {
    pub pod: CidrSet,
    pub service: CidrSet,
    pub node: CidrSet,
}

/// The learned ranges, shared: cheap to clone, every clone sees the latest [`LearnedRanges::set`].
/// Readers (one per connect) take a read lock for a few hash probes; the writer builds the new
/// table before it takes the write lock.
#[derive(Clone, Default)]
pub struct LearnedRanges(Arc<RwLock<LearnedTable>>);

impl LearnedRanges {
    /// Replace everything learned with `ranges`.
    pub fn set(&self, ranges: impl IntoIterator<Item = (RangeKind, Cidr)>) {
        let mut t = LearnedTable::default();
        for (kind, c) in ranges {
            match kind {
                RangeKind::Pod => t.pod.insert(c),
                RangeKind::Service => t.service.insert(c),
                RangeKind::Node => t.node.insert(c),
            }
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, LearnedTable> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for LearnedRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.read().fmt(f)
    }
}

/// Equal when they hold the same ranges (a config compares equal to its defaults until
/// something is learned).
impl PartialEq for LearnedRanges {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.read() == *other.read()
    }
}

impl Eq for LearnedRanges {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_by_configured_ranges_then_private_then_external() {
        let cfg = ScopeConfig {
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            node_cidrs: vec!["192.168.49.2/32".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(cfg.classify(ip("127.0.0.53")), "loopback");
        assert_eq!(cfg.classify(ip("::1")), "loopback");
        assert_eq!(cfg.classify(ip("10.244.3.7")), "pod");
        assert_eq!(cfg.classify(ip("10.100.0.10")), "service");
        assert_eq!(cfg.classify(ip("192.168.49.2")), "node");
        assert_eq!(cfg.classify(ip("192.168.49.3")), "private");
        assert_eq!(cfg.classify(ip("10.1.2.3")), "private");
        assert_eq!(cfg.classify(ip("fd12::1")), "private");
        assert_eq!(cfg.classify(ip("1.1.1.1")), "external");
        assert_eq!(cfg.classify(ip("2606:4700::1111")), "external");
    }

    #[test]
    fn ipv4_mapped_ipv6_is_classified_as_ipv4() {
        let cfg = ScopeConfig { pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()], ..Default::default() };
        assert_eq!(cfg.classify(ip("::ffff:10.244.1.1")), "pod");
        assert_eq!(cfg.classify(ip("::ffff:127.0.0.1")), "loopback");
        assert_eq!(cfg.classify(ip("::ffff:8.8.8.8")), "external");
    }

    #[test]
    fn learned_ranges_reach_every_clone_and_join_the_configured_ones() {
        let cfg = ScopeConfig { pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()], ..Default::default() };
        let other_stage = cfg.clone();
        assert_eq!(other_stage.classify(ip("10.244.1.9")), "private");
        assert_eq!(cfg, ScopeConfig { pod_cidrs: cfg.pod_cidrs.clone(), ..Default::default() }, "nothing learned yet");
        cfg.learned.set([
            (RangeKind::Pod, "10.244.1.0/24".parse().unwrap()),
            (RangeKind::Pod, "fd00:10:244:1::/64".parse().unwrap()),
            (RangeKind::Service, "10.96.0.0/16".parse().unwrap()),
            (RangeKind::Node, Cidr::host(ip("203.0.113.5"))),
        ]);
        assert_eq!(other_stage.classify(ip("10.244.0.3")), "pod", "configured");
        assert_eq!(other_stage.classify(ip("10.244.1.9")), "pod", "learned");
        assert_eq!(other_stage.classify(ip("::ffff:10.244.1.9")), "pod");
        assert_eq!(other_stage.classify(ip("fd00:10:244:1::7")), "pod");
        assert_eq!(other_stage.classify(ip("fd00:10:244:2::7")), "private");
        assert_eq!(other_stage.classify(ip("10.96.200.1")), "service");
        assert_eq!(other_stage.classify(ip("203.0.113.5")), "node");
        assert_eq!(other_stage.classify(ip("203.0.113.6")), "external");
        cfg.learned.set([]);
        assert_eq!(other_stage.classify(ip("10.244.1.9")), "private", "forgotten");
        assert_eq!(other_stage.classify(ip("203.0.113.5")), "external");
    }

    #[test]
    fn cidr_set_matches_like_a_scan_of_its_ranges() {
        let ranges: Vec<Cidr> =
            ["10.0.0.0/8", "10.244.7.0/24", "192.168.1.1/32", "0.0.0.0/0", "2001:db8::/32", "fd00::1/128"]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect();
        for n in 1..=ranges.len() {
            let some = &ranges[..n];
            let set: CidrSet = some.iter().copied().collect();
            for a in [
                "10.1.2.3",
                "10.244.7.255",
                "11.0.0.1",
                "192.168.1.1",
                "192.168.1.2",
                "2001:db8:1::1",
                "2001:db9::1",
                "fd00::1",
                "fd00::2",
                "::ffff:10.0.0.1",
            ] {
                assert_eq!(set.contains(ip(a)), some.iter().any(|c| c.contains(ip(a))), "{a} in {some:?}");
            }
        }
        let unmasked: CidrSet = ["10.244.7.9/24".parse().unwrap()].into_iter().collect();
        assert!(unmasked.contains(ip("10.244.7.200")), "host bits in the range are ignored");
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.255.255")));
        assert!(!c.contains(ip("172.32.0.0")));
    }
}
