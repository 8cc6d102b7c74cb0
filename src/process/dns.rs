//! Destination names: what DNS answers told each container, so a connect to an address can
//! say which name its process looked up (`api.stripe.com`, not `52.1.2.3`).
//!
//! In: [`DnsEvent`]s (a UDP datagram from port 53 delivered to a socket, its first 512 bytes,
//! with the receiving socket's cgroup), in ring order, so an answer is read before the
//! connect that follows it. Out: [`DnsNames::name_for`], the name an address of a cgroup was
//! last given. Parsing is [`wire`]'s (defensive: a bad message is a counted error).
//!
//! The cache is per cgroup (a container), bounded twice: `max_names_per_container` addresses
//! per cgroup and `max_containers` cgroups, each forgetting its least recently used entry
//! when full (counted, `podtrail_process_cache_evictions_total{cache="dns_names"|
//! "dns_containers"}`). An entry lives for its answer's TTL, raised to `min_ttl_s` (a TTL of
//! 0 or 5 s, common for local and cluster records, would otherwise expire before a
//! connection pool reconnects) and cut to `max_ttl_s`. One address answered for several
//! names keeps the latest: the lookup right before a connect is the one it used.
//!
//! What it cannot know: a name resolved by a lookup it did not see (DNS over TCP, DoT, DoH,
//! `/etc/hosts`, an answer older than the cache), and whether the answer was true: anything
//! that can deliver a datagram from port 53 to the container's socket can make an address
//! look like a name. The IP always stays on the span (`network.peer.address`).

use std::net::IpAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::capture::event::DnsEvent;
use crate::lru::Lru;

pub mod wire;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Addresses (each with the name an answer gave it) kept per container.
    pub max_names_per_container: usize,
    /// Containers (cgroups) whose names are kept.
    pub max_containers: usize,
    /// An answer's name is kept at least this long (seconds), whatever its TTL.
    pub min_ttl_s: u64,
    /// And at most this long.
    pub max_ttl_s: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { max_names_per_container: 1024, max_containers: 4096, min_ttl_s: 300, max_ttl_s: 86_400 }
    }
}

impl DnsConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.max_names_per_container == 0 || self.max_containers == 0 {
            return Err("max_names_per_container and max_containers must be at least 1".into());
        }
        if self.max_names_per_container.saturating_mul(self.max_containers) > 16 << 20 {
            return Err(format!(
                "max_names_per_container x max_containers ({} x {}) is over 16 Mi names: memory",
                self.max_names_per_container, self.max_containers
            ));
        }
        if self.min_ttl_s > self.max_ttl_s {
            return Err(format!("min_ttl_s ({}) is above max_ttl_s ({})", self.min_ttl_s, self.max_ttl_s));
        }
        Ok(())
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// The series the cache counts into (cheap to clone: clones share them).
#[derive(Clone, Debug, Default)]
pub struct DnsMetrics {
    /// `podtrail_dns_answers_total{result}`.
    pub answers: Family<Labels, Counter>,
    /// `podtrail_dns_names`: addresses with a name, over all containers.
    pub names: Gauge,
    /// `podtrail_dns_destinations_total{name}`: connects and datagrams given a name or not.
    pub destinations: Family<Labels, Counter>,
}

impl DnsMetrics {
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        reg.register(
            "podtrail_dns_answers",
            "DNS messages from port 53 delivered to sockets, by result (names: gave names to addresses; \
             no_address: an answer without addresses for its question, e.g. NXDOMAIN; not_answer: a query \
             or another opcode; cut: cut at 512 bytes before any address record; malformed: could not be \
             parsed, dropped)",
            self.answers.clone(),
        );
        reg.register(
            "podtrail_dns_names",
            "Addresses the DNS cache holds a name for, over all containers",
            self.names.clone(),
        );
        reg.register(
            "podtrail_dns_destinations",
            "Connects and datagrams by whether a DNS answer named their destination (name: known, unknown)",
            self.destinations.clone(),
        );
    }
}

/// What one answer did, as counted in `podtrail_dns_answers_total{result}`.
pub const RESULTS: [&str; 5] = ["names", "no_address", "not_answer", "cut", "malformed"];

#[derive(Clone, Debug)]
struct Entry {
    name: Arc<str>,
    expires_ns: u64,
}

/// The per-container cache of names (see the module's docs).
pub struct DnsNames {
    by_cgroup: Lru<u64, Lru<IpAddr, Entry>>,
    per_container: usize,
    min_ttl_ns: u64,
    max_ttl_ns: u64,
    /// Entries over all cgroups (the gauge).
    entries: usize,
    results: [Counter; RESULTS.len()],
    names_evicted: Counter,
    containers_evicted: Counter,
    known: Counter,
    unknown: Counter,
    names: Gauge,
    malformed_logged: u64,
}

impl Default for DnsNames {
    fn default() -> Self {
        DnsNames::new(&DnsConfig::default(), &crate::process::metrics::ProcessMetrics::default())
    }
}

impl DnsNames {
    /// Counts into `m`'s series (`m.dns`, and `m.cache_evictions` for what it forgets).
    pub fn new(cfg: &DnsConfig, m: &crate::process::metrics::ProcessMetrics) -> Self {
        let evicted = |cache| m.cache_evictions.get_or_create(&vec![("cache", cache)]).clone();
        let dest = |name| m.dns.destinations.get_or_create(&vec![("name", name)]).clone();
        DnsNames {
            by_cgroup: Lru::new(cfg.max_containers),
            per_container: cfg.max_names_per_container,
            min_ttl_ns: cfg.min_ttl_s.saturating_mul(1_000_000_000),
            max_ttl_ns: cfg.max_ttl_s.saturating_mul(1_000_000_000),
            entries: 0,
            results: RESULTS.map(|r| m.dns.answers.get_or_create(&vec![("result", r)]).clone()),
            names_evicted: evicted("dns_names"),
            containers_evicted: evicted("dns_containers"),
            known: dest("known"),
            unknown: dest("unknown"),
            names: m.dns.names.clone(),
            malformed_logged: 0,
        }
    }

    fn count(&self, result: &str) {
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            self.results[i].inc();
        }
    }

    /// Learns the names one DNS message gives its cgroup's addresses.
    pub fn learn(&mut self, ev: &DnsEvent) {
        let answer = match wire::parse(&ev.payload, ev.truncated) {
            Ok(a) => a,
            Err(wire::WireError::NotAnswer) => return self.count("not_answer"),
            Err(e) => {
                self.count("malformed");
                self.malformed_logged += 1;
                // a flood of bad answers is one line per power of two, not one per answer
                if self.malformed_logged.is_power_of_two() {
                    tracing::warn!(
                        cgroup_id = ev.cgroup_id,
                        server = %ev.server.0,
                        error = %e,
                        malformed = self.malformed_logged,
                        "DNS answer that could not be parsed: dropped (its names stay unknown)"
                    );
                }
                return;
            }
        };
        if answer.addrs.is_empty() {
            return self.count(if answer.cut { "cut" } else { "no_address" });
        }
        self.count("names");
        let name: Arc<str> = Arc::from(answer.question.as_str());
        let per = self.per_container;
        let gone = if self.by_cgroup.contains_key(&ev.cgroup_id) {
            None
        } else {
            self.by_cgroup.insert(ev.cgroup_id, Lru::new(per))
        };
        if let Some((_, old)) = gone {
            self.entries -= old.len();
            self.containers_evicted.inc();
        }
        let Some(cache) = self.by_cgroup.get_mut(&ev.cgroup_id) else { return };
        for (ip, ttl) in answer.addrs {
            let ttl_ns = (ttl as u64 * 1_000_000_000).clamp(self.min_ttl_ns, self.max_ttl_ns);
            let new = !cache.contains_key(&ip);
            let entry = Entry { name: name.clone(), expires_ns: ev.ts_ns.saturating_add(ttl_ns) };
            if cache.insert(ip, entry).is_some() {
                self.names_evicted.inc();
            } else if new {
                self.entries += 1;
            }
        }
        self.names.set(self.entries as i64);
    }

    /// The name an answer gave `addr` in `cgroup_id`, if it is still fresh at `now_ns`;
    /// counted as a destination named or not.
    pub fn name_for(&mut self, cgroup_id: u64, addr: IpAddr, now_ns: u64) -> Option<Arc<str>> {
        let addr = crate::scope::normalize(addr);
        let found = self.lookup(cgroup_id, addr, now_ns);
        match found {
            Some(_) => self.known.inc(),
            None => self.unknown.inc(),
        };
        found
    }

    fn lookup(&mut self, cgroup_id: u64, addr: IpAddr, now_ns: u64) -> Option<Arc<str>> {
        let cache = self.by_cgroup.get_mut(&cgroup_id)?;
        let e = cache.get(&addr)?;
        if e.expires_ns >= now_ns {
            return Some(e.name.clone());
        }
        cache.remove(&addr);
        self.entries -= 1;
        self.names.set(self.entries as i64);
        None
    }

    /// Addresses with a name, over all containers.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests;
