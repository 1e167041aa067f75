//! (d) the schema and the parser, from one list

use chorus_protocol::{ClientFrame, ErrorCode, Json, PROTOCOL_VERSION, valid_cid, valid_room};
use serde_json::Value;

use super::support::*;

/// What happens to a client frame.
pub(crate) enum Verdict {
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

pub(crate) fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

pub(crate) fn client_cases() -> Vec<(String, Verdict)> {
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
pub(crate) fn client_frames_full() -> Vec<ClientFrame> {
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
