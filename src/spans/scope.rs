//! Where a connect went, as one word: TraceQL cannot match CIDRs, so "outside the cluster" has
//! to be an attribute (`podtrail.network.destination.scope`).
//!
//! In: a destination address and the configured cluster ranges. Out: one of `loopback`, `pod`,
//! `service`, `node`, `private` (RFC 1918, CGNAT, link-local or ULA but in no configured
//! range: inside some private network, not provably the cluster), `external`.
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`, Java's habit) is classified as the IPv4 address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address range, `10.244.0.0/16` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The cluster's address ranges, from config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// Pod network ranges (the cluster CIDR, e.g. `10.244.0.0/16`).
    pub pod_cidrs: Vec<Cidr>,
    /// Service ranges (`--service-cluster-ip-range`, e.g. `10.96.0.0/12`).
    pub service_cidrs: Vec<Cidr>,
    /// Node addresses or ranges.
    pub node_cidrs: Vec<Cidr>,
}

const PRIVATE: &[&str] =
    &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"];

impl ScopeConfig {
    pub fn classify(&self, ip: IpAddr) -> &'static str {
        let ip = normalize(ip);
        if ip.is_loopback() || ip.is_unspecified() {
            return "loopback";
        }
        let hit = |list: &[Cidr]| list.iter().any(|c| c.contains(ip));
        if hit(&self.pod_cidrs) {
            "pod"
        } else if hit(&self.service_cidrs) {
            "service"
        } else if hit(&self.node_cidrs) {
            "node"
        } else if PRIVATE.iter().filter_map(|c| c.parse::<Cidr>().ok()).any(|c| c.contains(ip)) {
            "private"
        } else {
            "external"
        }
    }
}

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
    fn bad_ranges_are_refused() {
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.255.255")));
        assert!(!c.contains(ip("172.32.0.0")));
    }
}
