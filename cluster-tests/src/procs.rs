//! Real processes: shoal nodes and demo backends, killed when dropped.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::client;
use crate::wait::wait_until;

/// The `shoal` binary of this workspace's target directory, built on first
/// use if the test runner did not build it.
pub fn shoal_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_or_build() -> Result<PathBuf> {
    // The test script builds once and sets this, so parallel test
    // processes do not each run cargo.
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    // Test binaries live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().context("locating the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let bin = profile_dir.join("shoal");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", "shoal-node", "--bin", "shoal"]);
    if release {
        cmd.arg("--release");
    }
    // Building is cheap when up to date, and guarantees the binary matches
    // the sources under test.
    let status = cmd.status().context("running cargo build for the shoal binary")?;
    if !status.success() {
        bail!("cargo build of the shoal binary failed: {status}");
    }
    if !bin.exists() {
        bail!("{} does not exist after building", bin.display());
    }
    Ok(bin)
}

/// A loopback port that was free a moment ago, reserved for this test
/// process. Ports come from below the kernel's ephemeral range (32768+), so
/// the tests' own outgoing connections cannot take one before the process
/// under test binds it; an exclusive lock file per port (held until this
/// process exits) keeps concurrently running test processes apart.
pub fn free_port() -> Result<u16> {
    free_ports(1)
}

/// `n` consecutive free ports, reserved like [`free_port`]; returns the
/// first.
pub fn free_ports(n: u16) -> Result<u16> {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("shoal-test-ports");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    'search: for _ in 0..2000 {
        let base = 20_000 + (random_u64() % u64::from(12_000 - n)) as u16;
        let mut locks = Vec::new();
        for port in base..base + n {
            match reserve(&dir, port)? {
                Some(lock) => locks.push(lock),
                // Dropping `locks` releases the ports taken so far.
                None => continue 'search,
            }
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).extend(locks);
        return Ok(base);
    }
    bail!("no {n} free consecutive ports found in 20000-31999")
}

/// Locks `port`'s file and checks the port binds; `None` if either fails.
fn reserve(dir: &Path, port: u16) -> Result<Option<fs::File>> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{port}.lock")))?;
    // Taken by another process, or by this one (a second open of the file
    // is a separate lock).
    if lock.try_lock().is_err() {
        return Ok(None);
    }
    // Gossip and replication use the same numbers over UDP.
    let free = TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
    Ok(free.then_some(lock))
}

/// Randomness without a dependency: the std hasher is seeded randomly.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A `shoal backend` process.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Backend {
    pub fn start(name: &str) -> Result<Self> {
        Self::start_with(name, &[])
    }

    pub fn start_with_delay(name: &str, delay: &str) -> Result<Self> {
        Self::start_with(name, &["--delay", delay])
    }

    /// A backend with extra `shoal backend` flags (e.g. `--fail-with 500`).
    pub fn start_with(name: &str, extra: &[&str]) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut b = Self {
            name: name.to_string(),
            addr,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    /// Starts the process (again) on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let child = Command::new(shoal_bin()?)
            .args(["backend", "--bind", &self.addr.to_string(), "--name", &self.name])
            .args(&self.extra)
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning shoal backend")?;
        self.child = Some(child);
        let addr = self.addr;
        wait_until(
            &format!("backend {} on {addr}", self.name),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || accepts(addr).then_some(()),
        )?;
        Ok(())
    }

    /// SIGKILL: the backend vanishes with its connections.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `shoal run` process with its config and log in a temporary directory.
pub struct Node {
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// Writes `config` and starts the node; waits until its admin API
    /// answers. The config must set `admin_addr` to `admin`.
    pub fn start(config: &str, admin: SocketAddr) -> Result<Self> {
        Self::start_under(&[], config, admin)
    }

    /// [`Node::start`], the node run by `wrapper` (a command and its
    /// arguments, given the node's command line after them).
    pub fn start_under(wrapper: &[&Path], config: &str, admin: SocketAddr) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("shoal.toml");
        fs::write(&path, config)?;
        let log = fs::File::create(dir.path().join("node.log"))?;
        let shoal = shoal_bin()?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&shoal);
                c
            }
            None => Command::new(&shoal),
        };
        let child = command
            .args(["run", "-c"])
            .arg(&path)
            .env("SHOAL_LOG", "info,shoal_node=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning shoal run")?;
        let mut node = Self {
            admin,
            dir,
            child: Some(child),
        };
        let started = wait_until(
            "the node's admin API",
            Duration::from_secs(15),
            Duration::from_millis(20),
            || {
                if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                    return Some(Err(status));
                }
                client::get(admin, "/healthz")
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| Ok(()))
            },
        );
        match started {
            Ok((Ok(()), _)) => Ok(node),
            Ok((Err(status), _)) => bail!("node exited at start ({status}); log:\n{}", node.log()),
            Err(e) => bail!("{e}; log:\n{}", node.log()),
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.path().join("node.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        let r = client::get(self.admin, "/status")?;
        if r.status != 200 {
            bail!("/status answered {}", r.status);
        }
        serde_json::from_slice(&r.body).context("parsing /status")
    }

    /// Backend `backend` of pool `pool` as `/status` shows it.
    pub fn backend_status(&self, pool: &str, backend: &str) -> Result<serde_json::Value> {
        let status = self.status()?;
        status["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
            .and_then(|p| p["backends"].as_array())
            .and_then(|bs| bs.iter().find(|b| b["name"] == backend))
            .cloned()
            .with_context(|| format!("no backend {pool}/{backend} in status"))
    }

    /// `healthy` of backend `backend` in pool `pool`, per `/status`.
    pub fn backend_healthy(&self, pool: &str, backend: &str) -> Result<bool> {
        self.backend_status(pool, backend)?["healthy"]
            .as_bool()
            .context("healthy is not a bool")
    }

    /// Replaces the config file and sends SIGHUP.
    pub fn reload(&self, config: &str) -> Result<()> {
        fs::write(self.dir.path().join("shoal.toml"), config)?;
        self.signal("HUP")
    }

    /// The node's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.as_ref().map(Child::id).context("node is not running")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// How many times `needle` occurs in the log so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Sends a signal to the node (e.g. "TERM").
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.as_ref().map(Child::id).context("node is not running")?;
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL: the node vanishes without a word to its peers.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("node is not running")?;
        let (status, _) = wait_until("the node to exit", deadline, Duration::from_millis(20), || {
            child.try_wait().ok().flatten()
        })?;
        self.child = None;
        Ok(status)
    }

    /// Fails if the node's log shows a panic.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the node panicked; log:\n{log}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `shoal` with `args`, returning (exit code, stdout, stderr).
pub fn run_shoal(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(shoal_bin()?).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
