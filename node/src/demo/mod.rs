//! `shoal demo`: a two-node cluster and three demo backends on loopback, to
//! try Shoal with nothing but curl and a browser.

pub mod backend;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_proto::NodeId;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ClusterConfig, ClusterTls, Dur, HostPort, Protocol};
use crate::dataplane::listener;
use crate::server::RunningNode;

/// The demo's node config; also a worked example of the config format.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// One demo node's ports.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub http: u16,
    pub tcp: u16,
    pub admin: u16,
    pub gossip: u16,
    pub replication: u16,
}

/// Where the demo listens.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub nodes: [NodePorts; 2],
    pub backends: [u16; 3],
}

/// Ports used from `--port-base`.
pub const PORTS_USED: u16 = 13;

impl DemoPorts {
    /// The documented ports: node 1 on 8080 (HTTP), 8081 (TCP), 9901
    /// (admin); node 2 on 8082, 8083, 9902; backends on 9001-9003.
    pub const DEFAULT: Self = Self {
        nodes: [
            NodePorts {
                http: 8080,
                tcp: 8081,
                admin: 9901,
                gossip: 7946,
                replication: 7947,
            },
            NodePorts {
                http: 8082,
                tcp: 8083,
                admin: 9902,
                gossip: 7956,
                replication: 7957,
            },
        ],
        backends: [9001, 9002, 9003],
    };

    /// Thirteen consecutive ports from `base`: node 1's HTTP, TCP, admin,
    /// three backends, node 2's HTTP, TCP, admin, then the gossip and
    /// replication (UDP) ports of both nodes.
    pub fn from_base(base: u16) -> Option<Self> {
        let at = |k: u16| base.checked_add(k).filter(|p| *p != 0);
        Some(Self {
            nodes: [
                NodePorts {
                    http: at(0)?,
                    tcp: at(1)?,
                    admin: at(2)?,
                    gossip: at(9)?,
                    replication: at(10)?,
                },
                NodePorts {
                    http: at(6)?,
                    tcp: at(7)?,
                    admin: at(8)?,
                    gossip: at(11)?,
                    replication: at(12)?,
                },
            ],
            backends: [at(3)?, at(4)?, at(5)?],
        })
    }
}

const BACKEND_NAMES: [&str; 3] = ["demo-a", "demo-b", "demo-c"];

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Node `index`'s config (0 or 1) at `ports`, gossiping with the other
/// node using the key in `secrets`.
fn demo_config(ports: DemoPorts, index: usize, secrets: &Path) -> Result<config::Config> {
    let mut cfg = config::parse(DEMO_CONFIG, "demo.toml", Path::new(".")).context("the built-in demo config")?;
    let me = ports.nodes[index];
    let other = ports.nodes[1 - index];
    cfg.node.id = NodeId::new(format!("demo-{}", index + 1)).context("demo node id")?;
    cfg.node.admin_addr = loopback(me.admin);
    for l in &mut cfg.listeners {
        l.bind = loopback(if l.protocol == Protocol::Http { me.http } else { me.tcp });
    }
    for pool in &mut cfg.pools {
        for (b, port) in pool.backends.iter_mut().zip(ports.backends) {
            b.address = HostPort::Ip(loopback(port));
        }
    }
    cfg.cluster = Some(ClusterConfig {
        name: "demo".to_string(),
        gossip_addr: loopback(me.gossip),
        replication_addr: loopback(me.replication),
        seeds: vec![loopback(other.gossip)],
        tls: Some(ClusterTls {
            ca: secrets.join("ca.pem"),
            cert: secrets.join(format!("demo-{}.pem", index + 1)),
            key: secrets.join(format!("demo-{}.key", index + 1)),
        }),
        gossip_key_file: Some(secrets.join("gossip.key")),
        gossip_interval: Dur::from_millis(100),
    });
    Ok(cfg)
}

/// A fresh private directory (mode 0700, random name) for the demo's keys,
/// removed when the demo ends.
fn secrets() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-demo-")
        .tempdir()
        .context("creating a directory for the demo's keys")?;
    let nodes = [NodeId::new("demo-1"), NodeId::new("demo-2")]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("demo node ids")?;
    crate::certs::generate(dir.path(), &nodes).context("creating the demo's keys")?;
    Ok(dir)
}

pub async fn run(ports: DemoPorts) -> Result<()> {
    let secrets = secrets()?;
    let configs = [
        demo_config(ports, 0, secrets.path())?,
        demo_config(ports, 1, secrets.path())?,
    ];
    let cancel = CancellationToken::new();
    let mut backends = Vec::new();
    for (name, port) in BACKEND_NAMES.into_iter().zip(ports.backends) {
        let addr = loopback(port);
        let sock = listener::bind(addr)
            .with_context(|| format!("demo backend {name}: cannot listen on {addr} (is another demo running?)"))?;
        let b = backend::DemoBackend {
            name: name.to_string(),
            delay: Duration::ZERO,
            fail_with: None,
        };
        backends.push(tokio::spawn(backend::serve(sock, b, cancel.clone())));
    }
    let [c1, c2] = configs;
    let node1 = RunningNode::start(c1).await.context("starting demo node 1")?;
    let node2 = RunningNode::start(c2).await.context("starting demo node 2")?;
    let [n1, n2] = ports.nodes;
    println!(
        "Shoal demo is running: a cluster of two nodes (demo-1, demo-2) in front of three backends\n\
         (demo-a, demo-b, demo-c, weights 1:2:3).\n\
         \n  HTTP       curl http://127.0.0.1:{}/      (demo-1)   curl http://127.0.0.1:{}/   (demo-2)\
         \n  Sticky     curl -c jar -b jar http://127.0.0.1:{}/   keeps to one backend (cookie \"shoal\"), on either node\
         \n  TCP        curl http://127.0.0.1:{}/      maglev over raw TCP: the same client always reaches the same backend\
         \n  Dashboard  http://127.0.0.1:{}/           the cluster at a glance (peers, backend health per node)\
         \n  Status     curl http://127.0.0.1:{}/status    or: shoal status --admin 127.0.0.1:{}\
         \n\nPress Ctrl-C to stop.",
        n1.http, n2.http, n1.http, n1.tcp, n1.admin, n1.admin, n2.admin
    );
    wait_for_signal().await?;
    // Both nodes leave together, then stop.
    tokio::join!(node1.shutdown(), node2.shutdown());
    cancel.cancel();
    for b in backends {
        let _ = b.await;
    }
    drop(secrets);
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
    fn demo_configs_are_valid_and_move_with_the_ports() -> Result<()> {
        let dir = std::path::Path::new("/nonexistent");
        let cfg = demo_config(DemoPorts::DEFAULT, 0, dir)?;
        assert_eq!(cfg.node.admin_addr.port(), 9901);
        let moved = demo_config(DemoPorts::from_base(20_000).context("base in range")?, 1, dir)?;
        assert_eq!(moved.node.id.as_str(), "demo-2");
        assert_eq!(moved.node.admin_addr.port(), 20_008);
        let binds: Vec<u16> = moved.listeners.iter().map(|l| l.bind.port()).collect();
        assert_eq!(binds, vec![20_006, 20_007]);
        assert_eq!(moved.pools[0].backends[2].address.port(), 20_005);
        let cluster = moved.cluster.context("cluster")?;
        assert_eq!((cluster.gossip_addr.port(), cluster.seeds[0].port()), (20_011, 20_009));
        assert!(DemoPorts::from_base(65_530).is_none());
        Ok(())
    }
}
