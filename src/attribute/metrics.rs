//! Counters for everything the attribution stage takes in, keeps, matches and drops.
//!
//! In: increments from the store, the webhooks and the log follower. Out: Prometheus metrics
//! in a registry the caller owns ([`AttributeMetrics::register`]). Nothing is dropped.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Cheap to clone: every clone updates the same counters.
#[derive(Clone, Debug, Default)]
pub struct AttributeMetrics {
    /// Request records kept, by source.
    pub accepted: Family<Labels, Counter>,
    /// (audit id, stage) pairs seen before, by source.
    pub duplicates: Family<Labels, Counter>,
    /// Well-formed events about resources podtrail does not attribute.
    pub ignored: Family<Labels, Counter>,
    /// Input refused, by reason (malformed_json, missing_audit_id, no_client_cert, ...).
    pub rejected: Family<Labels, Counter>,
    /// Sessions matched, by confidence.
    pub matches: Family<Labels, Counter>,
    /// Records that arrived more than the match window after their request.
    pub late: Counter,
    /// Records dropped by the store's bounds, by whether they had been used.
    pub evicted: Family<Labels, Counter>,
    /// Records held now.
    pub store_records: Gauge,
    /// Listener certificates re-read after their files changed, by result (ok, failed).
    pub tls_reloads: Family<Labels, Counter>,
}

impl AttributeMetrics {
    pub fn register(&self, reg: &mut Registry) {
        let sub = reg.sub_registry_with_prefix("podtrail_attribution");
        sub.register("records_accepted", "Request records kept, by source", self.accepted.clone());
        sub.register("records_duplicate", "Audit (id, stage) pairs seen before, by source", self.duplicates.clone());
        sub.register("records_ignored", "Events about resources podtrail does not attribute", self.ignored.clone());
        sub.register("records_rejected", "Input refused, by reason", self.rejected.clone());
        sub.register("matches", "Sessions matched to a request, by confidence", self.matches.clone());
        sub.register(
            "records_late",
            "Records that arrived later than the match window after their request",
            self.late.clone(),
        );
        sub.register("records_evicted", "Records dropped by the store bounds, by state", self.evicted.clone());
        sub.register("store_records", "Request records held", self.store_records.clone());
        sub.register(
            "tls_reloads",
            "Listener certificate files re-read after they changed, by result (ok, failed: the previous ones stay)",
            self.tls_reloads.clone(),
        );
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Current value of a rejection counter (tests and diagnostics).
    pub fn rejected_count(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&vec![("reason", reason)]).get()
    }

    pub fn by_source(f: &Family<Labels, Counter>, source: &'static str) -> u64 {
        f.get_or_create(&vec![("source", source)]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_registry_under_their_names() {
        let m = AttributeMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.reject("malformed_json");
        m.accepted.get_or_create(&vec![("source", "audit_webhook")]).inc_by(3);
        m.store_records.set(7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains(r#"podtrail_attribution_records_rejected_total{reason="malformed_json"} 1"#), "{text}");
        assert!(text.contains(r#"podtrail_attribution_records_accepted_total{source="audit_webhook"} 3"#), "{text}");
        assert!(text.contains("podtrail_attribution_store_records 7"), "{text}");
    }
}
