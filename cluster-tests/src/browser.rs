//! A real headless Chromium driven over the DevTools protocol: open a page
//! once and evaluate JavaScript in it over time, to check that a page
//! updates itself (a DOM dump per load could not show that).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

use crate::wait::wait_until;

pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` (Debian's `chromium` package).
    pub fn open(url: &str) -> Result<Self> {
        let profile = tempfile::tempdir()?;
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium (install it: apt-get install chromium)")?;
        let port = wait_until(
            "chromium's debugging port",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || read_port(profile.path()),
        )?
        .0;
        let target = wait_until(
            "the page target",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || page_target(port).ok().flatten(),
        )?
        .0;
        let (socket, _) = tungstenite::connect(target.as_str()).context("connecting to the DevTools socket")?;
        // A hung browser must fail the test, not stall it.
        if let MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
        }
        Ok(Self {
            child,
            socket,
            next_id: 1,
            _profile: profile,
        })
    }

    /// Evaluates `expression` in the page; returns its JSON value.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": "Runtime.evaluate",
                             "params": {"expression": expression, "returnByValue": true}});
        self.socket.send(Message::text(request.to_string()))?;
        loop {
            let msg = self.socket.read()?;
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str())?;
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("DevTools error: {e}");
                }
                return Ok(v["result"]["result"]["value"].clone());
            }
        }
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": "Page.captureScreenshot", "params": {"format": "png"}});
        self.socket.send(Message::text(request.to_string()))?;
        loop {
            let Message::Text(text) = self.socket.read()? else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str())?;
            if v["id"] == id {
                let data = v["result"]["data"].as_str().context("no screenshot data")?;
                std::fs::write(path, decode_base64(data).context("bad base64")?)?;
                return Ok(());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_port(profile: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The WebSocket URL of the first page target.
fn page_target(port: u16) -> Result<Option<String>> {
    // DevTools answers only requests whose Host is an IP or localhost.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let host = addr.to_string();
    let r = crate::client::request(addr, None, "GET", "/json/list", &[("Host", &host)], b"")?;
    let targets: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok(targets
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .map(str::to_string))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
