//! Hardening regressions, through real sockets against a real `chorus`
//! process: slow and oversized HTTP input (slowloris), the pending-connection
//! and per-IP bounds of the accept loop, application-JSON rules ("poison
//! JSON") at every entry point and on stored rows, panics contained per
//! connection and per request, oversized frames answered with a close frame,
//! presence meta and reply bounds, the dev-mode origin check, the dev-auth
//! configuration rules, control frames before `hello`, and WebSocket framing
//! (RFC 6455) written by hand.
//!
//! Every test starts its own node on 127.0.0.1 (clients may bind 127.0.0.2,
//! which is loopback too, to stand for a second source address). Every wait
//! is bounded; the bounds are generous because the machine is small and other
//! test binaries run at the same time, but each one is far below what the
//! behaviour before the fix would take (a connection held forever).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod before_hello;
mod dev_auth;
mod origin;
mod oversized_frames;
mod panics;
mod poison_json;
mod presence_bounds;
mod slowloris;
mod support;
mod websocket_frames;
