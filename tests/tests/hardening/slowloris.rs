//! 1. Slowloris: pending connections, header and body timeouts, header size

use chorus_protocol::client::{Event, new_cid};
use chorus_tests::{API_KEY, GatewayProcess, text};
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::support::*;

#[tokio::test]
async fn stalled_heads_beyond_the_file_limit_do_not_lock_out_a_real_client() {
    // 256 descriptors: the pending bound is clamped to 64. 300 stalled heads
    // are more than the process could hold open at all.
    let node = GatewayProcess::start_with_file_limit(256, &[]);
    let mut stalls = Vec::new();
    for _ in 0..300 {
        stalls.push(stalled(&node, None).await);
    }
    let took = assert_node_serves_within(&node, Duration::from_secs(10)).await;
    eprintln!("client served in {took:?} with 300 stalled heads open");
    // Promptly: evicted stalls give their descriptors back at once (they
    // were never written to, so they do not linger), so accepts do not fail
    // with EMFILE until lingering closes time out (2 s).
    assert!(
        took < ms(1500),
        "a normal client took {took:?} with 300 stalled heads open"
    );
    // Most of the stalled ones were closed to make room (oldest first).
    let mut ended = 0;
    for s in stalls.iter_mut().take(200) {
        if ended_within(s, ms(50)).await {
            ended += 1;
        }
    }
    assert!(
        ended >= 100,
        "only {ended} of the 200 oldest stalled heads were closed"
    );
    let m = metrics_text(&node, None).await;
    eprintln!(
        "evicted {}, accept errors {}",
        metric(&m, "chorus_pending_evicted_total", &[]),
        metric(&m, "chorus_accept_errors_total", &[]) + 0.0
    );
    assert!(
        metric(&m, "chorus_pending_evicted_total", &[]) >= 100.0,
        "{m}"
    );
    // And again, with the stalls still open.
    assert_node_serves_within(&node, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn silent_upgraded_websockets_beyond_the_file_limit_do_not_lock_out_a_real_client() {
    // As above, with connections that finish the upgrade (101) and then never
    // send `hello`: pending too, and written to (the 101, the close frame).
    let node = GatewayProcess::start_with_file_limit(256, &[]);
    let mut silent = Vec::new();
    let req = upgrade_request(&node.addr, b"");
    for _ in 0..300 {
        let mut s = tcp_from(&node, None).await;
        let _ = s.write_all(&req).await;
        silent.push(s);
    }
    let took = assert_node_serves_within(&node, Duration::from_secs(10)).await;
    eprintln!("client served in {took:?} with 300 silent upgraded websockets open");
    // Evicted ones close at once: no closing handshake wait (2 s) and no
    // lingering (2 s) while the descriptor is what is short. The bound leaves
    // room for a loaded machine (300 upgrades in a debug build).
    assert!(
        took < ms(2500),
        "a normal client took {took:?} with 300 silent websockets open"
    );
    let m = metrics_text(&node, None).await;
    eprintln!(
        "evicted {}, accept errors {}",
        metric(&m, "chorus_pending_evicted_total", &[]),
        metric(&m, "chorus_accept_errors_total", &[]) + 0.0
    );
    assert!(
        metric(&m, "chorus_pending_evicted_total", &[]) >= 100.0,
        "{m}"
    );
}

#[tokio::test]
async fn at_the_pending_bound_the_oldest_pending_connection_is_closed() {
    if GatewayProcess::single_node_only(
        "the pending bound is per node; a balancer spreads connections over nodes",
    ) {
        return;
    }
    // 127.0.0.1 is exempt from the per-IP limits but not from the overall bound.
    let node = GatewayProcess::start(&["--max-pending-connections", "10"]);
    let mut stalls = Vec::new();
    for _ in 0..10 {
        stalls.push(stalled(&node, None).await);
        // Accept order is connection order.
        tokio::time::sleep(ms(20)).await;
    }
    for s in &mut stalls {
        assert!(!ended_within(s, ms(50)).await, "closed below the bound");
    }
    let mut newest = stalled(&node, None).await;
    assert!(
        ended_within(&mut stalls[0], Duration::from_secs(2)).await,
        "the oldest pending connection was not closed at the bound"
    );
    for (i, s) in stalls.iter_mut().enumerate().skip(1) {
        assert!(
            !ended_within(s, ms(20)).await,
            "pending connection {i} was closed, not the oldest"
        );
    }
    assert!(
        !ended_within(&mut newest, ms(50)).await,
        "the newest was closed"
    );
    // A real client gets through (its own connection displaces the next oldest).
    assert_node_serves(&node).await;
    assert!(ended_within(&mut stalls[1], Duration::from_secs(2)).await);
    let m = metrics_text(&node, None).await;
    assert!(
        metric(&m, "chorus_pending_evicted_total", &[]) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_pending_bound_is_a_quarter_of_the_file_limit() {
    // 256 descriptors: at most 64 pending (the default 4096 is clamped).
    let node = GatewayProcess::start_with_file_limit(256, &[]);
    let mut stalls = Vec::new();
    for _ in 0..64 {
        stalls.push(stalled(&node, None).await);
        tokio::time::sleep(ms(5)).await;
    }
    let mut held = 0;
    for s in &mut stalls {
        if !ended_within(s, ms(20)).await {
            held += 1;
        }
    }
    assert_eq!(held, 64, "below the bound every stall is held");
    let _65th = stalled(&node, None).await;
    assert!(
        ended_within(&mut stalls[0], Duration::from_secs(2)).await,
        "the 65th pending connection did not displace the oldest"
    );
    assert!(!ended_within(&mut stalls[1], ms(50)).await);
}

#[tokio::test]
async fn an_evicted_websocket_before_hello_gets_close_4005() {
    if GatewayProcess::single_node_only("the pending bound is per node") {
        return;
    }
    let node = GatewayProcess::start(&["--max-pending-connections", "3"]);
    let mut first = RawWs::open(&node.url_for("alice")).await;
    tokio::time::sleep(ms(50)).await;
    let _second = RawWs::open(&node.url_for("bob")).await;
    let _third = stalled(&node, None).await;
    tokio::time::sleep(ms(50)).await;
    let t0 = Instant::now();
    let _fourth = stalled(&node, None).await;
    let (code, reason) = first.close_frame().await;
    assert_eq!(code, 4005, "{reason}");
    assert!(reason.starts_with("handshake_timeout"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Then the stream ends.
    let end = tokio::time::timeout(ms(1000), first.ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "the evicted stream did not end: {end:?}"
    );
}

#[tokio::test]
async fn a_stalled_request_head_is_closed_after_the_header_timeout() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&["--http-header-timeout-ms", "500"]);
    let t0 = Instant::now();
    let mut s = stalled(&node, None).await;
    let f = fate(&mut s, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_ne!(f, Fate::Open, "a stalled head was still open after 5 s");
    assert!(took >= ms(400), "closed before the timeout: {took:?} {f:?}");
    assert!(took <= ms(1500), "closed only after {took:?} {f:?}");
    // A head that trickles in byte by byte is bounded by the same deadline.
    let t0 = Instant::now();
    let mut s = tcp_from(&node, None).await;
    let mut closed = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(ms(50)).await;
        if t0.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        closed = ended_within(&mut s, Duration::from_secs(2)).await;
    }
    assert!(
        closed,
        "a trickling head was still open after {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() <= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&["--http-header-timeout-ms", "500"]);
    let mut s = tcp_from(&node, None).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut s, T).await.expect("a response");
    assert_eq!((status, body.as_str()), (200, "ok"));
    // Keep-alive: a second request on the same connection is served...
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut s, T).await.expect("a second response");
    assert_eq!(status, 200);
    // ...then nothing: closed after about the header timeout.
    let t0 = Instant::now();
    let f = fate(&mut s, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_ne!(
        f,
        Fate::Open,
        "an idle keep-alive connection was still open after 5 s"
    );
    assert!(took <= ms(1500), "closed only after {took:?}");
}

#[tokio::test]
async fn an_oversized_header_line_gets_431_or_a_close() {
    if GatewayProcess::single_node_only("one node's HTTP parser, not the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&[]);
    let mut s = tcp_from(&node, None).await;
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 380_000));
    req.extend_from_slice(b"\r\n\r\n");
    let t0 = Instant::now();
    // The server may stop reading (and close) before all of it is written.
    let write = tokio::time::timeout(T, s.write_all(&req)).await;
    assert!(
        write.is_ok(),
        "the server held the connection without reading"
    );
    let f = fate(&mut s, Duration::from_secs(5)).await;
    eprintln!(
        "380 kB header: write {write:?}, then {f:?} after {:?}",
        t0.elapsed()
    );
    match &f {
        Fate::Closed(bytes) => assert!(
            bytes.is_empty() || bytes.starts_with("HTTP/1.1 431"),
            "{bytes:?}"
        ),
        Fate::Reset(_) => {}
        Fate::Open => panic!("a 380 kB header was held open"),
    }
    // Just under the default 16 KiB bound is fine.
    let mut ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    ok.extend(std::iter::repeat_n(b'a', 12_000));
    ok.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(exchange(&node, &ok).await.map(|r| r.0), Some(200));
    assert_node_serves(&node).await;
    // The flag moves the bound (8192 is its floor).
    let node = GatewayProcess::start(&["--max-header-bytes", "8192"]);
    let r = exchange(&node, &ok).await;
    assert!(matches!(r, None | Some((431, _))), "{r:?}");
    let mut small = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    small.extend(std::iter::repeat_n(b'a', 6_000));
    small.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(exchange(&node, &small).await.map(|r| r.0), Some(200));
}

#[tokio::test]
async fn a_request_body_that_never_arrives_is_answered_within_the_body_timeout() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&["--http-body-timeout-ms", "1000"]);
    for declared in ["1000000000000", "100"] {
        let mut s = tcp_from(&node, None).await;
        let head = format!(
            "POST /v1/rooms/r/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{\"sender\":"
        );
        assert_eq!(head.len() - head.find("\r\n\r\n").unwrap() - 4, 10);
        let t0 = Instant::now();
        s.write_all(head.as_bytes()).await.unwrap();
        let f = fate(&mut s, Duration::from_secs(5)).await;
        let took = t0.elapsed();
        eprintln!("Content-Length {declared}, 10 bytes sent: {f:?} after {took:?}");
        match &f {
            // A timeout is the client's slowness, not a malformed request:
            // 408 (or 413 for the declared size), not 400.
            Fate::Closed(bytes) => {
                assert!(
                    bytes.is_empty()
                        || bytes.starts_with("HTTP/1.1 413")
                        || bytes.starts_with("HTTP/1.1 408"),
                    "{bytes:?}"
                );
                if bytes.starts_with("HTTP/1.1 408") {
                    assert!(bytes.contains(r#""code":"request_timeout""#), "{bytes:?}");
                }
            }
            Fate::Reset(_) => {}
            Fate::Open => panic!("Content-Length {declared} with 10 bytes was held 5 s"),
        }
        assert!(took <= ms(2500), "answered only after {took:?}");
    }
    // The presence query reads a body too.
    let mut s = tcp_from(&node, None).await;
    let head = format!(
        "POST /v1/presence/query HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"users\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let f = fate(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&f, Fate::Closed(b) if b.starts_with("HTTP/1.1 408")),
        "{f:?} after {:?}",
        t0.elapsed()
    );
    assert!(stored(&node, "r").await.is_empty());
}

#[tokio::test]
async fn the_sixth_stalled_connection_from_one_address_is_closed_and_others_are_served() {
    if GatewayProcess::single_node_only(
        "per-IP bounds see the source address; a TCP balancer replaces it",
    ) {
        return;
    }
    let node = GatewayProcess::start(&["--per-ip-exempt", "none", "--max-pending-per-ip", "5"]);
    let mut five = Vec::new();
    for _ in 0..5 {
        five.push(stalled(&node, None).await);
    }
    // The five are held (pending, within the header timeout).
    for s in &mut five {
        assert!(
            !ended_within(s, ms(100)).await,
            "one of the first five was closed"
        );
    }
    let t0 = Instant::now();
    let mut sixth = stalled(&node, None).await;
    assert!(
        ended_within(&mut sixth, Duration::from_secs(1)).await,
        "the sixth stalled connection from 127.0.0.1 was not closed"
    );
    eprintln!("sixth closed after {:?}", t0.elapsed());
    // Another address is not affected: HTTP and a WebSocket session.
    let r = http_from(OTHER_IP)
        .get(format!("{}/healthz", node.http_url()))
        .send()
        .await
        .expect("GET /healthz from 127.0.0.2");
    assert_eq!(r.status(), 200);
    let mut other = ws_from(&node, OTHER_IP, "other").await;
    raw_join_send(&mut other, "r").await;
    let m = metrics_text(&node, Some(OTHER_IP)).await;
    assert!(
        metric(
            &m,
            "chorus_connections_refused_total",
            &[r#"reason="pending_per_ip""#]
        ) >= 1.0,
        "{m}"
    );
    // Once the stalled ones go, 127.0.0.1 is served again.
    drop(five);
    drop(sixth);
    let deadline = Instant::now() + T;
    loop {
        let mut s = tcp_from(&node, None).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_response(&mut s, T).await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.1 not served again after its stalls closed"
        );
        tokio::time::sleep(ms(100)).await;
    }
}

#[tokio::test]
async fn authenticated_and_ended_connections_stop_counting_as_pending() {
    if GatewayProcess::single_node_only(
        "per-IP bounds see the source address; a TCP balancer replaces it",
    ) {
        return;
    }
    let node = GatewayProcess::start(&[
        "--per-ip-exempt",
        "none",
        "--max-pending-per-ip",
        "3",
        "--accepts-per-ip-per-sec",
        "0",
    ]);
    // Connections that ended every way, one phase at a time (a connection
    // stops being pending a moment after the client saw its end): refused at
    // hello, HTTP answered, WebSocket sessions closed, stalls dropped.
    for _ in 0..3 {
        let mut raw = RawWs::open(&format!("{}?access_token=bad", node.ws_url())).await;
        raw.send(json!({"op": "hello"})).await;
        assert_eq!(raw.close_frame().await.0, 4501);
    }
    wait_no_pending(&node, "after hellos refused with 4501").await;
    for _ in 0..5 {
        let r = exchange(
            &node,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.map(|r| r.0), Some(404));
    }
    wait_no_pending(&node, "after HTTP requests").await;
    for _ in 0..3 {
        let c = node.connect("alice").await;
        c.close().await.unwrap();
    }
    wait_no_pending(&node, "after closed sessions").await;
    for _ in 0..3 {
        drop(stalled(&node, None).await);
    }
    wait_no_pending(&node, "after dropped stalls").await;
    // Authenticated sessions are not pending: five of them stay open...
    let mut live = Vec::new();
    for i in 0..5 {
        let c = node.connect(&format!("live{i}")).await;
        c.join("r", None).await.unwrap();
        live.push(c);
    }
    wait_no_pending(&node, "with five live sessions").await;
    // ...and three stalls are admitted (the bound is 3), the fourth not.
    let mut three = Vec::new();
    for _ in 0..3 {
        three.push(stalled(&node, None).await);
    }
    for s in &mut three {
        assert!(
            !ended_within(s, ms(100)).await,
            "a stall within the bound was closed"
        );
    }
    let mut fourth = stalled(&node, None).await;
    assert!(
        ended_within(&mut fourth, Duration::from_secs(1)).await,
        "the fourth stall was held"
    );
    for c in &live {
        c.ping().await.expect("live session");
    }
    drop(three);
    drop(fourth);
    wait_no_pending(&node, "after the last stalls").await;
}

/// Wait until `chorus_pending_connections` is 0 (read from 127.0.0.2, whose
/// own request is no longer pending when the gauge is rendered).
async fn wait_no_pending(node: &GatewayProcess, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics_text(node, Some(OTHER_IP)).await;
        let n = metric(&m, "chorus_pending_connections", &[]);
        if n == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: chorus_pending_connections stays at {n}"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test]
async fn the_header_timeout_spares_websocket_sessions_and_bodies_in_progress() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&[
        "--http-header-timeout-ms",
        "500",
        "--http-body-timeout-ms",
        "10000",
    ]);
    let mut c = node.connect("alice").await;
    c.join("r", None).await.unwrap();
    // Idle for three header timeouts: the session is not an idle HTTP connection.
    tokio::time::sleep(ms(1500)).await;
    c.ping().await.expect("ping after 1.5 s idle");
    let ack = c
        .send("r", &new_cid(), text("still here"), None)
        .await
        .unwrap();
    assert!(
        c.wait_for(T, |e| matches!(e, Event::Msg(m) if m.seq == ack.seq))
            .await
            .is_some()
    );
    // A body that takes 1.5 s to arrive (headers were on time) is served.
    let body = br#"{"sender":"svc","body":{"t":"slow"}}"#;
    let mut s = tcp_from(&node, None).await;
    let head = format!(
        "POST /v1/rooms/r/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(body.len() / 3 + 1) {
        tokio::time::sleep(ms(500)).await;
        s.write_all(chunk)
            .await
            .expect("the server kept reading the body");
    }
    let (status, text) = read_response(&mut s, T).await.expect("a response");
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn connections_beyond_the_per_ip_accept_burst_are_closed_and_counted() {
    if GatewayProcess::single_node_only(
        "per-IP bounds see the source address; a TCP balancer replaces it",
    ) {
        return;
    }
    let node = GatewayProcess::start(&[
        "--per-ip-exempt",
        "none",
        "--accepts-per-ip-per-sec",
        "5",
        "--accept-burst-per-ip",
        "5",
    ]);
    // Wait for the burst to be whole again (the harness's start-up probe).
    tokio::time::sleep(ms(1200)).await;
    let t0 = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = tcp_from(&node, None).await;
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        conns.push(s);
    }
    let opened_in = t0.elapsed();
    let mut served = 0;
    let mut refused = 0;
    for s in &mut conns {
        match fate(s, Duration::from_secs(5)).await {
            Fate::Closed(b) if b.starts_with("HTTP/1.1 200") => served += 1,
            Fate::Closed(b) if b.is_empty() => refused += 1,
            Fate::Reset(_) => refused += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    eprintln!("20 connections in {opened_in:?}: {served} served, {refused} refused");
    // The burst, plus what the rate refilled while the 20 were opened.
    let refill = (opened_in.as_secs_f64() * 5.0).ceil() as usize;
    assert!(served >= 5, "{served} served");
    assert!(served <= 5 + refill, "{served} served (refill {refill})");
    assert!(refused >= 10, "{refused} refused");
    let m = metrics_text(&node, Some(OTHER_IP)).await;
    let counted = metric(
        &m,
        "chorus_connections_refused_total",
        &[r#"reason="accept_rate""#],
    );
    assert!(
        counted >= refused as f64,
        "counted {counted}, refused {refused}: {m}"
    );
    // Another address has its own bucket.
    let mut other = ws_from(&node, OTHER_IP, "other").await;
    raw_join_send(&mut other, "r").await;
}
