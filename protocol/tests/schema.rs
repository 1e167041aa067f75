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

use std::collections::{BTreeMap, BTreeSet};

use chorus_protocol::{
    ClientFrame, DeviceInfo, ErrorCode, Json, Limits, Message, PROTOCOL_VERSION, PresenceUser,
    Receipt, RoomState, ServerFrame, valid_cid, valid_room,
};
use jsonschema::Validator;
use serde_json::{Value, json};

const CLIENT_SCHEMA: &str = include_str!("../schema/client-frame.json");
const SERVER_SCHEMA: &str = include_str!("../schema/server-frame.json");
const PROTOCOL_MD: &str = include_str!("../PROTOCOL.md");
const SDK: &str = include_str!("../js/chorus.js");

fn schema(text: &str) -> Value {
    serde_json::from_str(text).expect("schema is JSON")
}

fn validator(text: &str) -> Validator {
    jsonschema::draft202012::new(&schema(text)).expect("schema compiles")
}

/// Every validation error of `frame`, one per line (empty when valid).
fn errors(v: &Validator, frame: &Value) -> String {
    v.iter_errors(frame)
        .map(|e| format!("  {} at {}", e, e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_valid(v: &Validator, frame: &Value) {
    let e = errors(v, frame);
    assert!(e.is_empty(), "{frame} does not validate:\n{e}");
}

// ---------------------------------------------------------------------------
// (a) the schemas themselves
// ---------------------------------------------------------------------------

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

fn collect_refs(v: &Value, out: &mut Vec<String>) {
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
fn frame_defs(s: &Value) -> BTreeMap<String, Value> {
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

const CLIENT_OPS: [&str; 12] = [
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

const SERVER_OPS: [&str; 16] = [
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
fn sdk_typedefs() -> BTreeMap<String, BTreeMap<String, bool>> {
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

// ---------------------------------------------------------------------------
// (b) every server frame the Rust types produce
// ---------------------------------------------------------------------------

/// The op of a server frame; exhaustive, so a new variant must be added here
/// (and to the lists below).
fn server_op(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Joined { .. } => "joined",
        ServerFrame::Left { .. } => "left",
        ServerFrame::Ack { .. } => "ack",
        ServerFrame::Msg(_) => "msg",
        ServerFrame::History { .. } => "history",
        ServerFrame::Receipt { .. } => "receipt",
        ServerFrame::Typing { .. } => "typing",
        ServerFrame::Presence { .. } => "presence",
        ServerFrame::PresenceDiff { .. } => "presence_diff",
        ServerFrame::Ping {} => "ping",
        ServerFrame::Pong { .. } => "pong",
        ServerFrame::Error { .. } => "error",
        ServerFrame::Reconnect { .. } => "reconnect",
        ServerFrame::Refreshed { .. } => "refreshed",
        ServerFrame::RefreshNeeded { .. } => "refresh_needed",
    }
}

const MSG_ID: &str = "01935297-a1c0-7d21-8b3e-2f6a9c0d4e51";

fn message(full: bool) -> Message {
    Message {
        room: "general".into(),
        seq: 43,
        id: MSG_ID.into(),
        sender: "alice".into(),
        // Always present on the wire (PROTOCOL.md 6); `Option` only so that
        // clients tolerate its absence.
        cid: Some("c-7f3a".into()),
        body: Json::from_text(r#"{"text":"hi all"}"#).unwrap(),
        meta: full.then(|| Json::from_text(r#"{"reply_to":39}"#).unwrap()),
        ts: 1_732_262_405_000,
    }
}

fn presence_user(full: bool) -> PresenceUser {
    PresenceUser {
        user: "alice".into(),
        devices: vec![DeviceInfo {
            device: "phone".into(),
            node: "gw-1".into(),
            since: 1_732_262_400_000,
            meta: full.then(|| json!({"status": "available"})),
        }],
    }
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 65536,
        max_message_bytes: 16384,
        max_rooms: 100,
        sends_per_sec: 50,
        send_burst: 100,
        max_history_page: 100,
        max_replay: 10000,
    }
}

/// One frame of each variant; with `full`, every optional field is set
/// (lists non-empty), otherwise none is (lists empty).
fn server_frames(full: bool) -> Vec<ServerFrame> {
    let id = full.then_some(7);
    let users = if full {
        vec![presence_user(true)]
    } else {
        vec![]
    };
    vec![
        ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: "s_01JD3X2K8Q9W".into(),
            user: "alice".into(),
            tenant: full.then(|| "acme".into()),
            device: "default".into(),
            node: "gw-1".into(),
            resume_token: "rt1.czAxSkQzWDJLOFE5Vy5hbGljZQ.7Hq2".into(),
            resume_ttl_ms: 300_000,
            heartbeat_ms: 25_000,
            idle_timeout_ms: 60_000,
            limits: limits(),
            rooms: if full {
                vec![RoomState {
                    room: "general".into(),
                    tip: 42,
                    last_read: 40,
                    last_delivered: 41,
                    unread: 2,
                }]
            } else {
                vec![]
            },
            resumed: full,
        },
        ServerFrame::Joined {
            id,
            room: "general".into(),
            tip: 42,
            last_read: 40,
            recovered: full,
            replayed: 2,
            presence: users.clone(),
            online: users.len() as u64,
        },
        ServerFrame::Left {
            id,
            room: "general".into(),
        },
        ServerFrame::Ack {
            id,
            room: "general".into(),
            cid: "c-7f3a".into(),
            seq: 43,
            msg_id: MSG_ID.into(),
            ts: 1_732_262_405_000,
            duplicate: full,
        },
        ServerFrame::Msg(message(full)),
        ServerFrame::History {
            id,
            room: "general".into(),
            messages: if full {
                vec![message(false), message(true)]
            } else {
                vec![]
            },
            has_more: full,
        },
        ServerFrame::Receipt {
            room: "general".into(),
            receipts: vec![
                Receipt {
                    user: "alice".into(),
                    read: full.then_some(43),
                    delivered: Some(43),
                },
                Receipt {
                    user: "bob".into(),
                    read: None,
                    delivered: Some(41),
                },
            ],
        },
        ServerFrame::Typing {
            room: "general".into(),
            user: "bob".into(),
            device: "desktop".into(),
            active: full,
        },
        ServerFrame::Presence {
            id,
            room: "general".into(),
            users: users.clone(),
            truncated: full,
        },
        // `online` (hot rooms) comes with empty lists; the full-lists form
        // is the other one.
        ServerFrame::PresenceDiff {
            room: "general".into(),
            joined: vec![],
            left: vec![],
            online: full.then_some(15230),
        },
        ServerFrame::PresenceDiff {
            room: "general".into(),
            joined: vec![presence_user(full)],
            left: vec!["bob".into()],
            online: None,
        },
        ServerFrame::Ping {},
        ServerFrame::Pong { id },
        ServerFrame::Error {
            id,
            request: full.then(|| "send".into()),
            code: ErrorCode::RateLimited,
            message: "at most 50 sends per second".into(),
            retryable: true,
            retry_after_ms: Some(120),
            cid: full.then(|| "c-80aa".into()),
            room: full.then(|| "general".into()),
        },
        ServerFrame::Error {
            id,
            request: full.then(|| "join".into()),
            code: ErrorCode::Forbidden,
            message: "not allowed in room 'secret'".into(),
            retryable: false,
            retry_after_ms: full.then_some(100),
            cid: None,
            room: full.then(|| "secret".into()),
        },
        ServerFrame::Reconnect {
            reason: "shutdown".into(),
            retry_after_ms: 500,
        },
        ServerFrame::Refreshed {
            id,
            exp: 1_732_269_600,
        },
        ServerFrame::RefreshNeeded { exp: 1_732_266_000 },
    ]
}

fn server_frames_full() -> Vec<ServerFrame> {
    server_frames(true)
}

#[test]
fn every_server_frame_the_rust_types_produce_validates() {
    let v = validator(SERVER_SCHEMA);
    for full in [true, false] {
        let frames = server_frames(full);
        let ops: BTreeSet<&str> = frames.iter().map(server_op).collect();
        assert_eq!(ops.len(), SERVER_OPS.len(), "every variant, full={full}");
        for f in &frames {
            let text = f.encode();
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_valid(&v, &value);
        }
    }
    // Every error code, with the retryability the code gives it (and
    // `retry_after_ms` where the server always gives one).
    for code in ErrorCode::ALL {
        let mut f = ServerFrame::error(code, "detail");
        if let ServerFrame::Error { retry_after_ms, .. } = &mut f {
            *retry_after_ms = code.retryable().then_some(100);
        }
        let value: Value = serde_json::from_str(&f.encode()).unwrap();
        assert_valid(&v, &value);
    }
}

/// What the schema pins beyond field types, each checked against a frame the
/// Rust types can build but the server never sends.
#[test]
fn the_server_schema_rejects_frames_the_server_never_sends() {
    let v = validator(SERVER_SCHEMA);
    let mut no_cid = message(false);
    no_cid.cid = None;
    let rejected = [
        // 6: a message always carries its cid.
        ServerFrame::Msg(no_cid.clone()),
        ServerFrame::History {
            id: None,
            room: "general".into(),
            messages: vec![no_cid],
            has_more: false,
        },
        // 10: retryable follows the code.
        ServerFrame::Error {
            id: None,
            request: None,
            code: ErrorCode::Forbidden,
            message: "x".into(),
            retryable: true,
            retry_after_ms: None,
            cid: None,
            room: None,
        },
        // 6.13: rate_limited always carries retry_after_ms.
        ServerFrame::error(ErrorCode::RateLimited, "slow down"),
        // 6.10: with `online`, the lists are empty.
        ServerFrame::PresenceDiff {
            room: "general".into(),
            joined: vec![],
            left: vec!["bob".into()],
            online: Some(3),
        },
        // 6.7: an entry with `read` has `delivered` too; an entry has one.
        ServerFrame::Receipt {
            room: "general".into(),
            receipts: vec![Receipt {
                user: "alice".into(),
                read: Some(3),
                delivered: None,
            }],
        },
        ServerFrame::Receipt {
            room: "general".into(),
            receipts: vec![Receipt {
                user: "alice".into(),
                read: None,
                delivered: None,
            }],
        },
        // 1.4: room names, user ids, message ids.
        ServerFrame::Left {
            id: None,
            room: "a/b".into(),
        },
        ServerFrame::Typing {
            room: "general".into(),
            user: "dm:x".into(),
            device: "phone".into(),
            active: true,
        },
        ServerFrame::Ack {
            id: None,
            room: "general".into(),
            cid: "c".into(),
            seq: 1,
            msg_id: "not-a-uuid".into(),
            ts: 0,
            duplicate: false,
        },
        // 1.4: seq starts at 1.
        ServerFrame::Ack {
            id: None,
            room: "general".into(),
            cid: "c".into(),
            seq: 0,
            msg_id: MSG_ID.into(),
            ts: 0,
            duplicate: false,
        },
        // 6: a present user has at least one device.
        ServerFrame::Presence {
            id: None,
            room: "general".into(),
            users: vec![PresenceUser {
                user: "alice".into(),
                devices: vec![],
            }],
            truncated: false,
        },
        // 6.1: this server speaks v1.
        ServerFrame::Welcome {
            v: 2,
            session: "s".into(),
            user: "alice".into(),
            tenant: None,
            device: "default".into(),
            node: "gw-1".into(),
            resume_token: "rt".into(),
            resume_ttl_ms: 1,
            heartbeat_ms: 1,
            idle_timeout_ms: 1,
            limits: limits(),
            rooms: vec![],
            resumed: false,
        },
    ];
    for f in rejected {
        let value: Value = serde_json::from_str(&f.encode()).unwrap();
        assert!(!v.is_valid(&value), "the schema accepts {value}");
    }
    // And by hand: nulls for optional fields, unknown fields, unknown ops.
    for text in [
        r#"{"op":"pong","id":null}"#,
        r#"{"op":"ping","extra":1}"#,
        r#"{"op":"frobnicate"}"#,
        r#"{"id":1}"#,
        r#"{"op":"left","id":-1,"room":"general"}"#,
        r#"{"op":"presence","room":"general","users":[],"truncated":false}"#,
    ] {
        let value: Value = serde_json::from_str(text).unwrap();
        assert!(!v.is_valid(&value), "the schema accepts {text}");
    }
}

// ---------------------------------------------------------------------------
// (c) the examples of PROTOCOL.md
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Client,
    Server,
}

/// Every frame example of PROTOCOL.md: the JSON code blocks of sections 5
/// (client) and 6 (server), the frames among the JSON blocks of 14, and the
/// `C→S` / `S→C` lines of section 15. `(section, direction, text)`.
fn doc_examples() -> Vec<(String, Dir, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut fence: Option<String> = None;
    for line in PROTOCOL_MD.lines() {
        if let Some(lang) = &fence {
            if line.starts_with("```") {
                fence = None;
                continue;
            }
            let major = section.split('.').next().unwrap_or("");
            let line = line.trim();
            match (lang.as_str(), major) {
                ("json", "5") if !line.is_empty() => {
                    out.push((section.clone(), Dir::Client, line.to_owned()))
                }
                ("json", "6") if !line.is_empty() => {
                    out.push((section.clone(), Dir::Server, line.to_owned()))
                }
                ("json", "14") if line.starts_with(r#"{"op":"#) => {
                    out.push((section.clone(), Dir::Server, line.to_owned()))
                }
                ("text", "15") => {
                    if let Some(f) = line.strip_prefix("C→S ") {
                        out.push((section.clone(), Dir::Client, f.to_owned()));
                    } else if let Some(f) = line.strip_prefix("S→C ") {
                        out.push((section.clone(), Dir::Server, f.to_owned()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            fence = Some(lang.trim().to_owned());
        } else if let Some(h) = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
        {
            let number = h.split_whitespace().next().unwrap_or("");
            if number.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                section = number.trim_end_matches('.').to_owned();
            }
        }
    }
    out
}

#[test]
fn every_frame_example_in_protocol_md_validates_and_is_exact() {
    let client = validator(CLIENT_SCHEMA);
    let server = validator(SERVER_SCHEMA);
    let examples = doc_examples();
    let mut ops: BTreeMap<Dir, BTreeSet<String>> = BTreeMap::new();
    let mut per_section: BTreeMap<String, usize> = BTreeMap::new();
    for (section, dir, text) in &examples {
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("PROTOCOL.md {section}: {text} is not JSON: {e}"));
        let e = errors(
            if *dir == Dir::Client {
                &client
            } else {
                &server
            },
            &value,
        );
        assert!(
            e.is_empty(),
            "PROTOCOL.md {section}: {dir:?} example {text} does not validate:\n{e}"
        );
        // The Rust types read it and write it back: a server frame byte for
        // byte (it is what the server sends), a client frame as the same
        // JSON value (a client may order a map's keys as it likes).
        match dir {
            Dir::Client => {
                let again = ClientFrame::decode(text)
                    .unwrap_or_else(|e| panic!("PROTOCOL.md {section}: {text}: {e:?}"))
                    .encode();
                let again: Value = serde_json::from_str(&again).unwrap();
                assert_eq!(again, value, "PROTOCOL.md {section}: re-encoded");
            }
            Dir::Server => {
                let again = ServerFrame::decode(text)
                    .unwrap_or_else(|e| panic!("PROTOCOL.md {section}: {text}: {e}"))
                    .encode();
                assert_eq!(&again, text, "PROTOCOL.md {section}: re-encoded");
            }
        }
        ops.entry(*dir)
            .or_default()
            .insert(value["op"].as_str().unwrap().to_owned());
        *per_section.entry(section.clone()).or_default() += 1;
    }
    // Every op has an example; the extraction found the sections.
    assert_eq!(ops[&Dir::Client], CLIENT_OPS.map(String::from).into());
    assert_eq!(ops[&Dir::Server], SERVER_OPS.map(String::from).into());
    for n in 1..=12 {
        assert!(
            per_section.contains_key(&format!("5.{n}")),
            "5.{n}: {per_section:?}"
        );
    }
    for n in 1..=16 {
        assert!(
            per_section.contains_key(&format!("6.{n}")),
            "6.{n}: {per_section:?}"
        );
    }
    assert!(per_section["15"] >= 20, "{per_section:?}");
    assert!(per_section.contains_key("14.5"), "{per_section:?}");
}

// ---------------------------------------------------------------------------
// (d) the schema and the parser, from one list
// ---------------------------------------------------------------------------

/// What happens to a client frame.
enum Verdict {
    /// Both the parser and the schema accept it.
    Valid,
    /// Both refuse it; the parser with this code.
    Invalid(ErrorCode),
    /// The parser accepts it, the schema refuses it: a rule of PROTOCOL.md
    /// the server checks after decoding. The function must see the decoded
    /// frame break that rule.
    Refused(&'static str, fn(&ClientFrame) -> bool),
    /// The parser refuses it (with this code), the schema cannot: a rule on
    /// the JSON text, beyond what JSON Schema sees.
    Textual(&'static str, ErrorCode),
}

use Verdict::{Invalid, Refused, Textual, Valid};

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

fn client_cases() -> Vec<(String, Verdict)> {
    let c = |s: &str, v| (s.to_owned(), v);
    vec![
        // Accepted.
        c(r#"{"op":"hello"}"#, Valid),
        c(
            r#"{"op":"hello","v":1,"token":"t","device":"phone","meta":{"a":1},"resume":{"token":"rt","rooms":{"general":3,"dm:alice:bob":0}}}"#,
            Valid,
        ),
        c(
            r#"{"op":"hello","v":null,"resume":null,"meta":null}"#,
            Valid,
        ),
        c(r#"{"op":"hello","resume":{"token":"rt","extra":1}}"#, Valid),
        c(r#"{"op":"join","room":"general"}"#, Valid),
        c(
            r#"{"op":"join","id":0,"room":"a-Z_0.9:@#","since":0}"#,
            Valid,
        ),
        c(r#"{"op":"join","room":"general","since":null}"#, Valid),
        c(
            r#"{"op":"join","room":"general","unknown":{"x":[1]}}"#,
            Valid,
        ),
        c(
            r#"{"op":"leave","room":"general","keep_membership":true}"#,
            Valid,
        ),
        c(r#"{"op":"send","room":"r","cid":"c","body":0}"#, Valid),
        c(
            r#"{"op":"send","room":"r","cid":"c","body":false,"meta":null}"#,
            Valid,
        ),
        c(
            r#"{"op":"send","room":"r","cid":"c","body":"x","meta":[1]}"#,
            Valid,
        ),
        c(
            &format!(
                r#"{{"op":"send","room":"r","cid":"c","body":{}}}"#,
                deep(32)
            ),
            Valid,
        ),
        c(
            &format!(
                r#"{{"op":"send","room":"r","cid":"{}","body":1}}"#,
                "é".repeat(128)
            ),
            Valid,
        ),
        c(r#"{"op":"history","room":"r","limit":0}"#, Valid),
        c(
            r#"{"op":"history","room":"r","before":1,"after":2,"limit":4294967295}"#,
            Valid,
        ),
        c(r#"{"op":"read","room":"r","seq":0}"#, Valid),
        c(
            r#"{"op":"delivered","id":3,"room":"r","seq":18446744073709551615}"#,
            Valid,
        ),
        c(r#"{"op":"typing","room":"r"}"#, Valid),
        c(r#"{"op":"typing","room":"r","active":false,"id":3}"#, Valid),
        c(r#"{"op":"presence","room":"r"}"#, Valid),
        c(r#"{"op":"ping"}"#, Valid),
        c(r#"{"op":"ping","id":18446744073709551615}"#, Valid),
        c(r#"{"op":"pong","id":1}"#, Valid),
        c(r#"{"op":"refresh","token":"jwt"}"#, Valid),
        // Refused by both.
        c(r#"{"op":"frobnicate"}"#, Invalid(ErrorCode::UnknownOp)),
        c(r#"{"op":"Hello"}"#, Invalid(ErrorCode::UnknownOp)),
        c(r#"{"id":1}"#, Invalid(ErrorCode::BadRequest)),
        c(r#"{"op":null}"#, Invalid(ErrorCode::BadRequest)),
        c(r#"{"op":7}"#, Invalid(ErrorCode::BadRequest)),
        c(r#"[{"op":"ping"}]"#, Invalid(ErrorCode::BadRequest)),
        c(r#""ping""#, Invalid(ErrorCode::BadRequest)),
        c(r#"{"op":"join"}"#, Invalid(ErrorCode::BadRequest)),
        c(
            r#"{"op":"join","room":null}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(r#"{"op":"join","room":5}"#, Invalid(ErrorCode::BadRequest)),
        c(
            r#"{"op":"join","room":"r","since":-1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"join","room":"r","since":"1"}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"leave","room":"r","keep_membership":1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"send","room":"r","cid":"c"}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"send","room":"r","cid":"c","body":null}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"send","room":"r","body":1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"send","room":"r","cid":7,"body":1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"history","room":"r","limit":4294967296}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"history","room":"r","before":-1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"read","room":"r"}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"read","room":"r","seq":"4"}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"delivered","seq":4}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"typing","room":"r","active":"yes"}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(r#"{"op":"presence"}"#, Invalid(ErrorCode::BadRequest)),
        c(r#"{"op":"ping","id":-1}"#, Invalid(ErrorCode::BadRequest)),
        c(r#"{"op":"ping","id":"1"}"#, Invalid(ErrorCode::BadRequest)),
        c(
            r#"{"op":"ping","id":18446744073709551616}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(r#"{"op":"refresh","id":5}"#, Invalid(ErrorCode::BadRequest)),
        c(
            r#"{"op":"refresh","token":1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(r#"{"op":"hello","v":"1"}"#, Invalid(ErrorCode::BadRequest)),
        c(
            r#"{"op":"hello","resume":{"rooms":{}}}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"hello","resume":{"token":"t","rooms":{"r":-1}}}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"hello","resume":{"token":"t","rooms":null}}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"hello","device":5}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        // 1.2: a field of any client frame has its type in every frame.
        c(r#"{"op":"ping","room":5}"#, Invalid(ErrorCode::BadRequest)),
        c(r#"{"op":"pong","seq":"x"}"#, Invalid(ErrorCode::BadRequest)),
        c(
            r#"{"op":"typing","room":"r","cid":[]}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"join","room":"r","resume":{}}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"refresh","token":"t","limit":-1}"#,
            Invalid(ErrorCode::BadRequest),
        ),
        // Decoded, then refused by the server (the schema states the rule).
        c(
            r#"{"op":"join","room":"a/b"}"#,
            Refused(
                "invalid_room (1.4)",
                |f| matches!(f, ClientFrame::Join { room, .. } if !valid_room(room)),
            ),
        ),
        c(
            r#"{"op":"join","room":""}"#,
            Refused(
                "invalid_room (1.4)",
                |f| matches!(f, ClientFrame::Join { room, .. } if !valid_room(room)),
            ),
        ),
        c(
            &format!(r#"{{"op":"history","room":"{}"}}"#, "r".repeat(129)),
            Refused(
                "invalid_room (1.4)",
                |f| matches!(f, ClientFrame::History { room, .. } if !valid_room(room)),
            ),
        ),
        c(
            r#"{"op":"hello","resume":{"token":"t","rooms":{"a b":1}}}"#,
            Refused(
                "invalid_room for that room of the resume (9.2)",
                |f| matches!(f, ClientFrame::Hello { resume: Some(r), .. } if r.rooms.keys().any(|k| !valid_room(k))),
            ),
        ),
        c(
            r#"{"op":"send","room":"r","cid":"","body":1}"#,
            Refused(
                "bad_request: cid of 1-128 characters (5.4)",
                |f| matches!(f, ClientFrame::Send { cid, .. } if !valid_cid(cid)),
            ),
        ),
        c(
            &format!(
                r#"{{"op":"send","room":"r","cid":"{}","body":1}}"#,
                "é".repeat(129)
            ),
            Refused(
                "bad_request: cid of 1-128 characters (5.4)",
                |f| matches!(f, ClientFrame::Send { cid, .. } if !valid_cid(cid)),
            ),
        ),
        c(
            r#"{"op":"hello","v":2}"#,
            Refused(
                "close 4506 (3.1)",
                |f| matches!(f, ClientFrame::Hello { v, .. } if *v != PROTOCOL_VERSION),
            ),
        ),
        c(
            r#"{"op":"hello","v":4294967296}"#,
            Refused(
                "close 4506 (3.1)",
                |f| matches!(f, ClientFrame::Hello { v, .. } if *v != PROTOCOL_VERSION),
            ),
        ),
        c(
            r#"{"op":"hello","device":""}"#,
            Refused(
                "replaced by \"default\" (5.1)",
                |f| matches!(f, ClientFrame::Hello { device: Some(d), .. } if d.is_empty() || d.len() > 64),
            ),
        ),
        // Refused by the parser for the text itself.
        c(
            r#"{"op":"ping","id":1.0}"#,
            Textual("integers have no fraction (1.3)", ErrorCode::BadRequest),
        ),
        c(
            r#"{"op":"read","room":"r","seq":4e1}"#,
            Textual("integers have no exponent (1.3)", ErrorCode::BadRequest),
        ),
        c(
            &format!(
                r#"{{"op":"send","room":"r","cid":"c","body":{}}}"#,
                deep(33)
            ),
            Textual(
                "application JSON rule max_depth (1.4)",
                ErrorCode::BadRequest,
            ),
        ),
        c(
            &format!(r#"{{"op":"hello","meta":{}}}"#, deep(33)),
            Textual(
                "application JSON rule max_depth (1.4)",
                ErrorCode::BadRequest,
            ),
        ),
    ]
}

#[test]
fn the_client_schema_and_the_parser_agree_on_one_list() {
    let v = validator(CLIENT_SCHEMA);
    let mut failures = Vec::new();
    for (text, verdict) in client_cases() {
        let value: Value = serde_json::from_str(&text).expect("case is JSON");
        let schema_ok = v.is_valid(&value);
        let parsed = ClientFrame::decode(&text);
        let ok = match (&verdict, &parsed) {
            (Valid, Ok(_)) => schema_ok,
            (Invalid(code), Err(e)) => !schema_ok && e.code == *code,
            (Refused(_, broken), Ok(f)) => !schema_ok && broken(f),
            (Textual(_, code), Err(e)) => schema_ok && e.code == *code,
            _ => false,
        };
        if !ok {
            let what = match &verdict {
                Valid => "valid".to_owned(),
                Invalid(c) => format!("invalid ({c:?})"),
                Refused(why, _) => format!("decoded, refused by the schema: {why}"),
                Textual(why, c) => format!("refused by the parser ({c:?}) only: {why}"),
            };
            failures.push(format!(
                "{text}\n    expected {what}; schema valid: {schema_ok}; parser: {parsed:?}\n{}",
                errors(&v, &value)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every frame the Rust client types can build, with every optional field
/// set: the schema accepts what the crate's client sends.
fn client_frames_full() -> Vec<ClientFrame> {
    vec![
        ClientFrame::Hello {
            v: PROTOCOL_VERSION,
            token: Some("jwt".into()),
            device: Some("phone".into()),
            meta: Some(Json::from_text(r#"{"status":"available"}"#).unwrap()),
            resume: Some(chorus_protocol::Resume {
                token: "rt".into(),
                rooms: [("general".to_owned(), 43)].into(),
            }),
        },
        ClientFrame::Join {
            id: Some(1),
            room: "general".into(),
            since: Some(40),
        },
        ClientFrame::Leave {
            id: Some(5),
            room: "general".into(),
            keep_membership: true,
        },
        ClientFrame::Send {
            id: Some(2),
            room: "general".into(),
            cid: "c-7f3a".into(),
            body: Json::from_text(r#"{"text":"hi all"}"#).unwrap(),
            meta: Some(Json::from_text("[1]").unwrap()),
        },
        ClientFrame::History {
            id: Some(3),
            room: "general".into(),
            before: Some(41),
            after: Some(2),
            limit: Some(2),
        },
        ClientFrame::Read {
            id: Some(4),
            room: "general".into(),
            seq: 43,
        },
        ClientFrame::Delivered {
            id: Some(4),
            room: "general".into(),
            seq: 43,
        },
        ClientFrame::Typing {
            room: "general".into(),
            active: false,
        },
        ClientFrame::Presence {
            id: Some(6),
            room: "general".into(),
        },
        ClientFrame::Ping { id: Some(7) },
        ClientFrame::Pong {},
        ClientFrame::Refresh {
            id: Some(8),
            token: "jwt".into(),
        },
    ]
}

#[test]
fn every_client_frame_the_rust_types_produce_validates() {
    let v = validator(CLIENT_SCHEMA);
    for f in client_frames_full() {
        let value: Value = serde_json::from_str(&f.encode()).unwrap();
        assert_valid(&v, &value);
    }
    let minimal = [
        ClientFrame::Hello {
            v: PROTOCOL_VERSION,
            token: None,
            device: None,
            meta: None,
            resume: None,
        },
        ClientFrame::Join {
            id: None,
            room: "r".into(),
            since: None,
        },
        ClientFrame::History {
            id: None,
            room: "r".into(),
            before: None,
            after: None,
            limit: None,
        },
        ClientFrame::Ping { id: None },
    ];
    for f in minimal {
        let value: Value = serde_json::from_str(&f.encode()).unwrap();
        assert_valid(&v, &value);
    }
}
