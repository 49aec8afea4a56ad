//! `shoal demo`, the README's first command: it serves on the ports it
//! prints, balances by weight over three backends, and stops on Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::{free_ports, shoal_bin, tcp_get, wait_until};

#[test]
fn demo_runs_a_two_node_cluster_serves_balanced_traffic_and_stops_on_ctrl_c() -> Result<()> {
    // The demo's default ports (8080, 9901, ...) may be in use on a
    // developer's machine; --port-base moves all six together.
    let base = free_ports(13)?;
    let mut child = Command::new(shoal_bin()?)
        .args(["demo", "--port-base", &base.to_string()])
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let admin = SocketAddr::from(([127, 0, 0, 1], base + 2));
    let started = wait_until(
        "the demo's admin API",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            shoal_cluster_tests::get(admin, "/healthz")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    let result = (|| -> Result<()> {
        started?;
        let http = SocketAddr::from(([127, 0, 0, 1], base));
        let mut conn = KeepAlive::open(http, None)?;
        let mut counts = BTreeMap::new();
        for _ in 0..60 {
            let r = conn.send("GET", "/", &[], b"", false)?;
            *counts
                .entry(r.backend().context("no x-backend")?.to_string())
                .or_insert(0) += 1;
        }
        let want = BTreeMap::from([
            ("demo-a".to_string(), 10),
            ("demo-b".to_string(), 20),
            ("demo-c".to_string(), 30),
        ]);
        assert_eq!(counts, want);
        let r = tcp_get(SocketAddr::from(([127, 0, 0, 1], base + 1)), None, "/")?;
        assert_eq!(r.status, 200);
        // The second node serves too, and the two form a cluster.
        // It starts after the first, so it may not be listening yet.
        let second = SocketAddr::from(([127, 0, 0, 1], base + 6));
        wait_until(
            "the second demo node to serve",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || shoal_cluster_tests::get(second, "/").ok().filter(|r| r.status == 200),
        )?;
        let admin2 = SocketAddr::from(([127, 0, 0, 1], base + 8));
        wait_until(
            "the two demo nodes to see each other",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                let r = shoal_cluster_tests::get(admin2, "/status").ok()?;
                let s: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                (s["peers"][0]["id"] == "demo-1" && s["peers"][0]["state"] == "alive").then_some(())
            },
        )?;
        Ok(())
    })();
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let exited = wait_until(
        "the demo to exit",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || child.try_wait().ok().flatten(),
    );
    if exited.is_err() {
        let _ = child.kill();
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = child.wait();
    result?;
    let (status, _) = exited?;
    assert!(status.success(), "demo exited with {status}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{base}/")),
        "the demo prints its URLs: {out}"
    );
    Ok(())
}
