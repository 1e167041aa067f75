//! HTTP on the WebSocket's port: the upgrade at `/ws`, the JSON API under
//! `/v1`, health, readiness, metrics, the demo page, the SDK and the API's
//! OpenAPI document (`protocol/openapi.json`).
//!
//! Errors at this edge: bad input maps to 4xx without logging; internal faults
//! to a generic 5xx with the cause logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json as AxumJson, Router};
use chorus_history::StoreError;
use chorus_protocol::check_app_json;
use chorus_protocol::{ErrorCode, Json, Message, PresenceUser, SUBPROTOCOL, valid_room};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::normalize_origin;
use crate::conn::{UpgradeAuth, serve};
use crate::listener::Slot;
use crate::names::{namespaced, valid_tenant, valid_user};
use crate::node::Node;
use crate::ops::Fail;
use crate::ops::send::{Origin, submit};
use crate::send::{SendRequest, await_ack};
use crate::wire::{read_page, to_message};

const INDEX_HTML: &str = include_str!("../static/index.html");
/// The JavaScript SDK, served byte for byte as it is in the repository.
pub const SDK_JS: &str = include_str!("../../protocol/js/chorus.js");
/// The OpenAPI 3.1 document of this HTTP API, served byte for byte as it is
/// in the repository.
pub const OPENAPI_JSON: &str = include_str!("../../protocol/openapi.json");

/// The whole HTTP surface.
pub fn router(node: Arc<Node>) -> Router {
    let body_timeout = Duration::from_millis(node.cfg.http.http_body_timeout_ms.max(1));
    Router::new()
        .route("/", get(index))
        .route("/ws", get(ws_upgrade))
        .route("/sdk/chorus.js", get(sdk_js))
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(|| async { "ok" }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/rooms/{room}/presence", get(room_presence))
        .route("/v1/users/{user}/presence", get(user_presence))
        .route("/v1/presence/query", post(presence_query))
        .route(
            "/v1/rooms/{room}/messages",
            get(get_messages).post(post_message),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(CatchPanicLayer::custom(handler_panicked))
        .with_state(node)
}

/// A panic in a handler: counted, logged once, answered with a 500 in the
/// API's error shape; the connection and every other request carry on.
fn handler_panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    crate::metrics::panicked("http", panic.as_ref());
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

/// Unknown paths get the API's error shape too.
async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path with a method it does not serve.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// A JSON body that could not be read: 413 when it is over the body limit,
/// 400 for everything else (wrong content type, bad JSON, wrong shape).
fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    if body_timed_out(&e) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive within the body timeout",
        )
    } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.body_text(),
        )
    } else {
        ApiError::bad_request(e.body_text())
    }
}

/// Whether a body rejection comes from `RequestBodyTimeoutLayer` (the body
/// did not arrive within `--http-body-timeout-ms`): somewhere in its chain of
/// sources is tower-http's `TimeoutError`.
fn body_timed_out(e: &axum::extract::rejection::JsonRejection) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// `Path` with the API's error shape on a rejection (a path segment that is
/// not valid UTF-8, say): `400 bad_request`, never axum's plain text.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
struct ApiPath<T>(T);

/// `Query` with the API's error shape on a rejection (a repeated or
/// malformed parameter).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
struct ApiQuery<T>(T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

/// An API error: status, stable code, message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = AxumJson(json!({"error": {"code": self.code, "message": self.message}}));
        let mut resp = (self.status, body).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A store error as the WebSocket maps it ([`Fail`]), then as a status.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        Fail::from(e).into()
    }
}

/// A refused or failed request, as the WebSocket would answer it, as a
/// status: the code's name stays the `error.code`; retryable failures carry
/// `Retry-After` in whole seconds (rounded up, at least 1) and a rate limit's
/// message names the milliseconds.
impl From<Fail> for ApiError {
    fn from(f: Fail) -> ApiError {
        let status = match f.code {
            ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable | ErrorCode::NotOwner | ErrorCode::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut message = f.message;
        let mut e = if f.code == ErrorCode::Internal {
            ApiError::new(status, "internal", "internal error")
        } else {
            if f.code == ErrorCode::RateLimited
                && let Some(ms) = f.retry_after_ms
            {
                message = format!("{message}; retry in {ms} ms");
            }
            ApiError::new(status, f.code.as_str(), message)
        };
        if f.code.retryable() && f.code != ErrorCode::Internal {
            e.retry_after = Some(f.retry_after_ms.unwrap_or(1000).div_ceil(1000).max(1));
        }
        e
    }
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /sdk/chorus.js`: the SDK as an ES module (`import { Chorus } from "/sdk/chorus.js"`).
async fn sdk_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SDK_JS,
    )
        .into_response()
}

/// `GET /openapi.json`: the OpenAPI document of the HTTP API (`protocol/openapi.json`).
async fn openapi_json() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        OPENAPI_JSON,
    )
        .into_response()
}

#[derive(Deserialize, Default)]
struct WsQuery {
    access_token: Option<String>,
    user: Option<String>,
}

async fn ws_upgrade(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<WsQuery>,
    headers: HeaderMap,
    slot: Option<Extension<Slot>>,
    ws: WebSocketUpgrade,
) -> Response {
    if node.is_draining() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; reconnect elsewhere",
        )
        .into_response();
    }
    if let Err(why) = check_origin(&node, &headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden_origin", why).into_response();
    }
    let creds = UpgradeAuth {
        token: bearer(&headers).or(q.access_token),
        dev_user: q.user,
    };
    let max = node.cfg.conn.max_frame_bytes as usize;
    // Small buffers: most connections are idle most of the time, and tungstenite
    // would otherwise allocate a large read buffer for each. Writes gather up to
    // WRITE_COALESCE bytes before they reach the socket: a connection draining a
    // backlog of deliveries (`connection::on_outbound` feeds them, then flushes
    // once) then makes one system call for many frames instead of one each.
    let ws = ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_CHUNK)
        .write_buffer_size(WRITE_COALESCE)
        .max_write_buffer_size(max.max(1 << 20) * 4)
        .max_message_size(max)
        .max_frame_size(max);
    let slot = slot.map(|Extension(s)| s);
    ws.on_upgrade(move |socket| serve(node, socket, creds, slot))
}

/// The browser origin check of a WebSocket upgrade (cross-site WebSocket
/// hijacking). Requests without `Origin` come from non-browser clients and
/// pass. With `--allowed-origin` the origin must be one of those; otherwise,
/// in dev mode (where `?user=` is a login anyone can use), only the node's
/// own origin passes: `http://` plus the request's `Host`, when that names
/// the local host (so a rebinding DNS name is refused too). Origins compare
/// as scheme, host and port, case-insensitive, a default port (`:80`,
/// `:443`) equal to none. An `Origin` that is not ASCII, or more than one,
/// is refused whenever a check applies.
fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), &'static str> {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = all.next() else {
        return Ok(());
    };
    let dev_only = node.cfg.http.allowed_origins.is_empty();
    if dev_only && !node.auth.dev() {
        return Ok(());
    }
    if all.next().is_some() {
        return Err("more than one Origin header");
    }
    let origin = origin.to_str().map_err(|_| "Origin header is not ASCII")?;
    let origin = normalize_origin(origin);
    let allowed = if dev_only {
        own_origin(headers).is_some_and(|own| own == origin)
    } else {
        // Normalised once, at start-up (`Config::from_args`).
        node.cfg.http.allowed_origins.contains(&origin)
    };
    if allowed {
        Ok(())
    } else {
        Err("origin not allowed")
    }
}

/// `http://HOST` of a request whose `Host` is the local host, normalised.
fn own_origin(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let local = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    local.then(|| normalize_origin(&format!("http://{host}")))
}

/// Bytes read from a socket at a time. tungstenite keeps (and zeroes on every
/// poll) a buffer of this size per connection; client frames are small.
const READ_CHUNK: usize = 1024;
/// Bytes of frames gathered per socket write (see `upgrade`).
const WRITE_COALESCE: usize = 16 * 1024;

/// The credentials of an `Authorization: Bearer …` header (the scheme name is
/// case-insensitive, RFC 9110 11.1), trimmed; possibly empty. `None` without
/// the header or with another scheme.
fn bearer_credentials(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

/// The client JWT of an upgrade request's `Authorization: Bearer` header; an
/// empty one counts as absent (PROTOCOL.md 2.1: the first token present).
fn bearer(headers: &HeaderMap) -> Option<String> {
    bearer_credentials(headers).filter(|t| !t.is_empty())
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match node.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if node.cfg.auth.metrics_require_api_key
        && let Err(e) = authorize(&node, &headers)
    {
        return e.into_response();
    }
    metrics::gauge!("chorus_rooms_local").set(node.hub.room_count() as f64);
    metrics::gauge!("chorus_writer_queue_depth").set(node.sequencer.queued() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

/// The API key check. With no key configured the API is open only in dev mode.
/// A Bearer header, even one with an empty key, is the key checked.
fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer_credentials(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    if node.cfg.auth.api_keys.is_empty() {
        // Open only in pure dev mode: with a JWT key configured the API needs
        // a key even where dev identities are also accepted.
        if node.auth.dev() && !node.cfg.auth.has_jwt_key() {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no API key is configured on this node",
        ));
    }
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing API key",
        )),
        Some(k)
            if node
                .cfg
                .auth
                .api_keys
                .iter()
                .any(|a| constant_time_eq(a.as_bytes(), k.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "invalid API key",
        )),
    }
}

/// Compare without an early exit, so response timing does not reveal a key prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize, Default)]
struct TenantQuery {
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

async fn room_presence(
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

async fn user_presence(
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
struct PresenceQueryBody {
    users: Vec<String>,
}

/// Most users in one presence query.
const MAX_QUERY_USERS: usize = 1000;

async fn presence_query(
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
struct PageQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<u32>,
    tenant: Option<String>,
}

async fn get_messages(
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
struct MessagePage {
    has_more: bool,
    messages: Vec<ApiMessage>,
    room: String,
}

/// A [`Message`] as the HTTP API writes it: the same fields, keys sorted
/// (the WebSocket's `msg` frames keep the protocol's field order).
#[derive(Serialize)]
struct ApiMessage {
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
struct PublishBody {
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

async fn post_message(
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
