//! `shoal demo`: a node and three demo backends on loopback, to try Shoal
//! with nothing but curl.

pub mod backend;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::dataplane::listener;
use crate::server::RunningNode;

/// The demo's config; also a worked example of the config format.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

const BACKENDS: [(&str, &str); 3] = [
    ("demo-a", "127.0.0.1:9001"),
    ("demo-b", "127.0.0.1:9002"),
    ("demo-c", "127.0.0.1:9003"),
];

pub async fn run() -> Result<()> {
    let cfg = config::parse(DEMO_CONFIG, "demo.toml", Path::new(".")).context("the built-in demo config")?;
    let cancel = CancellationToken::new();
    let mut backends = Vec::new();
    for (name, addr) in BACKENDS {
        let addr = addr.parse().context("demo backend address")?;
        let sock = listener::bind(addr)
            .with_context(|| format!("demo backend {name}: cannot listen on {addr} (is another demo running?)"))?;
        let b = backend::DemoBackend {
            name: name.to_string(),
            delay: Duration::ZERO,
        };
        backends.push(tokio::spawn(backend::serve(sock, b, cancel.clone())));
    }
    let node = RunningNode::start(cfg).await.context("starting the demo node")?;
    println!(
        "Shoal demo is running: one node, three backends (demo-a, demo-b, demo-c, weights 1:2:3).\n\
         \n  HTTP   curl http://127.0.0.1:8080/        weighted round robin, health-checked\
         \n  TCP    curl http://127.0.0.1:8081/        maglev over raw TCP (same client, same backend)\
         \n  Status curl http://127.0.0.1:9901/status  the node's view of pools and backends\
         \n\nPress Ctrl-C to stop."
    );
    wait_for_signal().await?;
    node.shutdown().await;
    cancel.cancel();
    for b in backends {
        let _ = b.await;
    }
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
