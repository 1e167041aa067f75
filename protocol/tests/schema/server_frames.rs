//! (b) every server frame the Rust types produce

use chorus_protocol::{
    DeviceInfo, ErrorCode, Json, Limits, Message, PROTOCOL_VERSION, PresenceUser, Receipt,
    RoomState, ServerFrame,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;

use super::meta::*;
use super::support::*;

/// The op of a server frame; exhaustive, so a new variant must be added here
/// (and to the lists below).
pub(crate) fn server_op(f: &ServerFrame) -> &'static str {
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

pub(crate) const MSG_ID: &str = "01935297-a1c0-7d21-8b3e-2f6a9c0d4e51";

pub(crate) fn message(full: bool) -> Message {
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

pub(crate) fn presence_user(full: bool) -> PresenceUser {
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

pub(crate) fn limits() -> Limits {
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
pub(crate) fn server_frames(full: bool) -> Vec<ServerFrame> {
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

pub(crate) fn server_frames_full() -> Vec<ServerFrame> {
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
