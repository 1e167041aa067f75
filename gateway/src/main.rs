//! The `chorus` binary: configuration, logging, serving, and the drain on
//! SIGTERM/SIGINT.

use std::process::ExitCode;

use chorus_gateway::shutdown::Shutdown;
use chorus_gateway::{Config, Node, http, listener};
use tracing::{error, info, warn};

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_tracing(&cfg);
    if let Err(errs) = cfg.validate() {
        for e in errs {
            error!("configuration: {e}");
        }
        return ExitCode::from(2);
    }
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("fatal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(cfg: &Config) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Secrets travel in frames (`hello.token`, `welcome.resume_token`) and the
    // WebSocket library logs whole frames at trace level: when CHORUS_LOG
    // asks for trace anywhere, that library is capped at debug. Nothing of
    // ours logs a token.
    if filter.max_level_hint() == Some(tracing::level_filters::LevelFilter::TRACE) {
        for quiet in ["tungstenite=debug", "tokio_tungstenite=debug"] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    chorus_gateway::metrics::install();
    chorus_gateway::metrics::install_panic_hook();
    if cfg.dev_auth() && cfg.auth.has_jwt_key() {
        warn!(
            "DEV MODE AND JWT TOGETHER: tokens are verified, but ?user=NAME is ALSO accepted \
             without one (--dev-insecure-auth). Only for tests on this machine; the HTTP API \
             still requires --api-key."
        );
    } else if cfg.dev_auth() {
        warn!(
            "DEV MODE: INSECURE AUTHENTICATION. Anyone can connect as any user with ?user=NAME. \
             Set --jwt-secret or --jwt-public-key for real use."
        );
    }
    listener::raise_file_limit();
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let node = Node::start(cfg).await?;
    info!(node = %node.id, %addr, data_dir = %node.cfg.data_dir.display(), "chorus started");
    // One stable line on stdout for people and for scripts that start the node.
    println!(
        "chorus listening on http://{addr}/ (open it in a browser; WebSocket at ws://{addr}/ws)"
    );
    let app = http::router(node.clone());
    // The listener keeps accepting during the drain (new clients are told to
    // go elsewhere), then stops and lets in-flight HTTP requests finish.
    let stop = Shutdown::new();
    let (drain_node, drained) = (node.clone(), stop.clone());
    tokio::spawn(async move {
        shutdown_signal().await;
        drain_node.drain().await;
        drained.begin();
    });
    let grace = std::time::Duration::from_millis(node.cfg.drain_timeout_ms.min(5_000));
    listener::serve(listener, app, &node.cfg.http, stop, grace).await;
    info!("bye");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
    }
}
