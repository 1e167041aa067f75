//! Benchmark peer: a socketioxide server with the same events and semantics as
//! `../socketio/server.js`.
//!
//! ```text
//! socketioxide-peer --port P [--host 127.0.0.1] [--redis redis://127.0.0.1:6379]
//! ```
//!
//! Prints exactly one line `listening on HOST:PORT` on stdout once ready
//! (`--port 0` picks a free port). With `--redis` the socketioxide-redis adapter
//! (fred driver, RESP3, sharded pub/sub) carries broadcasts between instances;
//! without it the local in-memory adapter is used.
//!
//! Events (namespace `/`):
//! - `join`  (room: string, ack)          -> socket joins room, ack "ok"
//! - `leave` (room: string, ack)          -> socket leaves room, ack "ok"
//! - `send`  ({room, data}, optional ack) -> io.to(room).emit("msg", data), ack "ok"
//!   (the sender receives its own `msg` too, since it is in the room)

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use socketioxide::{
    SocketIo, TransportType,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef, TryData},
};
use socketioxide_redis::{FredAdapter, RedisAdapterCtr};

struct Args {
    host: String,
    port: u16,
    redis: Option<String>,
}

fn usage() -> ! {
    eprintln!("usage: socketioxide-peer --port P [--host H] [--redis redis://HOST:PORT]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 0,
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| usage())
        };
        match key.as_str() {
            "--port" => args.port = val().parse().unwrap_or_else(|_| usage()),
            "--host" => args.host = val(),
            "--redis" => {
                let v = val();
                args.redis = (!v.is_empty()).then_some(v);
            }
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument: {a}");
                usage()
            }
        }
    }
    args
}

#[derive(Deserialize)]
struct SendPayload {
    room: String,
    #[serde(default)]
    data: Value,
}

/// Connection handler, generic over the adapter so the same code serves the
/// local and the Redis adapter.
async fn on_connect<A: Adapter>(socket: SocketRef<A>, TryData(auth): TryData<Value>) {
    // Read the token (auth.token or ?token=) like a real app would; no verification.
    let token = auth
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| {
            socket.req_parts().uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token=").map(str::to_owned))
            })
        });
    std::hint::black_box(token);

    socket.on("join", on_join::<A>);
    socket.on("leave", on_leave::<A>);
    socket.on("send", on_send::<A>);
}

async fn on_join<A: Adapter>(socket: SocketRef<A>, Data(room): Data<String>, ack: AckSender<A>) {
    socket.join(room);
    let _ = ack.send("ok");
}

async fn on_leave<A: Adapter>(socket: SocketRef<A>, Data(room): Data<String>, ack: AckSender<A>) {
    socket.leave(room);
    let _ = ack.send("ok");
}

async fn on_send<A: Adapter>(io: SocketIo<A>, TryData(p): TryData<SendPayload>, ack: AckSender<A>) {
    let Ok(p) = p else {
        let _ = ack.send("error: room must be a string");
        return;
    };
    // With the Redis adapter this awaits the SPUBLISH reply, then delivers locally.
    match io.to(p.room).emit("msg", &p.data).await {
        Ok(()) => {
            let _ = ack.send("ok");
        }
        Err(e) => {
            let _ = ack.send(&format!("error: {e}"));
        }
    }
}

fn builder() -> socketioxide::SocketIoBuilder {
    SocketIo::builder()
        .req_path("/socket.io")
        .transports([TransportType::Websocket])
        .ping_interval(Duration::from_millis(25_000))
        .ping_timeout(Duration::from_millis(20_000))
        // Same limit as Socket.IO's maxHttpBufferSize = 1e6.
        .max_payload(1_000_000)
        .ws_max_message_size(1_000_000)
        // Per-connection outgoing packet queue (default 128). Socket.IO buffers
        // without limit; a larger queue avoids dropping broadcasts in bursts.
        .max_buffer_size(1024)
}

async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    let addr = listener.local_addr().expect("local_addr");
    println!("listening on {addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .expect("server error");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;

    match args.redis {
        Some(url) => {
            let mut config = fred::prelude::Config::from_url(&url)?;
            // fred ignores ?protocol=resp3; the socketioxide-redis drivers need RESP3.
            config.version = fred::types::RespVersion::RESP3;
            let client = fred::prelude::Builder::from_config(config).build_subscriber_client()?;
            let ctr = RedisAdapterCtr::new_with_fred(client).await?;
            let (layer, io) = builder().with_adapter::<FredAdapter<_>>(ctr).build_layer();
            io.ns("/", on_connect::<FredAdapter<_>>).await?;
            serve(listener, axum::Router::new().layer(layer)).await;
        }
        None => {
            let (layer, io) = builder().build_layer();
            io.ns("/", on_connect);
            serve(listener, axum::Router::new().layer(layer)).await;
        }
    }
    Ok(())
}
