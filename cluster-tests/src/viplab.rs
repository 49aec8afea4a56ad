//! VIP tests' harness: real `shoal` nodes, backends and a client in a
//! namespace lab (see `netns`), with the node config built from parts, a
//! client that requests through a VIP every 10 ms, and what it lost.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client;
use crate::netns::{Lab, has_address, run_in, wait_for};
use crate::procs::shoal_bin;

pub const BACKEND: &str = "10.77.0.20:9001";
pub const SEEDS: &str = "[\"10.77.0.11:7946\", \"10.77.0.12:7946\"]";

/// `[node]`, `[cluster]` (plus `cluster_extra` lines) and one HTTP
/// listener on `bind` for pool `web`.
pub fn base_config(name: &str, ip: &str, cluster_extra: &str, bind: &str) -> String {
    crate::config::node_named(name, format!("{ip}:9901"), "shutdown_timeout = \"1s\"")
        + &format!(
            "[cluster]\nname = \"lab\"\ngossip_addr = \"{ip}:7946\"\nreplication_addr = \"{ip}:7947\"\n\
         seeds = {SEEDS}\n{cluster_extra}\n\
         [[listener]]\nname = \"web\"\nbind = \"{bind}\"\nprotocol = \"http\"\npool = \"web\"\n\n"
        )
}

/// Pool `web` with `extra` keys and backends (name, address).
pub fn web_pool(extra: &str, backends: &[(&str, &str)]) -> String {
    let mut s = format!("[[pool]]\nname = \"web\"\n{extra}\n");
    for (name, address) in backends {
        s.push_str(&format!(
            "\n[[pool.backend]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    s
}

/// One `[[vip]]` on eth0 with 100 ms adverts, plus `extra` keys.
pub fn vip(cidr: &str, vrid: u8, priority: u16, preempt: bool, extra: &str) -> String {
    format!(
        "\n[[vip]]\naddress = \"{cidr}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = {priority}\n\
         advert_interval = \"100ms\"\npreempt = {preempt}\n{extra}"
    )
}

pub struct LabNode {
    pub ns: String,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl LabNode {
    /// A node serving `0.0.0.0:80` from the one lab backend, with `vips`
    /// as (address, vrid, priority, preempt) in a /24.
    pub fn start(lab: &Lab, name: &str, ip: &str, vips: &[(&str, u8, u16, bool)]) -> Result<Self> {
        let mut cfg = base_config(name, ip, "", "0.0.0.0:80") + &web_pool("", &[("b1", BACKEND)]);
        for (addr, vrid, priority, preempt) in vips {
            cfg.push_str(&vip(&format!("{addr}/24"), *vrid, *priority, *preempt, ""));
        }
        Self::start_config(lab, name, ip, &cfg)
    }

    /// A node with this whole config; returns once its admin API answers.
    pub fn start_config(lab: &Lab, name: &str, ip: &str, config: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, config)?;
        let log = File::create(dir.path().join("node.log"))?;
        let path = path.to_string_lossy().into_owned();
        let child = lab.spawn(name, &shoal_bin()?, &["run", "-c", &path], Some(log))?;
        let mut node = Self {
            ns: lab.ns(name),
            admin: format!("{ip}:9901").parse()?,
            dir,
            child: Some(child),
        };
        let up = wait_for("the node's admin API", Duration::from_secs(15), || {
            node.status().is_ok() || node.exited()
        });
        if up.is_err() || node.exited() {
            bail!("{name} did not start:\n{}", node.log());
        }
        Ok(node)
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Result<serde_json::Value> {
        let admin = self.admin;
        let r = run_in(&self.ns, || client::get(admin, "/status"))?;
        serde_json::from_slice(&r.body).context("parsing /status")
    }

    /// The `/status` entry of the VIP at `addr`.
    pub fn vip_status(&self, addr: &str) -> Result<serde_json::Value> {
        let s = self.status()?;
        s["vips"]
            .as_array()
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v["address"].as_str().is_some_and(|a| a.split('/').next() == Some(addr)))
            })
            .cloned()
            .context("VIP not in status")
    }

    /// (state, master) of the VIP at `addr` per this node's /status.
    pub fn vip(&self, addr: &str) -> Result<(String, String)> {
        let v = self.vip_status(addr)?;
        Ok((
            v["state"].as_str().unwrap_or_default().to_string(),
            v["master"].as_str().unwrap_or_default().to_string(),
        ))
    }

    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?;
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a demo backend named `name` on `bind` in host `host`.
pub fn backend(lab: &Lab, host: &str, bind: &str, name: &str) -> Result<Proc> {
    Ok(Proc(lab.spawn(
        host,
        &shoal_bin()?,
        &["backend", "--bind", bind, "--name", name],
        None,
    )?))
}

/// Two nodes (lb1 .11, lb2 .12), a backend host (.20, serving
/// `BACKEND`) and a client (.30) on one bridge.
pub fn lab(test: &str) -> Result<Option<(Lab, Proc)>> {
    let Some(mut lab) = Lab::new(test)? else {
        return Ok(None);
    };
    lab.host("lb1", "10.77.0.11/24")?;
    lab.host("lb2", "10.77.0.12/24")?;
    lab.host("be", "10.77.0.20/24")?;
    lab.host("cl", "10.77.0.30/24")?;
    let backend = backend(&lab, "be", BACKEND, "b1")?;
    Ok(Some((lab, backend)))
}

/// One HTTP request to port 80 of `vip`, on a fresh connection.
pub fn request(vip: &str) -> bool {
    let Ok(ip) = vip.parse::<IpAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(ip, 80), Duration::from_millis(50)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.ends_with(b" 200")
}

/// A client in namespace `ns` requesting every 10 ms until stopped (at
/// most 60 s): each request's start time and success.
pub fn client(
    ns: String,
    vip: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<(Instant, bool)>>> {
    std::thread::spawn(move || {
        let file = File::open(format!("/var/run/netns/{ns}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut out = Vec::new();
        let begin = Instant::now();
        while !stop.load(Ordering::Relaxed) && begin.elapsed() < Duration::from_secs(60) {
            let t = Instant::now();
            out.push((t, request(vip)));
            std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
        }
        Ok(out)
    })
}

/// The longest time between two successful requests, and the failures.
pub fn outage(samples: &[(Instant, bool)]) -> (Duration, usize) {
    let oks: Vec<Instant> = samples.iter().filter(|s| s.1).map(|s| s.0).collect();
    let longest = oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    (longest, samples.iter().filter(|s| !s.1).count())
}

/// After a failover: lets the client run 0.7 s more (70 requests), stops
/// it, prints what it saw (`what` names the failure), and fails unless its
/// longest outage is at most 0.5 s and its last 20 requests were served.
pub fn check_client_after_failover(
    stop: &AtomicBool,
    client: std::thread::JoinHandle<Result<Vec<(Instant, bool)>>>,
    what: &str,
    moved: Duration,
) -> Result<()> {
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let samples = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    let (gap, failed) = outage(&samples);
    eprintln!(
        "{what}: VIP moved after {moved:?}; client outage {gap:?}, {failed} of {} requests failed",
        samples.len()
    );
    if gap > Duration::from_millis(500) {
        bail!("{what}: client outage {gap:?}, over 0.5 s");
    }
    if !samples.iter().rev().take(20).all(|s| s.1) {
        bail!("{what}: the client is not served after the failover");
    }
    Ok(())
}

/// Which of lb1 and lb2 have `vip` on eth0.
pub fn holder(lab: &Lab, vip: &str) -> Vec<&'static str> {
    ["lb1", "lb2"]
        .into_iter()
        .filter(|n| has_address(&lab.ns(n), vip))
        .collect()
}

/// `program` in the usual system directories.
pub fn which(program: &str) -> Result<std::path::PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = std::path::Path::new(dir).join(program);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{program} not found")
}
