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
//! With `agent_auth = "token"` (the default) each agent gets only the records of its own node:
//! the receiver watches the cluster's pods to tag each record with its pod's node
//! ([`nodes::Placement`]: a record whose pod is not known yet waits, bounded and counted), and
//! each subscriber proves its node with a bound service-account token reviewed by the API server
//! ([`nodes::TokenReviewer`]). With `agent_auth = "none"` every record goes to every agent and
//! each keeps those whose pod its pod index knows.

pub mod metrics;
pub mod nodes;
pub mod receive;
pub mod replay;
pub mod server;
pub mod subscribe;
pub mod wire;

pub use metrics::StreamMetrics;
pub use nodes::{PodNodes, TokenReviewer};
pub use receive::{Receiver, ReceiverConfig, ReceiverReady};
pub use replay::ReplayBuffer;
pub use server::{stream_router, stream_router_for_nodes};
pub use subscribe::{PodFilter, RecordSink, SubscribeConfig, SubscribeError};
