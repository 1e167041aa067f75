//! Stored messages on their way out: protocol messages and `msg` frames built
//! from history rows, and history pages, shared by connections (replay, gap
//! fill, `history`), the fan-out (node-level gap fill) and the HTTP API.

use axum::extract::ws::Utf8Bytes;
use chorus_history::{HistoryStore, ReadRange, StoreError, StoredMessage};
use chorus_protocol::{Json, Message, ServerFrame};

/// A stored message as a protocol message named by its public room.
///
/// Rows are checked against the application-JSON rules on the way out too: a
/// row written before the rules existed, or edited by hand, must not make the
/// room's history unreadable. Such a body is served as `null` (a meta is
/// dropped), counted in `chorus_history_invalid_rows_total` and logged; the
/// message keeps its place so that sequence numbers stay gap-free.
pub(crate) fn to_message(room: &str, m: StoredMessage) -> Message {
    let body = match app_json(room, m.seq, "body", m.body) {
        Some(body) => body,
        None => Json::from_value(&serde_json::Value::Null),
    };
    let meta = m.meta.and_then(|t| app_json(room, m.seq, "meta", t));
    Message {
        room: room.to_owned(),
        seq: m.seq,
        id: m.id,
        sender: m.sender,
        cid: Some(m.cid),
        body,
        meta,
        ts: m.ts,
    }
}

/// A message as its serialised `msg` frame (encoded once, shared by every
/// connection it goes to).
pub(crate) fn msg_frame(message: Message) -> Utf8Bytes {
    Utf8Bytes::from(ServerFrame::Msg(message).encode())
}

/// Stored application JSON if it still passes the rules; `None` (logged and
/// counted) if not.
fn app_json(room: &str, seq: u64, field: &'static str, text: String) -> Option<Json> {
    let checked = chorus_protocol::check_app_json(&text)
        .map_err(|rule| rule.to_string())
        .and_then(|()| Json::from_text(text).map_err(|e| e.to_string()));
    match checked {
        Ok(json) => Some(json),
        Err(why) => {
            metrics::counter!("chorus_history_invalid_rows_total").increment(1);
            tracing::error!(room, seq, field, %why, "stored message breaks the JSON rules; served without it");
            None
        }
    }
}

/// One history page: `after` ascending, `before` the newest below it, neither
/// the newest of the room. Returns the messages ascending and whether more exist
/// in the paging direction.
pub(crate) async fn read_page(
    store: &dyn HistoryStore,
    key: &str,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
    max: u64,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
    let limit = limit
        .unwrap_or(50)
        .clamp(1, max.min(u32::MAX as u64 - 1) as u32);
    let range = match (after, before) {
        (Some(after), _) => ReadRange::After {
            after,
            limit: limit + 1,
        },
        (None, Some(before)) => ReadRange::Before {
            before,
            limit: limit + 1,
        },
        (None, None) => ReadRange::Before {
            before: u64::MAX,
            limit: limit + 1,
        },
    };
    let mut messages = store.read(key, range).await?;
    let has_more = messages.len() > limit as usize;
    if has_more {
        match range {
            ReadRange::After { .. } => {
                messages.truncate(limit as usize);
            }
            ReadRange::Before { .. } => {
                messages.remove(0);
            }
        }
    }
    if let (Some(after), Some(before)) = (after, before) {
        messages.retain(|m| m.seq > after && m.seq < before);
    }
    Ok((messages, has_more))
}
