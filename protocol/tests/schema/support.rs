//! Helpers shared by this binary's test modules.

use jsonschema::Validator;
use serde_json::Value;

pub(crate) const CLIENT_SCHEMA: &str = include_str!("../../schema/client-frame.json");
pub(crate) const SERVER_SCHEMA: &str = include_str!("../../schema/server-frame.json");
pub(crate) const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");
pub(crate) const SDK: &str = include_str!("../../js/chorus.js");

pub(crate) fn schema(text: &str) -> Value {
    serde_json::from_str(text).expect("schema is JSON")
}

pub(crate) fn validator(text: &str) -> Validator {
    jsonschema::draft202012::new(&schema(text)).expect("schema compiles")
}

/// Every validation error of `frame`, one per line (empty when valid).
pub(crate) fn errors(v: &Validator, frame: &Value) -> String {
    v.iter_errors(frame)
        .map(|e| format!("  {} at {}", e, e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
pub(crate) fn assert_valid(v: &Validator, frame: &Value) {
    let e = errors(v, frame);
    assert!(e.is_empty(), "{frame} does not validate:\n{e}");
}
