//! `podtrail receiver` → agents: the request records the receiver's webhooks took, streamed to
//! every agent over mutual TLS.
//!
//! In (receiver): every stage its [`RecordStore`](super::RecordStore) accepted from the audit and admission
//! webhooks (or an audit log), through the store's tap into a bounded [`ReplayBuffer`].
//! Out (receiver): `GET /v1/records` on the stream port, newline-delimited JSON
//! ([`wire::Line`]): a hello, the buffered records after the sequence number the agent sent,
//! then live records. In (agent): those lines, from every replica ([`subscribe`]). Out
//! (agent): records in the agent's own store, for this node's pods only.
//! Dropped (counted in [`StreamMetrics`]): the replay buffer's oldest records when full, and
//! so what an agent away for longer missed (`records_missed` / `records_gap`); records about
//! other nodes' pods; malformed lines. Subscribers without a certificate from the configured
//! CA get a 401 or a failed handshake and no records.
//!
//! Every record goes to every agent (the audit event names the pod, not its node); each agent
//! keeps those whose pod its pod index knows. Cheap at exec rates, and no receiver needs API
//! access to map pods to nodes.

pub mod metrics;
pub mod receive;
pub mod replay;
pub mod server;
pub mod subscribe;
pub mod wire;

pub use metrics::StreamMetrics;
pub use receive::{Receiver, ReceiverConfig, ReceiverReady};
pub use replay::ReplayBuffer;
pub use server::stream_router;
pub use subscribe::{PodFilter, RecordSink, SubscribeConfig, SubscribeError};
