//! Frame tests: decoding and its errors, round trips of client and server
//! frames, the name rules.

use super::*;
use crate::codes::ErrorCode;

#[test]
fn decode_send_keeps_raw_body() {
    let f = ClientFrame::decode(
        r#"{"op":"send","id":7,"room":"r","cid":"c1","body":{"text":"hi"},"extra":1}"#,
    )
    .unwrap();
    match f {
        ClientFrame::Send {
            id,
            room,
            cid,
            body,
            meta,
        } => {
            assert_eq!(id, Some(7));
            assert_eq!(room, "r");
            assert_eq!(cid, "c1");
            assert_eq!(body.get(), r#"{"text":"hi"}"#);
            assert!(meta.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn decode_errors_carry_id_and_op() {
    let e = ClientFrame::decode(r#"{"op":"frobnicate","id":3}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownOp);
    assert_eq!(e.id, Some(3));
    let e = ClientFrame::decode(r#"{"op":"join","id":4,"room":5}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(e.id, Some(4));
    assert_eq!(e.op.as_deref(), Some("join"));
    let e = ClientFrame::decode("{not json").unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = ClientFrame::decode(r#"{"op":"send","room":"r","cid":"x"}"#).unwrap_err();
    assert!(e.message.contains("body"));
    let e = ClientFrame::decode(r#"{"op":7,"id":13}"#).unwrap_err();
    assert_eq!(
        (e.code, e.id, e.op),
        (ErrorCode::BadRequest, Some(13), None)
    );
    let e = ClientFrame::decode(r#"[1,2]"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[test]
fn client_frames_round_trip() {
    let frames = vec![
        ClientFrame::Hello {
            v: 1,
            token: Some("t".into()),
            device: Some("phone".into()),
            meta: Some(Json::from_text(r#"{"a":1}"#).unwrap()),
            resume: Some(Resume {
                token: "r".into(),
                rooms: [("x".to_string(), 3)].into(),
            }),
        },
        ClientFrame::Join {
            id: Some(1),
            room: "r".into(),
            since: Some(2),
        },
        ClientFrame::Leave {
            id: None,
            room: "r".into(),
            keep_membership: true,
        },
        ClientFrame::Send {
            id: Some(2),
            room: "r".into(),
            cid: "c".into(),
            body: Json::from_text("\"hi\"").unwrap(),
            meta: None,
        },
        ClientFrame::History {
            id: None,
            room: "r".into(),
            before: Some(9),
            after: None,
            limit: Some(5),
        },
        ClientFrame::Read {
            id: None,
            room: "r".into(),
            seq: 4,
        },
        ClientFrame::Delivered {
            id: None,
            room: "r".into(),
            seq: 4,
        },
        ClientFrame::Typing {
            room: "r".into(),
            active: false,
        },
        ClientFrame::Presence {
            id: Some(9),
            room: "r".into(),
        },
        ClientFrame::Ping { id: Some(1) },
        ClientFrame::Pong {},
        ClientFrame::Refresh {
            id: Some(3),
            token: "jwt".into(),
        },
    ];
    for f in frames {
        let text = f.encode();
        let back = ClientFrame::decode(&text).unwrap();
        assert_eq!(back.encode(), text);
    }
}

#[test]
fn server_frames_round_trip() {
    let msg = ServerFrame::Msg(Message {
        room: "r".into(),
        seq: 1,
        id: "m".into(),
        sender: "u".into(),
        cid: Some("c".into()),
        body: Json::from_text(r#"{"text":"hi"}"#).unwrap(),
        meta: None,
        ts: 5,
    });
    let text = msg.encode();
    assert!(
        text.starts_with(r#"{"op":"msg","room":"r","seq":1"#),
        "{text}"
    );
    let back = ServerFrame::decode(&text).unwrap();
    assert_eq!(back.encode(), text);
    for (f, want) in [
        (
            ServerFrame::Refreshed {
                id: Some(4),
                exp: 1_700_000_000,
            },
            r#"{"op":"refreshed","id":4,"exp":1700000000}"#,
        ),
        (
            ServerFrame::RefreshNeeded { exp: 1_700_000_000 },
            r#"{"op":"refresh_needed","exp":1700000000}"#,
        ),
    ] {
        assert_eq!(f.encode(), want);
        assert_eq!(ServerFrame::decode(want).unwrap().encode(), want);
    }
    let e = ClientFrame::decode(r#"{"op":"refresh","id":5}"#).unwrap_err();
    assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(5)));
    assert!(e.message.contains("token"), "{}", e.message);
    let err = ServerFrame::error(ErrorCode::RateLimited, "slow down");
    let text = err.encode();
    assert!(text.contains(r#""retryable":true"#));
    assert_eq!(ServerFrame::decode(&text).unwrap().encode(), text);
}

#[test]
fn room_names() {
    assert!(valid_room("general"));
    assert!(valid_room("dm:alice:bob"));
    assert!(!valid_room(""));
    assert!(!valid_room("a/b"));
    assert!(!valid_room(&"x".repeat(129)));
    assert_eq!(direct_room("bob", "alice"), "dm:alice:bob");
}

/// PROTOCOL.md 1.4: a cid is 1-128 characters, not bytes.
#[test]
fn cids_are_counted_in_characters() {
    assert!(!valid_cid(""));
    assert!(valid_cid("c"));
    assert!(valid_cid(&"x".repeat(128)));
    assert!(!valid_cid(&"x".repeat(129)));
    // 128 characters of two bytes each (256 bytes) are fine; 129 are not.
    assert!(valid_cid(&"é".repeat(128)));
    assert!(!valid_cid(&"é".repeat(129)));
    assert!(valid_cid(&"🙂".repeat(128)));
}

/// PROTOCOL.md 5.1 and 3.1: any `uint` version is a decodable `hello`
/// (then closed 4506 unless it is 1), also one beyond 32 bits.
#[test]
fn hello_versions_beyond_u32_decode_as_unsupported() {
    for (text, want) in [
        (r#"{"op":"hello"}"#, PROTOCOL_VERSION),
        (r#"{"op":"hello","v":2}"#, 2),
        (r#"{"op":"hello","v":4294967295}"#, u32::MAX),
        (r#"{"op":"hello","v":4294967296}"#, u32::MAX),
        (r#"{"op":"hello","v":18446744073709551615}"#, u32::MAX),
    ] {
        match ClientFrame::decode(text) {
            Ok(ClientFrame::Hello { v, .. }) => assert_eq!(v, want, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(ClientFrame::decode(r#"{"op":"hello","v":-1}"#).is_err());
    assert!(ClientFrame::decode(r#"{"op":"hello","v":"1"}"#).is_err());
}

/// PROTOCOL.md 6.13, found by the `client_frame` fuzz target: a frame
/// without `op` is answered with `request: ""` also when another field is
/// malformed; a non-string `op` gets no `request`.
#[test]
fn malformed_frames_without_op_name_an_empty_request() {
    let e = ClientFrame::decode(r#"{"id":1,"room":5}"#).unwrap_err();
    assert_eq!((e.op.as_deref(), e.id), (Some(""), Some(1)));
    let e = ClientFrame::decode(r#"{"id":2}"#).unwrap_err();
    assert_eq!((e.op.as_deref(), e.id), (Some(""), Some(2)));
    // `null` counts as absent, as everywhere in the protocol.
    let e = ClientFrame::decode(r#"{"op":null,"id":3}"#).unwrap_err();
    assert_eq!((e.op.as_deref(), e.id), (Some(""), Some(3)));
    let e = ClientFrame::decode(r#"{"op":7,"id":4,"room":5}"#).unwrap_err();
    assert_eq!((e.op, e.id), (None, Some(4)));
}
