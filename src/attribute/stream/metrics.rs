//! Counters of the receiver → agent stream, both ends (each registers the same set; the other
//! end's stay at zero).
//!
//! In: increments from the replay buffer, the stream server and the subscriptions.
//! Out: Prometheus metrics under `podtrail_stream_`. Nothing is dropped.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Cheap to clone: every clone updates the same counters.
#[derive(Clone, Debug, Default)]
pub struct StreamMetrics {
    // receiver side
    /// Agents streaming from this receiver now.
    pub subscribers: Gauge,
    /// Record lines written to subscribers (replayed and live).
    pub records_streamed: Counter,
    /// Subscriptions that started by replaying buffered records.
    pub replays: Counter,
    /// Records sent as part of a replay.
    pub records_replayed: Counter,
    /// Records a subscriber asked for that the replay buffer had already dropped.
    pub records_missed: Counter,
    /// Oldest records dropped from the full replay buffer.
    pub replay_dropped: Counter,
    /// Records in the replay buffer.
    pub replay_records: Gauge,
    /// Records not streamed because their line would be over the stream's line limit.
    pub records_too_large: Counter,
    /// Records dropped because their pod's node was not known within the wait (node filter).
    pub records_unplaced: Counter,
    /// Records waiting for their pod's node now.
    pub records_pending: Gauge,
    // agent side
    /// Receivers this agent is streaming from now.
    pub subscriptions_connected: Gauge,
    /// Connection attempts after the first, per subscription (lost or refused connections).
    pub reconnects: Counter,
    /// Record lines received from receivers.
    pub records_received: Counter,
    /// Records put into the agent's store (duplicates from several replicas are counted by the
    /// store as `records_duplicate`).
    pub records_kept: Counter,
    /// Records about pods not on this node (after waiting for the pod index).
    pub records_other_node: Counter,
    /// Lines that did not parse, or named an unknown source, kind or stage.
    pub lines_malformed: Counter,
    /// Lines over the line limit, skipped (the stream reads on).
    pub lines_too_long: Counter,
    /// Records the receivers reported as missed (gap in their replay buffers).
    pub records_gap: Counter,
    /// The agent's client certificate files re-read after they changed, by result.
    pub tls_reloads: prometheus_client::metrics::family::Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl StreamMetrics {
    pub fn register(&self, reg: &mut Registry) {
        let s = reg.sub_registry_with_prefix("podtrail_stream");
        s.register("subscribers", "Agents streaming from this receiver", self.subscribers.clone());
        s.register("records_streamed", "Record lines written to subscribers", self.records_streamed.clone());
        s.register("replays", "Subscriptions that began with a replay of buffered records", self.replays.clone());
        s.register("records_replayed", "Records sent in replays", self.records_replayed.clone());
        s.register(
            "records_missed",
            "Records a subscriber asked for that the replay buffer had dropped",
            self.records_missed.clone(),
        );
        s.register("replay_dropped", "Oldest records dropped from the full replay buffer", self.replay_dropped.clone());
        s.register("replay_records", "Records in the replay buffer", self.replay_records.clone());
        s.register(
            "records_too_large",
            "Records not streamed: their line would be over the stream's line limit",
            self.records_too_large.clone(),
        );
        s.register(
            "records_unplaced",
            "Records dropped: their pod's node was not known within the wait",
            self.records_unplaced.clone(),
        );
        s.register("records_pending", "Records waiting for their pod's node", self.records_pending.clone());
        s.register(
            "subscriptions_connected",
            "Receivers this agent streams from",
            self.subscriptions_connected.clone(),
        );
        s.register("reconnects", "Subscription connection attempts after the first", self.reconnects.clone());
        s.register("records_received", "Record lines received from receivers", self.records_received.clone());
        s.register("records_kept", "Streamed records put into the agent's store", self.records_kept.clone());
        s.register("records_other_node", "Streamed records about pods on other nodes", self.records_other_node.clone());
        s.register("lines_malformed", "Stream lines that did not parse", self.lines_malformed.clone());
        s.register("lines_too_long", "Stream lines over the line limit, skipped", self.lines_too_long.clone());
        s.register("records_gap", "Records receivers reported missed by this agent", self.records_gap.clone());
        s.register(
            "tls_reloads",
            "Client certificate files re-read after they changed, by result (ok, failed: the previous ones stay)",
            self.tls_reloads.clone(),
        );
    }
}
