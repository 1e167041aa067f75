//! The wire protocol end to end, through real sockets against a real `chorus`
//! process: every frame, every error code and every close code the gateway can
//! produce, plus ACLs, token expiry, limits and tenants.
//!
//! Two ways of talking to the node:
//! - the Rust [`Client`] for ordinary sessions (replies are matched by id,
//!   pushes arrive as [`Event`]s);
//! - [`Raw`], a bare WebSocket speaking JSON text by hand, where the exact
//!   frames on the wire matter (field presence, `id` echo, frame order,
//!   malformed input, binary and invalid UTF-8 frames, a reader that never reads).
//!
//! Every test starts its own node. Timeouts are generous: the machine is small
//! and other test binaries run at the same time.
//!
//! `timeout` and `unavailable` are provoked through configuration (a send
//! timeout of 0 ms; a writer queue of 1 under pipelined sends): they rely on an
//! SQLite commit never finishing within microseconds, which holds in practice.
//!
//! `not_owner`, `internal` and close 4006 need the history store to fence the
//! writer, fail a commit or fail to load memberships: `injected` builds a node
//! in this process from a store that does so on demand. Close 4003
//! `internal_error` (a contained panic) is tested in `hardening/panics.rs`;
//! `4503 forbidden` is not sent by any code path of the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod close_codes;
mod error_codes;
mod exact_protocol;
mod heartbeats;
mod hello;
mod injected;
mod join_leave;
mod receipts;
mod schema_session;
mod send_history;
mod shutdown;
mod support;
mod tenants;
mod typing_presence;
