//! A scripted in-process server: exercises the socket task end to end.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use crate::codes::ErrorCode;
use crate::frame::{ClientFrame, Json, Limits, Message, SUBPROTOCOL, ServerFrame};

use super::{Client, ClientConfig, ClientError, Event};

type ServerWs = WebSocketStream<TcpStream>;

fn welcome(resumed: bool) -> String {
    ServerFrame::Welcome {
        v: 1,
        session: "s1".into(),
        user: "alice".into(),
        tenant: None,
        device: "default".into(),
        node: "n1".into(),
        resume_token: "rt".into(),
        resume_ttl_ms: 300_000,
        heartbeat_ms: 25_000,
        idle_timeout_ms: 60_000,
        limits: Limits {
            max_frame_bytes: 65536,
            max_message_bytes: 16384,
            max_rooms: 100,
            sends_per_sec: 50,
            send_burst: 100,
            max_history_page: 100,
            max_replay: 10000,
        },
        rooms: vec![],
        resumed,
    }
    .encode()
}

fn msg(room: &str, seq: u64) -> String {
    ServerFrame::Msg(Message {
        room: room.into(),
        seq,
        id: format!("m{seq}"),
        sender: "bob".into(),
        cid: None,
        body: Json::from_text("1").unwrap(),
        meta: None,
        ts: 0,
    })
    .encode()
}

async fn recv(ws: &mut ServerWs) -> ClientFrame {
    loop {
        match ws.next().await.expect("client frame").expect("ws ok") {
            WsMessage::Text(t) => {
                return ClientFrame::decode(t.as_str()).expect("valid frame");
            }
            _ => continue,
        }
    }
}

async fn put(ws: &mut ServerWs, text: String) {
    ws.send(WsMessage::Text(text.into())).await.unwrap();
}

// The callback's error type is tungstenite's (large) HTTP response.
#[allow(clippy::result_large_err)]
async fn accept(listener: &TcpListener) -> ServerWs {
    let (tcp, _) = listener.accept().await.unwrap();
    tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
        assert_eq!(req.uri().query(), Some("user=alice"));
        let proto = req.headers().get("Sec-WebSocket-Protocol").cloned();
        assert_eq!(
            proto.as_ref().and_then(|v| v.to_str().ok()),
            Some(SUBPROTOCOL)
        );
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", proto.unwrap());
        Ok(resp)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn session_against_scripted_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        match recv(&mut ws).await {
            ClientFrame::Hello {
                v, device, resume, ..
            } => {
                assert_eq!(v, 1);
                assert_eq!(device.as_deref(), Some("phone"));
                assert!(resume.is_none());
            }
            other => panic!("{other:?}"),
        }
        put(&mut ws, welcome(false)).await;
        // join since=1: replay 2, a duplicate 2, then 4 (gap), then joined tip=4.
        let ClientFrame::Join { id, room, since } = recv(&mut ws).await else {
            panic!()
        };
        assert_eq!((room.as_str(), since), ("r", Some(1)));
        put(&mut ws, msg("r", 2)).await;
        put(&mut ws, msg("r", 2)).await;
        put(&mut ws, msg("r", 4)).await;
        let joined = ServerFrame::Joined {
            id,
            room: "r".into(),
            tip: 4,
            last_read: 0,
            recovered: true,
            replayed: 3,
            presence: vec![],
            online: 0,
        };
        put(&mut ws, joined.encode()).await;
        // send: rate limited once, then acked; both attempts carry the same cid.
        let ClientFrame::Send { id, cid, .. } = recv(&mut ws).await else {
            panic!()
        };
        let mut err = ServerFrame::error(ErrorCode::RateLimited, "slow down");
        if let ServerFrame::Error {
            id: eid,
            retry_after_ms,
            ..
        } = &mut err
        {
            *eid = id;
            *retry_after_ms = Some(5);
        }
        put(&mut ws, err.encode()).await;
        let ClientFrame::Send {
            id,
            cid: cid2,
            body,
            ..
        } = recv(&mut ws).await
        else {
            panic!()
        };
        assert_eq!(cid, cid2);
        assert_eq!(body.get(), r#"{"t":"x"}"#);
        let ack = ServerFrame::Ack {
            id,
            room: "r".into(),
            cid,
            seq: 5,
            msg_id: "m5".into(),
            ts: 1,
            duplicate: false,
        };
        put(&mut ws, ack.encode()).await;
        put(&mut ws, msg("r", 5)).await;
        // Server heartbeat is answered; client ping is answered.
        put(&mut ws, r#"{"op":"ping"}"#.into()).await;
        let mut got_pong = false;
        for _ in 0..2 {
            match recv(&mut ws).await {
                ClientFrame::Pong {} => got_pong = true,
                ClientFrame::Ping { id } => put(&mut ws, ServerFrame::Pong { id }.encode()).await,
                other => panic!("{other:?}"),
            }
        }
        assert!(got_pong);
        // An error without id becomes an event; a history request stays
        // unanswered and must fail when the connection closes.
        put(
            &mut ws,
            ServerFrame::error(ErrorCode::NotJoined, "no").encode(),
        )
        .await;
        assert!(matches!(recv(&mut ws).await, ClientFrame::History { .. }));
        put(
            &mut ws,
            r#"{"op":"reconnect","reason":"drain","retry_after_ms":7}"#.into(),
        )
        .await;
        let close = CloseFrame {
            code: WsCloseCode::from(4002),
            reason: "slow_consumer".into(),
        };
        ws.close(Some(close)).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}

        // Second connection: resume, then the client aborts.
        let mut ws = accept(&listener).await;
        let ClientFrame::Hello {
            resume: Some(r), ..
        } = recv(&mut ws).await
        else {
            panic!()
        };
        assert_eq!(r.token, "rt");
        assert_eq!(r.rooms.get("r"), Some(&5));
        put(&mut ws, welcome(true)).await;
        put(&mut ws, msg("r", 5)).await; // duplicate of what the client saw
        put(&mut ws, msg("r", 6)).await;
        let joined = ServerFrame::Joined {
            id: None,
            room: "r".into(),
            tip: 6,
            last_read: 0,
            recovered: true,
            replayed: 1,
            presence: vec![],
            online: 0,
        };
        put(&mut ws, joined.encode()).await;
        // The abort ends the stream without a close frame.
        let mut saw_close_frame = false;
        while let Some(Ok(m)) = ws.next().await {
            saw_close_frame |= matches!(m, WsMessage::Close(_));
        }
        assert!(!saw_close_frame);
    });

    let cfg = ClientConfig::dev(&base, "alice").with_device("phone");
    let mut c = Client::connect(cfg.clone()).await.unwrap();
    assert_eq!(c.welcome().session, "s1");
    assert!(!c.welcome().resumed);
    let j = c.join("r", Some(1)).await.unwrap();
    assert_eq!((j.tip, j.replayed), (4, 3));
    let body = Json::from_text(r#"{"t":"x"}"#).unwrap();
    let ack = c.send_with_retry("r", "cid-1", body).await.unwrap();
    assert_eq!(ack.seq, 5);
    assert!(c.ping().await.unwrap() < Duration::from_secs(5));
    let h = c.handle();
    let hist = tokio::spawn(async move { h.history("r", None, Some(0), None).await });

    let mut seen = Vec::new();
    let mut gaps = Vec::new();
    let mut other = Vec::new();
    while let Some(ev) = c.next_event_timeout(Duration::from_secs(5)).await {
        match ev {
            Event::Msg(m) => seen.push(m.seq),
            Event::Gap { expected, got, .. } => gaps.push((expected, got)),
            Event::Closed { code, reason } => {
                assert_eq!(code, Some(4002));
                assert_eq!(reason, "slow_consumer");
                break;
            }
            ev => other.push(ev),
        }
    }
    assert_eq!(seen, vec![2, 4, 5]);
    assert_eq!(gaps, vec![(3, 4)]);
    assert_eq!(c.duplicates_dropped(), 1);
    assert_eq!(c.gaps(), 1);
    assert!(
        matches!(
            other[0],
            Event::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        ),
        "{other:?}"
    );
    assert!(
        matches!(
            other[1],
            Event::Reconnect {
                retry_after_ms: 7,
                ..
            }
        ),
        "{other:?}"
    );
    assert_eq!(c.cursors().get("r"), Some(&5));
    let err = hist.await.unwrap().unwrap_err();
    assert_eq!(err.close_code(), Some(4002));
    assert_eq!(
        c.send_raw("x".into()).await.unwrap_err().close_code(),
        Some(4002)
    );
    assert!(c.next_event().await.is_none());

    let resume = c.resume_state();
    let mut c = Client::connect_resume(cfg, resume).await.unwrap();
    assert!(c.welcome().resumed);
    match c.next_event_timeout(Duration::from_secs(5)).await {
        Some(Event::Msg(m)) => assert_eq!(m.seq, 6),
        other => panic!("{other:?}"),
    }
    match c.next_event_timeout(Duration::from_secs(5)).await {
        Some(Event::Joined(j)) => assert_eq!(j.tip, 6),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.duplicates_dropped(), 1);
    assert_eq!(c.cursors().get("r"), Some(&6));
    let h = c.handle();
    c.abort();
    server.await.unwrap();
    // Requests on a handle of an aborted client fail at once.
    let e = tokio::time::timeout(Duration::from_secs(5), h.ping())
        .await
        .unwrap();
    assert!(matches!(e, Err(ClientError::Closed { .. })), "{e:?}");
}

#[tokio::test]
async fn close_and_drop_send_normal_close() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let mut ws = accept(&listener).await;
            recv(&mut ws).await;
            put(&mut ws, welcome(false)).await;
            let mut code = None;
            while let Some(Ok(m)) = ws.next().await {
                if let WsMessage::Close(Some(cf)) = m {
                    code = Some(u16::from(cf.code));
                }
            }
            assert_eq!(code, Some(1000));
        }
    });
    let c = Client::connect(ClientConfig::dev(&base, "alice"))
        .await
        .unwrap();
    c.close().await.unwrap();
    let c = Client::connect(ClientConfig::dev(&base, "alice"))
        .await
        .unwrap();
    let h = c.handle();
    drop(c);
    server.await.unwrap();
    // Fails (without hanging) whether or not the task has ended yet.
    assert!(matches!(h.ping().await, Err(ClientError::Closed { .. })));
    assert!(h.is_closed());
    assert_eq!(h.close_info().unwrap().0, Some(1000));
}

#[tokio::test]
async fn handshake_close_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        recv(&mut ws).await;
        let close = CloseFrame {
            code: WsCloseCode::from(4501),
            reason: "unauthorized".into(),
        };
        ws.close(Some(close)).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    let err = Client::connect(ClientConfig::dev(&base, "alice"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::Closed {
            code: Some(4501),
            reason: "unauthorized".into()
        }
    );
    server.await.unwrap();
}
