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
//! Not covered because the gateway cannot be made to produce them
//! deterministically from the outside: error codes `not_owner` (needs a second
//! writer fencing the room) and `internal` (needs a store fault), close codes
//! `4003 internal_error`, `4006 unavailable` and `4503 forbidden` (no code path
//! in the gateway sends 4003 or 4503; 4006 needs the history store to fail while
//! loading memberships or filling a gap).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod close_codes;
mod error_codes;
mod exact_protocol;
mod heartbeats;
mod hello;
mod join_leave;
mod receipts;
mod schema_session;
mod send_history;
mod shutdown;
mod support;
mod tenants;
mod typing_presence;
