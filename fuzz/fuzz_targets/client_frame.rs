//! `ClientFrame::decode` on arbitrary text.
//!
//! Asserts: no panic; a decoded frame re-encodes to text that decodes to the
//! same frame (compared through its encoding), with the same op and id; the
//! application JSON it carries passes `check_app_json`; an error for a frame
//! that is a readable JSON object echoes its `id` and its `op` as PROTOCOL.md
//! 6.13 describes (`request`: the op when it is a string, absent when it is
//! not a string, `""` when it is missing; by default absent is tolerated
//! there too, a known finding, asserted with the `pending` feature).
#![no_main]

use chorus_protocol::{ClientFrame, check_app_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::decode(text) {
        Ok(frame) => decoded(text, &frame),
        Err(e) => {
            assert!(!e.message.is_empty());
            let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
                return;
            };
            assert_eq!(
                e.id,
                obj.get("id").and_then(Value::as_u64),
                "id of {text:?}"
            );
            match obj.get("op") {
                Some(Value::String(op)) => {
                    assert_eq!(e.op.as_deref(), Some(op.as_str()), "op of {text:?}")
                }
                Some(_) => assert_eq!(e.op, None, "op of {text:?}"),
                None => missing_op(text, e.op.as_deref()),
            }
        }
    }
});

/// A frame with no `op` field: the error names the op `""`.
#[cfg(not(feature = "pending"))]
fn missing_op(text: &str, op: Option<&str>) {
    // Known gap (fuzz/FINDINGS.md, client_frame): a malformed frame without
    // `op` gets no op at all; only `""` or nothing is accepted here.
    assert!(matches!(op, Some("") | None), "op of {text:?}: {op:?}");
}

#[cfg(feature = "pending")]
fn missing_op(text: &str, op: Option<&str>) {
    assert_eq!(op, Some(""), "op of {text:?}");
}

fn decoded(text: &str, frame: &ClientFrame) {
    let enc = frame.encode();
    let again = ClientFrame::decode(&enc)
        .unwrap_or_else(|e| panic!("{text:?} decoded, its encoding {enc:?} did not: {e:?}"));
    assert_eq!(again.encode(), enc, "re-encoding of {text:?}");
    assert_eq!(again.op(), frame.op());
    assert_eq!(again.id(), frame.id());
    let obj: serde_json::Map<String, Value> =
        serde_json::from_str(&enc).expect("an encoded frame is a JSON object");
    assert_eq!(obj.get("op").and_then(Value::as_str), Some(frame.op()));
    match frame {
        ClientFrame::Hello { meta, .. } => {
            if let Some(m) = meta {
                assert_eq!(check_app_json(m.get()), Ok(()), "meta of {text:?}");
            }
        }
        ClientFrame::Send { body, meta, .. } => {
            assert_eq!(check_app_json(body.get()), Ok(()), "body of {text:?}");
            if let Some(m) = meta {
                assert_eq!(check_app_json(m.get()), Ok(()), "meta of {text:?}");
            }
        }
        _ => {}
    }
}
