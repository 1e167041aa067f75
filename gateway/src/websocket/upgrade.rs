//! The WebSocket opening handshake (RFC 6455 section 4.2) on an HTTP/1.1
//! request: the request checked, `101 Switching Protocols` answered, and the
//! upgraded TCP stream turned into a [`WsSocket`].
//!
//! The accept key comes from tungstenite (`derive_accept_key`): the handshake
//! costs nothing worth rewriting; the frames after it are ours.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, warn};

use super::WsSocket;
use crate::listener::LingerStream;

/// A valid upgrade request, not answered yet.
pub(crate) struct WsUpgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
    /// The subprotocols the client offered, in its order.
    offered: Vec<String>,
}

/// Why a request is not a WebSocket upgrade (plain text, PROTOCOL.md 2.1).
#[derive(Debug)]
pub(crate) struct WsUpgradeRejection(StatusCode, &'static str);

impl IntoResponse for WsUpgradeRejection {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = WsUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let bad = |why| Err(WsUpgradeRejection(StatusCode::BAD_REQUEST, why));
        if parts.method != Method::GET {
            return Err(WsUpgradeRejection(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET request",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return bad("Connection header did not include 'upgrade'");
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return bad("`Upgrade` header did not include 'websocket'");
        }
        let version = parts.headers.get(header::SEC_WEBSOCKET_VERSION);
        if version.is_none_or(|v| v.as_bytes() != b"13") {
            return bad("`Sec-WebSocket-Version` header did not include '13'");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return bad("`Sec-WebSocket-Key` header missing");
        };
        // Base64, so always a valid header value.
        let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
            return bad("`Sec-WebSocket-Key` header is not valid");
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(WsUpgradeRejection(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(WsUpgrade {
            on_upgrade,
            accept,
            offered,
        })
    }
}

impl WsUpgrade {
    /// Answer `101` (with `protocol` if the client offered it) and run `serve`
    /// on the socket once the connection is upgraded, in a task of its own.
    /// `max_message` bounds every frame and message the client sends.
    pub(crate) fn on_upgrade<F, Fut>(
        self,
        protocol: &'static str,
        max_message: usize,
        serve: F,
    ) -> Response
    where
        F: FnOnce(WsSocket<LingerStream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let chosen = self.offered.iter().any(|p| p == protocol);
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            // The node's listener serves every connection over a
            // `LingerStream`; the socket is made on that stream itself, so
            // no layer of hyper's sits between the connection and the kernel.
            let socket = match upgraded.downcast::<TokioIo<LingerStream>>() {
                Ok(parts) => WsSocket::new(parts.io.into_inner(), &parts.read_buf, max_message),
                Err(_) => {
                    warn!("websocket upgrade on a stream the listener did not make");
                    return;
                }
            };
            serve(socket).await;
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if chosen {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}
