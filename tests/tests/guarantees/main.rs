//! The product guarantees (DESIGN.md, "Guarantees"), proven through the real wire
//! protocol against real `chorus` processes:
//!
//! 1. per-room total order under concurrent senders;
//! 2. idempotent send (same `cid` on one connection and across connections);
//! 3. resume: exactly the missed messages, then live ones, no presence flicker;
//!    a bad or expired resume token starts a new session;
//! 4. durable ack through `kill -9`;
//! 5. graceful drain on SIGTERM;
//! 6. slow-consumer isolation (4002) and recovery by resume;
//! 7. presence grace after an abrupt disconnect.
//!
//! Timeouts are generous: the suite runs on small machines next to other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod drain;
mod durable_ack;
mod idempotent_send;
mod presence_grace;
mod resume;
mod slow_consumer;
mod support;
mod total_order;
