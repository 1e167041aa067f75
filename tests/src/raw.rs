//! A bare WebSocket speaking chorus's JSON by hand, for tests where the exact
//! frames on the wire matter (field presence, `id` echo, frame order, malformed
//! input, binary and invalid UTF-8 frames, a reader that never reads). Ordinary
//! sessions use the Rust client (`chorus_protocol::client`).

use std::time::Duration;

use chorus_protocol::client::{ClientConfig, connect_ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::GatewayProcess;

/// How long a raw socket waits for anything the server should do "soon".
pub const T: Duration = Duration::from_secs(20);

/// A bare WebSocket: JSON text frames written and read by hand.
pub struct Raw<S> {
    pub ws: WebSocketStream<S>,
}

pub type RawWs = Raw<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

impl RawWs {
    /// Upgrade only (no hello).
    pub async fn open(url: &str) -> RawWs {
        let ws = connect_ws(&ClientConfig::new(url))
            .await
            .expect("websocket upgrade");
        Raw { ws }
    }

    /// Upgrade with a JWT for `user` in the URL, send `hello`, read `welcome`.
    pub async fn hello(node: &GatewayProcess, user: &str) -> (RawWs, Value) {
        RawWs::hello_with(node, user, json!({})).await
    }

    /// As [`RawWs::hello`], with `extra` fields in the `hello`.
    pub async fn hello_with(node: &GatewayProcess, user: &str, extra: Value) -> (RawWs, Value) {
        RawWs::open(&node.url_for(user))
            .await
            .into_hello_with(extra)
            .await
    }

    /// `hello` on an already upgraded socket (credentials in the URL), `welcome`.
    pub async fn into_hello(self) -> (RawWs, Value) {
        self.into_hello_with(json!({})).await
    }

    async fn into_hello_with(mut self, extra: Value) -> (RawWs, Value) {
        let mut hello = json!({"op": "hello"});
        if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        self.send(hello).await;
        let w = self.recv().await;
        assert_eq!(w["op"], "welcome", "{w}");
        (self, w)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub async fn send(&mut self, v: Value) {
        self.text(v.to_string()).await;
    }

    pub async fn text(&mut self, s: impl Into<String>) {
        self.ws
            .send(WsMessage::Text(s.into().into()))
            .await
            .expect("write");
    }

    pub async fn message(&mut self, m: WsMessage) {
        self.ws.send(m).await.expect("write");
    }

    /// The next text frame as JSON (server pings included), within `T`.
    pub async fn next_any(&mut self) -> Value {
        let t = self.next_text().await;
        let v: Value = serde_json::from_str(&t).expect("server sent JSON");
        assert!(v.is_object(), "{v}");
        assert_no_nulls(&v);
        v
    }

    /// The next text frame as sent, within `T`.
    pub async fn next_text(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("no frame from the server in time")
                .expect("stream ended")
                .expect("read failed");
            match m {
                WsMessage::Text(t) => return t.as_str().to_owned(),
                WsMessage::Close(cf) => panic!("unexpected close: {cf:?}"),
                WsMessage::Binary(_) => panic!("the server sent a binary frame"),
                _ => {}
            }
        }
    }

    /// The next frame that is not a server `ping`.
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.next_any().await;
            if v["op"] != "ping" {
                return v;
            }
        }
    }

    /// Skip frames until one matches.
    pub async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let v = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {T:?}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// The reply (or error) carrying this id.
    pub async fn reply(&mut self, id: u64) -> Value {
        self.recv_where(&format!("reply to id {id}"), |v| v["id"] == id)
            .await
    }

    /// Send a request and wait for the frame echoing its id.
    pub async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].as_u64().expect("request with id");
        self.send(v).await;
        self.reply(id).await
    }

    /// The next error frame.
    pub async fn error(&mut self) -> Value {
        self.recv_where("error", |v| v["op"] == "error").await
    }

    /// Frames other than pings arriving within `d`.
    pub async fn frames_for(&mut self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(v) = tokio::time::timeout_at(deadline, self.recv()).await {
            out.push(v);
        }
        out
    }

    /// Read (skipping data frames) until the close frame: its code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + T;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no close frame in time");
            match m {
                Some(Ok(WsMessage::Close(Some(cf)))) => {
                    return (u16::from(cf.code), cf.reason.as_str().to_owned());
                }
                Some(Ok(WsMessage::Close(None))) => panic!("close frame without a code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("read failed before the close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// A `join` by hand, returning the `joined` frame.
    pub async fn join(&mut self, id: u64, room: &str) -> Value {
        let j = self
            .request(json!({"op": "join", "id": id, "room": room}))
            .await;
        assert_eq!(j["op"], "joined", "{j}");
        j
    }
}

/// The spec (1.2): the server never sends `null` for a protocol field.
/// Application JSON (`body`, `meta`) is the sender's and is not looked into;
/// `body: null` is how a stored message that breaks the JSON rules is served (1.4).
pub fn assert_no_nulls(v: &Value) {
    match v {
        Value::Null => panic!("the server sent a null"),
        Value::Array(a) => a.iter().for_each(assert_no_nulls),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| *k != "body" && *k != "meta")
            .for_each(|(_, v)| assert_no_nulls(v)),
        _ => {}
    }
}
