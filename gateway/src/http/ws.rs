//! The WebSocket upgrade at `/ws`: the drain and origin checks, the
//! credentials, the size limit.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_protocol::SUBPROTOCOL;
use serde::Deserialize;

use super::bearer_credentials;
use super::error::{ApiError, ApiQuery};
use crate::config::normalize_origin;
use crate::conn::{UpgradeAuth, serve};
use crate::listener::Slot;
use crate::node::Node;
use crate::websocket::WsUpgrade;

#[derive(Deserialize, Default)]
pub(super) struct WsQuery {
    access_token: Option<String>,
    user: Option<String>,
}

pub(super) async fn ws_upgrade(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<WsQuery>,
    headers: HeaderMap,
    slot: Option<Extension<Slot>>,
    ws: WsUpgrade,
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
    let slot = slot.map(|Extension(s)| s);
    ws.on_upgrade(SUBPROTOCOL, max, move |socket| {
        serve(node, socket, creds, slot)
    })
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

/// The client JWT of an upgrade request's `Authorization: Bearer` header; an
/// empty one counts as absent (PROTOCOL.md 2.1: the first token present).
fn bearer(headers: &HeaderMap) -> Option<String> {
    bearer_credentials(headers).filter(|t| !t.is_empty())
}
