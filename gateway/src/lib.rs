//! chorus gateway: WebSocket connections, rooms, presence and the HTTP API.
//!
//! Layout:
//! - `config`: flags and their `CHORUS_*` environment twins.
//! - `node`: the shared state of one process (store, hub, broker, presence,
//!   writer), session presence with its grace period, receipts, the drain.
//! - `connection`: one WebSocket: handshake, requests, delivery, heartbeats.
//! - `hub`: local room membership and fan-out into bounded per-connection queues.
//! - `sequencer`: the room writer (fenced epochs, group commit, publish, ack).
//! - `broker/`: the fan-out seam (memory now, Redis in cluster mode).
//! - `presence/`: the presence seam (memory now, Redis in cluster mode).
//! - `auth`: JWTs, dev identities, resume tokens, ACLs, tenant namespaces.
//! - `http`: routes: `/ws`, `/v1/...`, health, readiness, metrics, demo page.
//! - `ratelimit`, `metrics`: token buckets and the Prometheus exporter.

pub mod auth;
pub mod broker;
pub mod config;
pub mod connection;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod ratelimit;
pub mod sequencer;

pub use config::Config;
pub use node::Node;
