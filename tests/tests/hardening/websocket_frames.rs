//! 10. WebSocket framing (RFC 6455)
//!
//! Through the node's own frame layer and a client that writes its frames by
//! hand: fragments are reassembled, pings answered between them, a close
//! answered with its code; frames RFC 6455 forbids are refused with close
//! 4500, and a frame over the size limit with 4504 as soon as its header
//! arrives, before any of its payload.

use std::time::Duration;

use chorus_tests::{GatewayProcess, token};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::*;

/// A WebSocket client over a bare TCP stream: the upgrade and every frame
/// written by hand, so that it can send what a library would refuse to.
struct Hand {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A client frame, masked; `b0` is the first byte (FIN, RSV, opcode).
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5A, 0x0F, 0xC3, 0x99];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

impl Hand {
    async fn open(node: &GatewayProcess, user: &str) -> Hand {
        let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
        let req = format!(
            "GET /ws?access_token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            token(user, 3600, None, None),
            node.addr
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut hand = Hand {
            tcp,
            buf: Vec::new(),
        };
        let head = hand.head().await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455 1.3's own example key and accept value.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        hand
    }

    /// Open, and `hello` in one frame; returns after `welcome`.
    async fn hello(node: &GatewayProcess, user: &str) -> Hand {
        let mut hand = Hand::open(node, user).await;
        hand.send(&frame(0x81, br#"{"op":"hello","v":1}"#)).await;
        assert_eq!(hand.json().await["op"], "welcome");
        hand
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The response head of the upgrade.
    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            assert!(
                self.fill().await > 0,
                "connection closed during the upgrade"
            );
        }
    }

    /// The next server frame: its first byte and its payload. Server frames
    /// are never masked.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "a server frame is not masked");
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return (b0, payload);
                }
            }
            assert!(self.fill().await > 0, "connection closed before a frame");
        }
    }

    /// The next text frame, as JSON.
    async fn json(&mut self) -> Value {
        let (b0, payload) = self.frame().await;
        assert_eq!(b0, 0x81, "a final text frame: {payload:?}");
        serde_json::from_slice(&payload).unwrap()
    }

    /// The close frame the server sends next: its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (b0, payload) = self.frame().await;
            if b0 == 0x88 {
                assert!(payload.len() >= 2, "a close code: {payload:?}");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// Whether the server closes the TCP stream within 10 s.
    async fn ends(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self.fill().await == 0 {
                return true;
            }
        }
        false
    }
}

#[tokio::test]
async fn fragments_are_reassembled_and_a_ping_between_them_is_answered() {
    let node = GatewayProcess::start(&[]);
    let mut hand = Hand::open(&node, "frag").await;
    // hello in two fragments, a ping between them, all in one write.
    let mut bytes = frame(0x01, br#"{"op":"hel"#);
    bytes.extend(frame(0x89, b"are you there"));
    bytes.extend(frame(0x80, br#"lo","v":1}"#));
    hand.send(&bytes).await;
    assert_eq!(hand.frame().await, (0x8A, b"are you there".to_vec()));
    assert_eq!(hand.json().await["op"], "welcome");
    // A request in three fragments, sent one at a time.
    for part in [
        frame(0x01, br#"{"op":"#),
        frame(0x00, br#""ping","#),
        frame(0x80, br#""id":7}"#),
    ] {
        hand.send(&part).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pong = hand.json().await;
    assert_eq!(
        (pong["op"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(7))
    );
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn a_close_is_answered_with_its_code_and_the_stream_ends() {
    let node = GatewayProcess::start(&[]);
    let mut hand = Hand::hello(&node, "closer").await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    hand.send(&frame(0x88, &payload)).await;
    assert_eq!(hand.frame().await, (0x88, vec![0x03, 0xE8]));
    assert!(
        hand.ends().await,
        "the server closes the stream after the close"
    );
}

#[tokio::test]
async fn frames_rfc_6455_forbids_are_answered_with_close_4500() {
    let node = GatewayProcess::start(&[]);
    let mut unmasked = vec![0x81, 15];
    unmasked.extend_from_slice(br#"{"op":"ping"}  "#);
    let mut fragmented_ping = frame(0x89, b"x");
    fragmented_ping[0] = 0x09;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", unmasked),
        ("reserved bit", frame(0xC1, br#"{"op":"ping"}"#)),
        ("unknown opcode", frame(0x83, b"x")),
        ("continuation without a message", frame(0x80, b"x")),
        ("fragmented ping", fragmented_ping),
        ("close code 1005", frame(0x88, &1005u16.to_be_bytes())),
        ("text that is not UTF-8", frame(0x81, &[0xC3, 0x28])),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let mut hand = Hand::hello(&node, &format!("bad{i}")).await;
        hand.send(&bytes).await;
        assert_eq!(hand.close_code().await, 4500, "{what}");
    }
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_from_its_header_alone() {
    let node = GatewayProcess::start(&[]);
    let mut hand = Hand::hello(&node, "huge").await;
    // The header of a 16 MiB text frame, and none of its payload.
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(16u64 << 20).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    hand.send(&head).await;
    assert_eq!(hand.close_code().await, 4504);
    assert_node_serves(&node).await;
}
