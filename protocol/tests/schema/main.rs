//! The JSON Schemas of the wire frames (`protocol/schema/*.json`) against the
//! Rust types and PROTOCOL.md:
//! - both are valid draft 2020-12 schemas, self-contained, and their shared
//!   definitions agree with each other and with the SDK's typedefs;
//! - every server frame the Rust types can produce (each variant with every
//!   optional field set, and with none) validates;
//! - every frame example in PROTOCOL.md validates, decodes with the Rust types
//!   and re-encodes to the same text ("All JSON examples are exact frames");
//! - one list of client frames drives both the schema and
//!   `ClientFrame::decode`, so the two cannot drift.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod client_cases;
mod doc_examples;
mod meta;
mod server_frames;
mod support;
