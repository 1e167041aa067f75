use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;

/// A client frame: masked, `b0` the first byte (FIN and opcode).
fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame::masked(b0, payload, [0x37, 0xFA, 0x21, 0x3D])
}

fn pair(max: usize) -> (WsSocket<DuplexStream>, DuplexStream) {
    let (a, b) = duplex(1 << 20);
    (WsSocket::new(a, &[], max), b)
}

/// Read one server frame: (first byte, payload).
async fn server_frame(peer: &mut DuplexStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    peer.read_exact(&mut h).await.unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7F {
        126 => usize::from(peer.read_u16().await.unwrap()),
        127 => peer.read_u64().await.unwrap() as usize,
        n => usize::from(n),
    };
    let mut p = vec![0u8; len];
    peer.read_exact(&mut p).await.unwrap();
    (h[0], p)
}

async fn next(ws: &mut WsSocket<DuplexStream>) -> Option<Result<Message, axum::Error>> {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
}

#[tokio::test]
async fn reads_a_frame_that_arrives_byte_by_byte_and_frees_its_buffer() {
    let (mut ws, mut peer) = pair(1 << 16);
    let f = client(0x81, br#"{"op":"ping"}"#);
    let writer = tokio::spawn(async move {
        for b in f {
            peer.write_all(&[b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        peer
    });
    let m = next(&mut ws).await.unwrap().unwrap();
    assert_eq!(m, Message::Text(Utf8Bytes::from(r#"{"op":"ping"}"#)));
    assert_eq!(
        ws.rbuf.capacity(),
        0,
        "no read buffer once the frame is out"
    );
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn reads_several_frames_of_one_write_in_order() {
    let (mut ws, mut peer) = pair(1 << 16);
    let mut bytes = client(0x81, b"one");
    bytes.extend(client(0x81, b"two"));
    bytes.extend(client(0x82, &[1, 2, 3]));
    peer.write_all(&bytes).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Text("one".into())
    );
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Text("two".into())
    );
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(&[1, 2, 3]))
    );
    assert_eq!(ws.rbuf.capacity(), 0);
}

#[tokio::test]
async fn the_upgrades_own_bytes_come_first() {
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = WsSocket::new(a, &client(0x81, b"early"), 1 << 16);
    peer.write_all(&client(0x81, b"late")).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Text("early".into())
    );
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Text("late".into())
    );
}

#[tokio::test]
async fn reassembles_fragments_and_answers_a_ping_between_them() {
    let (mut ws, mut peer) = pair(1 << 16);
    let mut bytes = client(0x01, "héllo, ".as_bytes());
    bytes.extend(client(0x89, b"are you there"));
    bytes.extend(client(0x00, b"wor"));
    bytes.extend(client(0x80, b"ld"));
    peer.write_all(&bytes).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Ping(Bytes::from_static(b"are you there"))
    );
    assert_eq!(
        server_frame(&mut peer).await,
        (0x8A, b"are you there".to_vec())
    );
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Text("héllo, world".into())
    );
}

#[tokio::test]
async fn a_close_is_answered_with_its_code_and_ends_the_stream() {
    let (mut ws, mut peer) = pair(1 << 16);
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    peer.write_all(&client(0x88, &payload)).await.unwrap();
    let m = next(&mut ws).await.unwrap().unwrap();
    assert_eq!(
        m,
        Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "bye".into()
        }))
    );
    assert_eq!(server_frame(&mut peer).await, (0x88, vec![0x03, 0xE8]));
    assert!(next(&mut ws).await.is_none());
    // Nothing may be sent after the close.
    assert!(ws.send(Message::Text("late".into())).await.is_err());
}

#[tokio::test]
async fn our_close_carries_code_and_a_bounded_reason() {
    let (mut ws, mut peer) = pair(1 << 16);
    let long = "é".repeat(100);
    ws.send(Message::Close(Some(CloseFrame {
        code: 4002,
        reason: Utf8Bytes::from(long.clone()),
    })))
    .await
    .unwrap();
    let (b0, p) = server_frame(&mut peer).await;
    assert_eq!(b0, 0x88);
    assert!(
        p.len() <= 125,
        "a control frame's payload is at most 125 bytes"
    );
    assert_eq!(&p[..2], &4002u16.to_be_bytes());
    assert!(long.starts_with(std::str::from_utf8(&p[2..]).unwrap()));
    // The client's close reply is read, not answered again.
    peer.write_all(&client(0x88, &4002u16.to_be_bytes()))
        .await
        .unwrap();
    assert!(matches!(next(&mut ws).await, Some(Ok(Message::Close(_)))));
    assert!(next(&mut ws).await.is_none());
}

async fn refused(bytes: Vec<u8>, max: usize) -> WsError {
    let (mut ws, mut peer) = pair(max);
    peer.write_all(&bytes).await.unwrap();
    let e = next(&mut ws).await.unwrap().unwrap_err();
    let kind = match ws_error(&e).expect("a websocket error") {
        WsError::Protocol(why) => WsError::Protocol(why),
        WsError::TooBig => WsError::TooBig,
        WsError::Utf8 => WsError::Utf8,
        other => panic!("unexpected {other}"),
    };
    assert!(
        next(&mut ws).await.is_none(),
        "nothing is read after an error"
    );
    kind
}

#[tokio::test]
async fn refuses_bad_frames() {
    let mut unmasked = vec![0x81, 2];
    unmasked.extend_from_slice(b"hi");
    assert!(matches!(
        refused(unmasked, 1024).await,
        WsError::Protocol(_)
    ));
    assert!(matches!(
        refused(client(0x81, &[0xC3, 0x28]), 1024).await,
        WsError::Utf8
    ));
    assert!(matches!(
        refused(client(0x81, &[b'x'; 2000]), 1024).await,
        WsError::TooBig
    ));
    // Fragments count toward the message limit together.
    let mut split = client(0x01, &[b'x'; 600]);
    split.extend(client(0x80, &[b'x'; 600]));
    assert!(matches!(refused(split, 1024).await, WsError::TooBig));
    assert!(matches!(
        refused(client(0x80, b"orphan"), 1024).await,
        WsError::Protocol(_)
    ));
    let mut nested = client(0x01, b"a");
    nested.extend(client(0x81, b"b"));
    assert!(matches!(refused(nested, 1024).await, WsError::Protocol(_)));
    assert!(matches!(
        refused(client(0x88, &1005u16.to_be_bytes()), 1024).await,
        WsError::Protocol(_)
    ));
    assert!(matches!(
        refused(client(0x88, &[3]), 1024).await,
        WsError::Protocol(_)
    ));
}

#[tokio::test]
async fn writes_shared_payloads_of_every_length_and_keeps_no_queue() {
    let (mut a, mut pa) = pair(1 << 16);
    let (mut b, mut pb) = pair(1 << 16);
    for n in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
        let text: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let shared = Utf8Bytes::from(text.clone());
        a.feed(Message::Text(shared.clone())).await.unwrap();
        b.feed(Message::Text(shared)).await.unwrap();
        let (fa, fb) = tokio::join!(
            async {
                a.flush().await.unwrap();
                server_frame(&mut pa).await
            },
            async {
                b.flush().await.unwrap();
                server_frame(&mut pb).await
            }
        );
        assert_eq!(fa, (0x81, text.clone().into_bytes()), "n={n}");
        assert_eq!(fb, (0x81, text.into_bytes()));
    }
    assert_eq!(a.out.capacity(), 0, "no write queue once written");
    assert_eq!(a.out_bytes, 0);
}

#[tokio::test]
async fn many_frames_go_out_in_order_through_a_small_pipe() {
    // A pipe smaller than one frame: every vectored write is partial.
    let (io, mut peer) = duplex(7);
    let mut ws = WsSocket::new(io, &[], 1 << 16);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..300 {
            got.push(server_frame(&mut peer).await.1);
        }
        got
    });
    for i in 0..300 {
        ws.feed(Message::Text(Utf8Bytes::from(format!("frame {i}"))))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    let got = reader.await.unwrap();
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, format!("frame {i}").as_bytes());
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_stops_the_writer() {
    let (io, _peer) = duplex(1024);
    let mut ws = WsSocket::new(io, &[], 1 << 16);
    let big = Utf8Bytes::from("x".repeat(8 * 1024));
    let mut fed = 0;
    let stuck = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            ws.feed(Message::Text(big.clone())).await.unwrap();
            fed += 1;
        }
    })
    .await;
    assert!(
        stuck.is_err(),
        "feeding must wait once the peer stops reading"
    );
    assert!(
        fed * 8 * 1024 <= WRITE_HIGH + 8 * 1024 + 1024,
        "at most the high-water mark is queued: {fed} frames"
    );
}

#[tokio::test]
async fn a_ping_inside_a_message_near_the_limit_is_not_counted_against_it() {
    let (mut ws, mut peer) = pair(1024);
    let mut bytes = client(0x01, &[b'a'; 1000]);
    bytes.extend(client(0x89, &[b'p'; 100]));
    bytes.extend(client(0x80, &[b'b'; 24]));
    peer.write_all(&bytes).await.unwrap();
    assert!(matches!(next(&mut ws).await, Some(Ok(Message::Ping(_)))));
    let Some(Ok(Message::Text(t))) = next(&mut ws).await else {
        panic!("the message, reassembled");
    };
    assert_eq!(t.len(), 1024);
}

#[tokio::test]
async fn many_small_frames_of_one_read_then_a_partial_one() {
    let (mut ws, mut peer) = pair(1 << 16);
    let mut bytes = Vec::new();
    for i in 0..300 {
        bytes.extend(client(0x81, format!("m{i}").as_bytes()));
    }
    let big = client(0x81, &[b'z'; 5000]);
    bytes.extend_from_slice(&big[..100]);
    peer.write_all(&bytes).await.unwrap();
    for i in 0..300 {
        let m = next(&mut ws).await.unwrap().unwrap();
        assert_eq!(m, Message::Text(Utf8Bytes::from(format!("m{i}"))));
    }
    peer.write_all(&big[100..]).await.unwrap();
    let Some(Ok(Message::Text(t))) = next(&mut ws).await else {
        panic!("the large frame, completed");
    };
    assert_eq!(t.len(), 5000);
    assert_eq!(ws.rbuf.capacity(), 0);
}
