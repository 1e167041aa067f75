//! How to connect: [`ClientConfig`], URL helpers and client message ids.

use std::time::Duration;

use crate::frame::{Json, PROTOCOL_VERSION, SUBPROTOCOL};

#[cfg(doc)]
use super::{ClientHandle, Event};

/// How to connect. Build with [`ClientConfig::new`] / [`ClientConfig::dev`] and
/// the `with_*` methods, or with struct update syntax over `Default`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws`, may include `?access_token=` or `?user=` (see [`dev_url`]).
    pub url: String,
    /// JWT sent in `hello.token`.
    pub token: Option<String>,
    /// Device name sent in `hello.device`.
    pub device: Option<String>,
    /// Presence metadata sent in `hello.meta`.
    pub meta: Option<Json>,
    /// Timeout of one `send` attempt (until its `ack` or `error`). Default 10 s.
    pub send_timeout: Duration,
    /// Attempts made by [`ClientHandle::send_with_retry`]. Default 5.
    pub max_send_attempts: u32,
    /// Timeout of other requests (join, leave, history, presence, ping). Default 30 s.
    pub request_timeout: Duration,
    /// Timeout of the TCP connect + WebSocket upgrade, and separately of
    /// `hello` -> `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// Capacity of the event channel. Default 65536. See the module docs: the
    /// application must drain it.
    pub event_capacity: usize,
    /// Extra HTTP headers on the upgrade request, e.g.
    /// `("Authorization".into(), format!("Bearer {jwt}"))`.
    pub headers: Vec<(String, String)>,
    /// Subprotocols offered in `Sec-WebSocket-Protocol`. Default `["chorus.v1"]`.
    /// Note: the WebSocket library fails the handshake if subprotocols are
    /// offered and the server does not echo one of them; use an empty list to
    /// offer none.
    pub subprotocols: Vec<String>,
    /// `hello.v`. Default 1 (tests set another value to get close 4506).
    pub protocol_version: u32,
    /// Answer the server's `{"op":"ping"}` with `{"op":"pong"}`. Default true
    /// (tests turn it off to provoke close 4001).
    pub auto_pong: bool,
    /// Treat the connection as dead when no frame arrives for
    /// [`ClientConfig::dead_after`]: it is dropped and [`Event::Closed`] with
    /// `code: None` is emitted. Default true.
    pub detect_dead: bool,
    /// Silence after which the connection is dead. `None` (default):
    /// `2 x welcome.heartbeat_ms + 1 s`.
    pub dead_after: Option<Duration>,
    /// First back-off step of [`ClientHandle::send_with_retry`]. Default 50 ms.
    pub retry_base: Duration,
    /// Largest back-off step of [`ClientHandle::send_with_retry`]. Default 2 s.
    pub retry_cap: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: String::new(),
            token: None,
            device: None,
            meta: None,
            send_timeout: Duration::from_secs(10),
            max_send_attempts: 5,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            event_capacity: 65536,
            headers: Vec::new(),
            subprotocols: vec![SUBPROTOCOL.to_owned()],
            protocol_version: PROTOCOL_VERSION,
            auto_pong: true,
            detect_dead: true,
            dead_after: None,
            retry_base: Duration::from_millis(50),
            retry_cap: Duration::from_secs(2),
        }
    }
}

impl ClientConfig {
    /// Defaults with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Defaults with `dev_url(base, user)` (dev-mode authentication).
    pub fn dev(base: &str, user: &str) -> Self {
        ClientConfig::new(dev_url(base, user))
    }

    /// Set `hello.token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Set `hello.device`.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Set `hello.meta`.
    pub fn with_meta(mut self, meta: Json) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Add an HTTP header to the upgrade request.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Send the JWT as `Authorization: Bearer <jwt>`.
    pub fn with_bearer(self, jwt: &str) -> Self {
        self.with_header("Authorization", format!("Bearer {jwt}"))
    }
}

/// `base` with `user=<user>` appended to the query (dev-mode authentication).
pub fn dev_url(base: &str, user: &str) -> String {
    with_query(base, "user", user)
}

/// `base` with `access_token=<jwt>` appended to the query.
pub fn token_url(base: &str, jwt: &str) -> String {
    with_query(base, "access_token", jwt)
}

/// `base` with `key=value` appended to the query, the value percent-encoded.
pub fn with_query(base: &str, key: &str, value: &str) -> String {
    let sep = if base.contains('?') {
        if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    let mut url = String::with_capacity(base.len() + key.len() + value.len() + 2);
    url.push_str(base);
    url.push_str(sep);
    url.push_str(key);
    url.push('=');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// A fresh client message id (UUID v7 text).
pub fn new_cid() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(dev_url("ws://h:1/ws", "alice"), "ws://h:1/ws?user=alice");
        assert_eq!(
            dev_url("ws://h:1/ws?x=1", "a b&c"),
            "ws://h:1/ws?x=1&user=a%20b%26c"
        );
        assert_eq!(dev_url("ws://h:1/ws?", "u"), "ws://h:1/ws?user=u");
        assert_eq!(
            token_url("ws://h/ws", "a.b-c_d"),
            "ws://h/ws?access_token=a.b-c_d"
        );
        assert_eq!(
            ClientConfig::dev("ws://h/ws", "bob").url,
            "ws://h/ws?user=bob"
        );
    }
}
