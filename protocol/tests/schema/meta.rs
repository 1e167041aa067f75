//! (a) the schemas themselves

use chorus_protocol::ClientFrame;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::support::*;
use super::{client_cases::*, server_frames::*};

#[test]
fn both_schemas_are_valid_draft_2020_12() {
    for (name, text) in [("client", CLIENT_SCHEMA), ("server", SERVER_SCHEMA)] {
        let s = schema(text);
        if let Err(e) = jsonschema::draft202012::meta::validate(&s) {
            panic!("{name} schema is not a valid draft 2020-12 schema: {e}");
        }
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        let id = s["$id"].as_str().expect("$id");
        assert!(id.ends_with(&format!("/{name}-frame.json")), "{name}: {id}");
        // Self-contained: every `$ref` is local, and compiles.
        let mut refs = Vec::new();
        collect_refs(&s, &mut refs);
        for r in &refs {
            assert!(r.starts_with("#/$defs/"), "{name}: non-local $ref {r}");
        }
        validator(text);
        // Every definition is used.
        for def in s["$defs"].as_object().unwrap().keys() {
            let target = format!("#/$defs/{def}");
            assert!(
                refs.iter()
                    .any(|r| *r == target || r.starts_with(&format!("{target}/"))),
                "{name}: $defs/{def} is never referenced"
            );
        }
    }
}

pub(crate) fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The frame definitions of a schema's top-level `oneOf`, by their `op`.
pub(crate) fn frame_defs(s: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for branch in s["oneOf"].as_array().expect("oneOf") {
        let r = branch["$ref"].as_str().expect("oneOf of $refs");
        let name = r.strip_prefix("#/$defs/").unwrap();
        let def = &s["$defs"][name];
        let op = def["properties"]["op"]["const"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no op const"));
        assert!(
            def["required"].as_array().unwrap().contains(&json!("op")),
            "{name} must require op"
        );
        let expected = format!(
            "{}Frame",
            op.split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect::<String>()
        );
        assert_eq!(name, expected, "frame definitions are named <Op>Frame");
        assert!(
            out.insert(op.to_owned(), def.clone()).is_none(),
            "two definitions for op {op}"
        );
    }
    out
}

pub(crate) const CLIENT_OPS: [&str; 12] = [
    "hello",
    "join",
    "leave",
    "send",
    "history",
    "read",
    "delivered",
    "typing",
    "presence",
    "ping",
    "pong",
    "refresh",
];

pub(crate) const SERVER_OPS: [&str; 16] = [
    "welcome",
    "joined",
    "left",
    "ack",
    "msg",
    "history",
    "receipt",
    "typing",
    "presence",
    "presence_diff",
    "ping",
    "pong",
    "error",
    "reconnect",
    "refreshed",
    "refresh_needed",
];

#[test]
fn the_schemas_have_one_definition_per_op_of_the_rust_types() {
    let client: Vec<String> = frame_defs(&schema(CLIENT_SCHEMA)).into_keys().collect();
    let mut want: Vec<String> = CLIENT_OPS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(client, want);
    // The Rust side: one ClientFrame per op (`op()` is an exhaustive match).
    let rust: BTreeSet<&str> = client_frames_full().iter().map(ClientFrame::op).collect();
    assert_eq!(rust, CLIENT_OPS.into_iter().collect());

    let server: Vec<String> = frame_defs(&schema(SERVER_SCHEMA)).into_keys().collect();
    let mut want: Vec<String> = SERVER_OPS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(server, want);
    let rust: BTreeSet<&str> = server_frames_full().iter().map(server_op).collect();
    assert_eq!(rust, SERVER_OPS.into_iter().collect());
}

/// The value definitions both schemas carry are the same (each file is
/// self-contained, so they are repeated).
#[test]
fn shared_definitions_agree_between_the_schemas() {
    let c = schema(CLIENT_SCHEMA);
    let s = schema(SERVER_SCHEMA);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("description");
        v
    };
    let mut shared = 0;
    for (name, def) in c["$defs"].as_object().unwrap() {
        if name.ends_with("Frame") {
            continue;
        }
        if let Some(other) = s["$defs"].get(name) {
            assert_eq!(strip(def.clone()), strip(other.clone()), "$defs/{name}");
            shared += 1;
        }
    }
    assert!(shared >= 4, "RoomName, Cid, RequestId, Uint at least");
}

/// `msg` is the Message object plus `op`.
#[test]
fn the_msg_frame_is_the_message_object_plus_op() {
    let s = schema(SERVER_SCHEMA);
    let message = &s["$defs"]["Message"];
    let msg = &s["$defs"]["MsgFrame"];
    let mut props: BTreeSet<&String> = msg["properties"].as_object().unwrap().keys().collect();
    assert!(props.remove(&"op".to_string()));
    let want: BTreeSet<&String> = message["properties"].as_object().unwrap().keys().collect();
    assert_eq!(props, want);
    let mut required: Vec<&Value> = msg["required"].as_array().unwrap().iter().collect();
    required.retain(|r| *r != "op");
    assert_eq!(
        required,
        message["required"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
    );
}

/// Everything the server emits is closed: `additionalProperties: false` on
/// every object definition of the server schema.
#[test]
fn server_objects_admit_no_other_fields() {
    let s = schema(SERVER_SCHEMA);
    for (name, def) in s["$defs"].as_object().unwrap() {
        if def["type"] == "object" {
            assert_eq!(def["additionalProperties"], false, "$defs/{name}");
        }
    }
}

/// The client schema types every field name of every client frame in every
/// frame (PROTOCOL.md 1.2's caveat), and the list there is complete.
#[test]
fn the_client_schema_types_the_union_of_client_fields() {
    let s = schema(CLIENT_SCHEMA);
    let shared: BTreeSet<&String> = s["$defs"]["SharedFields"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let mut used = BTreeSet::new();
    for def in frame_defs(&s).values() {
        used.extend(def["properties"].as_object().unwrap().keys().cloned());
    }
    assert_eq!(shared, used.iter().collect());
    // PROTOCOL.md 1.2 names the same fields.
    let caveat = PROTOCOL_MD
        .split("A field whose name belongs to *any* client frame (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the 1.2 caveat");
    let mut named: BTreeSet<String> = caveat
        .split(',')
        .map(|f| f.trim().trim_matches('`').to_owned())
        .collect();
    named.insert("op".into());
    assert_eq!(used, named);
}

/// The SDK's typedefs (protocol/js/chorus.js) name the shared objects; the
/// schema uses the same names. Where the SDK keeps the wire shape, the fields
/// are the same too.
#[test]
fn shared_objects_are_named_as_the_sdk_typedefs() {
    let typedefs = sdk_typedefs();
    let s = schema(SERVER_SCHEMA);
    let defs = s["$defs"].as_object().unwrap();
    // Wire objects the SDK hands out unchanged.
    for name in ["Message", "DeviceInfo", "PresenceUser", "Limits"] {
        let sdk = typedefs
            .get(name)
            .unwrap_or_else(|| panic!("SDK typedef {name}"));
        let def = defs.get(name).unwrap_or_else(|| panic!("$defs/{name}"));
        let props: BTreeMap<String, bool> = def["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| {
                let required = def["required"].as_array().unwrap().contains(&json!(k));
                (k.clone(), required)
            })
            .collect();
        assert_eq!(&props, sdk, "{name}: schema fields vs the SDK typedef");
    }
    // Wire objects the SDK reshapes (camelCase fields, or positions it
    // always fills in): same name, different fields, on purpose.
    for name in ["RoomState", "Receipt"] {
        assert!(typedefs.contains_key(name), "SDK typedef {name}");
        assert!(defs.contains_key(name), "$defs/{name}");
    }
}

/// `@typedef {{field: type, optional?: type}} Name` of the SDK: name → (field → required).
pub(crate) fn sdk_typedefs() -> BTreeMap<String, BTreeMap<String, bool>> {
    let mut out = BTreeMap::new();
    let mut rest = SDK;
    while let Some(i) = rest.find("@typedef {{") {
        rest = &rest[i + "@typedef {{".len()..];
        let end = rest.find("}} ").expect("typedef end");
        let body = &rest[..end];
        let name: String = rest[end + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        let mut fields = BTreeMap::new();
        // Top-level `name:` / `name?:` entries (nested braces skipped).
        let mut depth = 0;
        let mut token = String::new();
        for c in body.chars() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                ':' if depth == 0 => {
                    let t = token.trim().trim_start_matches("*").trim();
                    let (field, optional) = match t.strip_suffix('?') {
                        Some(f) => (f, true),
                        None => (t, false),
                    };
                    if !field.is_empty() && field.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        fields.insert(field.to_owned(), !optional);
                    }
                    token.clear();
                    continue;
                }
                ',' if depth == 0 => token.clear(),
                _ => {}
            }
            if depth == 0 && c != ',' {
                token.push(c);
            }
        }
        out.insert(name, fields);
    }
    out
}
