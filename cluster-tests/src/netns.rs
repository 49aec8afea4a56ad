//! A private layer-2 lab in network namespaces: one namespace holding a
//! bridge, and hosts (namespaces with an `eth0` veth on that bridge).
//! Everything is created under a unique prefix and deleted on drop, even
//! when a test fails. Needs root; without it `Lab::new` says loudly that
//! the test is skipped.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A new lab, or `None` (after a loud SKIP line) without root or `ip`.
    pub fn new(test: &str) -> Result<Option<Self>> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let has_ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
        if !root || !has_ip {
            eprintln!(
                "\n!!!!! SKIPPED {test}: needs root and iproute2 (network namespaces); CI runs it as root !!!!!\n"
            );
            return Ok(None);
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("sh{}x{n}", std::process::id() % 100_000);
        let mut lab = Self {
            prefix,
            namespaces: Vec::new(),
        };
        let br = lab.ns("br");
        ip(&["netns", "add", &br])?;
        lab.namespaces.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        Ok(Some(lab))
    }

    /// The namespace name of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Adds host `name` with `eth0` at `cidr` (e.g. "10.77.0.11/24").
    pub fn host(&mut self, name: &str, cidr: &str) -> Result<String> {
        let ns = self.ns(name);
        let br = self.ns("br");
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        // No duplicate address detection: IPv6 addresses (link-local ones
        // included) are usable at once instead of after about a second.
        for conf in ["default", "all"] {
            let status = Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c"])
                .arg(format!("echo 0 > /proc/sys/net/ipv6/conf/{conf}/accept_dad"))
                .status()
                .context("disabling IPv6 DAD")?;
            if !status.success() {
                bail!("could not disable IPv6 DAD in {ns}");
            }
        }
        // veth names: at most 15 characters, unique in the bridge namespace.
        let outer = format!("v{}", self.namespaces.len());
        ip(&[
            "-n", &br, "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &br, "link", "set", &outer, "master", "br0", "up"])?;
        ip(&["-n", &ns, "addr", "add", cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Adds another address (e.g. IPv6 "fd77::11/64") to host `name`'s eth0.
    pub fn add_address(&self, name: &str, cidr: &str) -> Result<()> {
        ip(&["-n", &self.ns(name), "addr", "add", cidr, "dev", "eth0", "nodad"]).map(drop)
    }

    /// Starts `program ARGS` inside host `name`'s namespace, stderr to
    /// `log`.
    pub fn spawn(&self, name: &str, program: &std::path::Path, args: &[&str], log: Option<File>) -> Result<Child> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name)]).arg(program).args(args);
        cmd.stdout(Stdio::null());
        match log {
            Some(f) => cmd.stderr(f),
            None => cmd.stderr(Stdio::null()),
        };
        cmd.spawn()
            .with_context(|| format!("starting {} in {name}", program.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veths (and their peers).
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it opens live
/// there).
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("thread in {ns} panicked"))
    })
}

/// Whether host namespace `ns` has `addr` (IPv4 or IPv6) on `eth0`.
pub fn has_address(ns: &str, addr: &str) -> bool {
    ip(&["-n", ns, "addr", "show", "dev", "eth0"])
        .is_ok_and(|out| out.contains(&format!("inet {addr}/")) || out.contains(&format!("inet6 {addr}/")))
}

/// The MAC address of `eth0` in `ns`.
pub fn mac(ns: &str) -> Result<String> {
    let out = ip(&["-n", ns, "link", "show", "eth0"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .context("no link/ether in ip link output")
}

/// The MAC `ns` has cached for `addr`, if any.
pub fn neighbour(ns: &str, addr: &str) -> Option<String> {
    let out = ip(&["-n", ns, "neigh", "show", addr]).ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

/// Polls `f` every 5 ms until it holds or `deadline` passes.
/// Adds (`-A`) or deletes (`-D`) an iptables rule in namespace `ns`
/// dropping input that matches `rule` (e.g. `["-p", "112"]`).
pub fn drop_input(ns: &str, op: &str, rule: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "iptables", op, "INPUT"])
        .args(rule)
        .args(["-j", "DROP"])
        .status()
        .context("running iptables")?;
    if !status.success() {
        bail!("iptables {op} INPUT {} -j DROP in {ns} failed", rule.join(" "));
    }
    Ok(())
}

pub fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("timed out after {deadline:?} waiting for {what}")
}
