//! HTTP on the WebSocket's port: the upgrade at `/ws`, the JSON API under
//! `/v1`, health, readiness, metrics, the demo page, the SDK and the API's
//! OpenAPI document (`protocol/openapi.json`).
//!
//! Errors at this edge: bad input maps to 4xx without logging; internal faults
//! to a generic 5xx with the cause logged.

mod api;
mod error;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::node::Node;

use api::{get_messages, post_message, presence_query, room_presence, user_presence};
pub use error::ApiError;
use ws::ws_upgrade;

const INDEX_HTML: &str = include_str!("../../static/index.html");
/// The JavaScript SDK, served byte for byte as it is in the repository.
pub const SDK_JS: &str = include_str!("../../../protocol/js/chorus.js");
/// The OpenAPI 3.1 document of this HTTP API, served byte for byte as it is
/// in the repository.
pub const OPENAPI_JSON: &str = include_str!("../../../protocol/openapi.json");

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
pub(super) fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
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

/// The credentials of an `Authorization: Bearer …` header (the scheme name is
/// case-insensitive, RFC 9110 11.1), trimmed; possibly empty. `None` without
/// the header or with another scheme.
pub(super) fn bearer_credentials(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}
