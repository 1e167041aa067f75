//! The JSON API under `/v1`: presence (room, user, query), history pages and
//! publishing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json as AxumJson;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chorus_protocol::check_app_json;
use chorus_protocol::{Json, Message, PresenceUser, valid_room};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::authorize;
use super::error::{ApiError, ApiPath, ApiQuery, json_rejection};
use crate::names::{namespaced, valid_tenant, valid_user};
use crate::node::Node;
use crate::ops::Fail;
use crate::ops::send::{Origin, submit};
use crate::send::{SendRequest, await_ack};
use crate::wire::{read_page, to_message};

#[derive(Deserialize, Default)]
pub(super) struct TenantQuery {
    tenant: Option<String>,
}

impl TenantQuery {
    fn tenant(&self) -> Result<Option<&str>, ApiError> {
        match self.tenant.as_deref() {
            Some(t) if !valid_tenant(t) => Err(ApiError::bad_request("invalid tenant")),
            t => Ok(t),
        }
    }
}

fn room_key(room: &str, q: &TenantQuery) -> Result<String, ApiError> {
    if !valid_room(room) {
        return Err(ApiError::bad_request(
            "room names are 1-128 chars of A-Z a-z 0-9 _ - . : @ #",
        ));
    }
    Ok(namespaced(q.tenant()?, room))
}

fn user_key(user: &str, q: &TenantQuery) -> Result<String, ApiError> {
    if !valid_user(user) {
        return Err(ApiError::bad_request(
            "user ids are 1-128 chars of A-Z a-z 0-9 _ - . @",
        ));
    }
    Ok(namespaced(q.tenant()?, user))
}

fn presence_fail(e: crate::presence::PresenceError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

pub(super) async fn room_presence(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    room: Result<ApiPath<String>, ApiError>,
    q: Result<ApiQuery<TenantQuery>, ApiError>,
) -> Result<AxumJson<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let (ApiPath(room), ApiQuery(q)) = (room?, q?);
    let key = room_key(&room, &q)?;
    let users: Vec<PresenceUser> = node.presence.room(&key).await.map_err(presence_fail)?;
    Ok(AxumJson(
        json!({"room": room, "count": users.len(), "users": users}),
    ))
}

async fn user_json(node: &Node, user: &str, key: &str) -> Result<serde_json::Value, ApiError> {
    let devices = node.presence.user(key).await.map_err(presence_fail)?;
    let devices: Vec<serde_json::Value> = devices
        .into_iter()
        .map(|d| {
            let rooms: Vec<&str> = d.rooms.iter().map(|r| crate::names::public_name(r)).collect();
            let mut v = json!({"device": d.info.device, "node": d.info.node, "since": d.info.since, "rooms": rooms});
            // Omitted when absent, as everywhere else (never `null`).
            if let (Some(meta), Some(o)) = (d.info.meta, v.as_object_mut()) {
                o.insert("meta".into(), meta);
            }
            v
        })
        .collect();
    Ok(json!({"user": user, "online": !devices.is_empty(), "devices": devices}))
}

pub(super) async fn user_presence(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    user: Result<ApiPath<String>, ApiError>,
    q: Result<ApiQuery<TenantQuery>, ApiError>,
) -> Result<AxumJson<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let (ApiPath(user), ApiQuery(q)) = (user?, q?);
    let key = user_key(&user, &q)?;
    Ok(AxumJson(user_json(&node, &user, &key).await?))
}

#[derive(Deserialize)]
pub(super) struct PresenceQueryBody {
    users: Vec<String>,
}

/// Most users in one presence query.
const MAX_QUERY_USERS: usize = 1000;

pub(super) async fn presence_query(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    q: Result<ApiQuery<TenantQuery>, ApiError>,
    body: Result<AxumJson<PresenceQueryBody>, axum::extract::rejection::JsonRejection>,
) -> Result<AxumJson<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let ApiQuery(q) = q?;
    let AxumJson(body) = body.map_err(json_rejection)?;
    if body.users.len() > MAX_QUERY_USERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_QUERY_USERS} users per query"
        )));
    }
    // Every id (and the tenant, also for an empty list) is checked before any
    // is looked up: one bad id fails the whole request.
    q.tenant()?;
    let keys = body
        .users
        .iter()
        .map(|user| Ok((user, user_key(user, &q)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut out = BTreeMap::new();
    for (user, key) in keys {
        let mut v = user_json(&node, user, &key).await?;
        if let Some(o) = v.as_object_mut() {
            o.remove("user");
        }
        out.insert(user.clone(), v);
    }
    Ok(AxumJson(json!({"users": out})))
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<u32>,
    tenant: Option<String>,
}

pub(super) async fn get_messages(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    room: Result<ApiPath<String>, ApiError>,
    q: Result<ApiQuery<PageQuery>, ApiError>,
) -> Result<AxumJson<MessagePage>, ApiError> {
    authorize(&node, &headers)?;
    let (ApiPath(room), ApiQuery(q)) = (room?, q?);
    let key = room_key(
        &room,
        &TenantQuery {
            tenant: q.tenant.clone(),
        },
    )?;
    if node.cfg.test_panic_room.as_deref() == Some(room.as_str()) {
        panic!("--test-panic-room: history of {room}");
    }
    let (messages, has_more) = read_page(
        &*node.store,
        &key,
        q.before,
        q.after,
        q.limit,
        node.cfg.history.max_history_page,
    )
    .await?;
    let messages: Vec<ApiMessage> = messages
        .into_iter()
        .map(|m| ApiMessage::from(to_message(&room, m)))
        .collect();
    // A struct, not `json!`: bodies are raw JSON text and are written out as
    // stored, never re-parsed into a `Value` (which could fail).
    Ok(AxumJson(MessagePage {
        has_more,
        messages,
        room,
    }))
}

/// The reply of `GET /v1/rooms/{room}/messages`. Fields in byte-wise order:
/// the API writes every object's keys sorted (PROTOCOL.md 14).
#[derive(Serialize)]
pub(super) struct MessagePage {
    has_more: bool,
    messages: Vec<ApiMessage>,
    room: String,
}

/// A [`Message`] as the HTTP API writes it: the same fields, keys sorted
/// (the WebSocket's `msg` frames keep the protocol's field order).
#[derive(Serialize)]
pub(super) struct ApiMessage {
    body: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Json>,
    room: String,
    sender: String,
    seq: u64,
    ts: i64,
}

impl From<Message> for ApiMessage {
    fn from(m: Message) -> ApiMessage {
        ApiMessage {
            body: m.body,
            cid: m.cid,
            id: m.id,
            meta: m.meta,
            room: m.room,
            sender: m.sender,
            seq: m.seq,
            ts: m.ts,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct PublishBody {
    sender: String,
    cid: Option<String>,
    /// Raw text, checked by the application-JSON rules as a WebSocket `send` is.
    body: Box<RawValue>,
    meta: Option<Box<RawValue>>,
}

/// Check raw application JSON by the rules of `chorus_protocol::json`, with
/// the WebSocket's error text (`"{field}: {rule}"`), and re-encode it
/// compactly with object keys sorted (PROTOCOL.md 14.5).
fn app_json(field: &str, raw: &RawValue) -> Result<Json, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("{field}: {why}"));
    check_app_json(raw.get()).map_err(|rule| bad(rule.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
    Ok(Json::from_value(&value))
}

pub(super) async fn post_message(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    room: Result<ApiPath<String>, ApiError>,
    q: Result<ApiQuery<TenantQuery>, ApiError>,
    body: Result<AxumJson<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<AxumJson<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let (ApiPath(room), ApiQuery(q)) = (room?, q?);
    let key = room_key(&room, &q)?;
    let AxumJson(p) = body.map_err(json_rejection)?;
    if !valid_user(&p.sender) {
        return Err(ApiError::bad_request("sender must be a valid user id"));
    }
    if p.body.get() == "null" {
        return Err(ApiError::bad_request("body must not be null"));
    }
    let meta = match &p.meta {
        Some(m) if m.get() != "null" => Some(app_json("meta", m)?),
        _ => None,
    };
    let body = app_json("body", &p.body)?;
    let cid = p.cid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if node.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining",
        ));
    }
    // The one send path (`ops::send`), with the sender's limit the one its
    // WebSocket sends share (the same bucket, `--user-sends-per-sec`), then
    // the tenant's.
    let sender_key = namespaced(q.tenant()?, &p.sender);
    let req = SendRequest {
        room: key,
        sender: p.sender,
        cid,
        body,
        meta,
    };
    let from = Origin {
        user_key: &sender_key,
        tenant: q.tenant()?,
        bucket: None,
    };
    let rx = submit(&node, req, from).await?;
    let a = await_ack(rx, node.cfg.send.send_timeout())
        .await
        .map_err(Fail::from)?;
    Ok(AxumJson(
        json!({"room": room, "seq": a.seq, "id": a.id, "ts": a.ts, "duplicate": a.duplicate}),
    ))
}
