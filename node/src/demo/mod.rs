//! `shoal demo`: a node and three demo backends on loopback, to try Shoal
//! with nothing but curl.

pub mod backend;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::{self, HostPort, Protocol};
use crate::dataplane::listener;
use crate::server::RunningNode;

/// The demo's config; also a worked example of the config format.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// Where the demo listens.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub http: u16,
    pub tcp: u16,
    pub admin: u16,
    pub backends: [u16; 3],
}

impl DemoPorts {
    /// The ports of the built-in config (8080, 8081, 9901, 9001-9003).
    pub const DEFAULT: Self = Self {
        http: 8080,
        tcp: 8081,
        admin: 9901,
        backends: [9001, 9002, 9003],
    };

    /// Six consecutive ports from `base`: HTTP, TCP, admin, three backends.
    pub fn from_base(base: u16) -> Option<Self> {
        let at = |k: u16| base.checked_add(k).filter(|p| *p != 0);
        Some(Self {
            http: at(0)?,
            tcp: at(1)?,
            admin: at(2)?,
            backends: [at(3)?, at(4)?, at(5)?],
        })
    }
}

const BACKEND_NAMES: [&str; 3] = ["demo-a", "demo-b", "demo-c"];

/// The demo config moved to `ports`.
fn demo_config(ports: DemoPorts) -> Result<config::Config> {
    let mut cfg = config::parse(DEMO_CONFIG, "demo.toml", Path::new(".")).context("the built-in demo config")?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    cfg.node.admin_addr = loopback(ports.admin);
    for l in &mut cfg.listeners {
        l.bind = loopback(if l.protocol == Protocol::Http {
            ports.http
        } else {
            ports.tcp
        });
    }
    for pool in &mut cfg.pools {
        for (b, port) in pool.backends.iter_mut().zip(ports.backends) {
            b.address = HostPort::Ip(loopback(port));
        }
    }
    Ok(cfg)
}

pub async fn run(ports: DemoPorts) -> Result<()> {
    let cfg = demo_config(ports)?;
    let cancel = CancellationToken::new();
    let mut backends = Vec::new();
    for (name, port) in BACKEND_NAMES.into_iter().zip(ports.backends) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let sock = listener::bind(addr)
            .with_context(|| format!("demo backend {name}: cannot listen on {addr} (is another demo running?)"))?;
        let b = backend::DemoBackend {
            name: name.to_string(),
            delay: Duration::ZERO,
            fail_with: None,
        };

        backends.push(tokio::spawn(backend::serve(sock, b, cancel.clone())));
    }
    let node = RunningNode::start(cfg).await.context("starting the demo node")?;
    println!(
        "Shoal demo is running: one node, three backends (demo-a, demo-b, demo-c, weights 1:2:3).\n\
         \n  HTTP   curl http://127.0.0.1:{}/        weighted round robin, health-checked\
         \n  TCP    curl http://127.0.0.1:{}/        maglev over raw TCP (same client, same backend)\
         \n  Status curl http://127.0.0.1:{}/status  the node's view of pools and backends\
         \n\nPress Ctrl-C to stop.",
        ports.http, ports.tcp, ports.admin
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid_and_moves_with_the_ports() -> Result<()> {
        let cfg = demo_config(DemoPorts::DEFAULT)?;
        assert_eq!(cfg.node.admin_addr.port(), 9901);
        let moved = demo_config(DemoPorts::from_base(20_000).context("base in range")?)?;
        assert_eq!(moved.node.admin_addr.port(), 20_002);
        let binds: Vec<u16> = moved.listeners.iter().map(|l| l.bind.port()).collect();
        assert_eq!(binds, vec![20_000, 20_001]);
        assert_eq!(moved.pools[0].backends[2].address.port(), 20_005);
        assert!(DemoPorts::from_base(65_533).is_none());
        Ok(())
    }
}
