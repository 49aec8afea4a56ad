//! The node's side of VIPs, end to end in a namespace lab: the health
//! penalty moving a VIP to the node whose backends are healthy, sticky
//! sessions made through a VIP surviving a failover, and a clear refusal
//! to start without the capabilities. Needs root (skips loudly without).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::netns::{Lab, drop_input, has_address, run_in, wait_for};
use shoal_cluster_tests::procs::{run_shoal, shoal_bin};
use shoal_cluster_tests::viplab::{LabNode, Proc, backend, base_config, holder, lab, request, vip, web_pool, which};

const VIP: &str = "10.77.0.100";
const B1: &str = "10.77.0.20:9001";
const B2: &str = "10.77.0.20:9002";
const HEALTH: &str =
    "health = { kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 2 }";

fn priority(node: &LabNode) -> Option<u64> {
    node.vip_status(VIP).ok().and_then(|v| v["priority"].as_u64())
}

/// lb1 (priority 150, penalty 100) serves from b1 only, lb2 (100) from
/// b2 only: when b1 dies lb1 advertises 50 and lb2 preempts; when b1
/// comes back lb1 takes the VIP back.
#[test]
fn the_health_penalty_moves_the_vip_to_the_node_with_healthy_backends() -> Result<()> {
    let Some((lab, b1)) = lab("the_health_penalty_moves_the_vip_to_the_node_with_healthy_backends")? else {
        return Ok(());
    };
    let _b2 = backend(&lab, "be", B2, "b2")?;
    let config = |name: &str, ip: &str, be: &str, prio: u16| {
        base_config(name, ip, "", "0.0.0.0:80")
            + &web_pool(HEALTH, &[(be, if be == "b1" { B1 } else { B2 })])
            + &vip(&format!("{VIP}/24"), 51, prio, true, "health_penalty = 100\n")
    };
    let lb1 = LabNode::start_config(&lab, "lb1", "10.77.0.11", &config("lb1", "10.77.0.11", "b1", 150))?;
    let lb2 = LabNode::start_config(&lab, "lb2", "10.77.0.12", &config("lb2", "10.77.0.12", "b2", 100))?;
    wait_for("lb1 to hold the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP) == ["lb1"] && lb2.vip(VIP).is_ok_and(|v| v.0 == "backup")
    })
    .with_context(|| format!("lb1:\n{}\nlb2:\n{}", lb1.log(), lb2.log()))?;
    assert_eq!(priority(&lb1), Some(150));

    drop(b1);
    let moved = wait_for("lb2 to take the VIP from unhealthy lb1", Duration::from_secs(5), || {
        holder(&lab, VIP) == ["lb2"]
    })
    .with_context(|| format!("lb1: {:?}", lb1.vip_status(VIP)))?;
    eprintln!("health penalty: VIP moved {moved:?} after b1 died");
    // A preemption, not a split: the guard must not have delayed it.
    assert_eq!(lb2.vip_status(VIP)?["guard_holds"].as_u64(), Some(0));
    let s = lb1.vip_status(VIP)?;
    assert_eq!(
        (s["state"].as_str(), s["priority"].as_u64()),
        (Some("backup"), Some(50)),
        "{s}"
    );
    assert_eq!(s["configured_priority"].as_u64(), Some(150), "{s}");
    assert!(
        run_in(&lab.ns("cl"), || Ok(request(VIP)))?,
        "lb2 does not serve the VIP"
    );

    let _b1 = backend(&lab, "be", B1, "b1")?;
    wait_for("lb1 to take it back once b1 is healthy", Duration::from_secs(5), || {
        holder(&lab, VIP) == ["lb1"]
    })?;
    assert_eq!(priority(&lb1), Some(150));
    Ok(())
}

/// Sessions bound through the VIP on lb1 (learned cookies, round robin
/// underneath) go to the same backends through the VIP on lb2 after lb1
/// is killed: the replicated table, reached through VRRP failover. And
/// through lb1 again once it restarts: it takes the VIP back only after
/// its table is synced.
#[test]
fn sticky_sessions_made_through_the_vip_survive_a_failover_and_the_failback() -> Result<()> {
    let Some((lab, _b1)) = lab("sticky_sessions_made_through_the_vip_survive_a_failover_and_the_failback")? else {
        return Ok(());
    };
    let _b2 = backend(&lab, "be", B2, "b2")?;
    let certs = tempfile::tempdir()?;
    let d = certs.path().display();
    let (code, _, err) = run_shoal(&["certs", "--dir", &d.to_string(), "--nodes", "lb1,lb2"])?;
    anyhow::ensure!(code == 0, "shoal certs: {err}");
    let config = |name: &str, ip: &str, prio: u16| {
        let cluster = format!(
            "gossip_key_file = \"{d}/gossip.key\"\n\
             tls = {{ ca = \"{d}/ca.pem\", cert = \"{d}/{name}.pem\", key = \"{d}/{name}.key\" }}\n"
        );
        base_config(name, ip, &cluster, "0.0.0.0:80")
            + &web_pool(
                "algorithm = \"round_robin\"\nsticky = { mode = \"learn_cookie\", cookie = \"sid\", ttl = \"10m\" }",
                &[("b1", B1), ("b2", B2)],
            )
            + &vip(&format!("{VIP}/24"), 51, prio, true, "")
    };
    let mut lb1 = LabNode::start_config(&lab, "lb1", "10.77.0.11", &config("lb1", "10.77.0.11", 150))?;
    let lb2 = LabNode::start_config(&lab, "lb2", "10.77.0.12", &config("lb2", "10.77.0.12", 100))?;
    wait_for("lb1 to hold the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP) == ["lb1"]
    })?;

    let vip_addr: SocketAddr = format!("{VIP}:80").parse()?;
    let sessions = run_in(&lab.ns("cl"), || {
        let mut conn = KeepAlive::open(vip_addr, None)?;
        let mut sessions = BTreeMap::new();
        for _ in 0..40 {
            let r = conn.send("GET", "/session", &[], b"", false)?;
            let sid = r.session_id().context("no session cookie")?.to_string();
            sessions.insert(sid, r.backend().context("no x-backend")?.to_string());
        }
        Ok(sessions)
    })?;
    assert_eq!(sessions.len(), 40);
    let on_b1 = sessions.values().filter(|b| *b == "b1").count();
    assert!((1..40).contains(&on_b1), "round robin should use both: {on_b1} on b1");
    let entries = |n: &LabNode| {
        n.status()
            .ok()
            .and_then(|s| s["affinity"]["entries"].as_u64())
            .unwrap_or(0)
    };
    wait_for("lb2 to have the 40 bindings", Duration::from_secs(5), || {
        entries(&lb2) >= 40
    })
    .with_context(|| format!("lb2 has {}", entries(&lb2)))?;

    lb1.kill();
    wait_for("lb2 to take the VIP", Duration::from_secs(5), || {
        has_address(&lab.ns("lb2"), VIP)
    })?;
    wait_for("the client to reach lb2", Duration::from_secs(3), || {
        run_in(&lab.ns("cl"), || Ok(request(VIP))).unwrap_or(false)
    })?;
    let same = kept(&lab, vip_addr, &sessions)?;
    assert_eq!(same, 40, "{same} of 40 sessions kept their backend after the failover");
    assert_eq!(lb2.vip(VIP)?, ("master".into(), "lb2".into()));

    // The failback. lb1 restarts with replication into it blocked, so its
    // table stays empty: it must leave the VIP with lb2 (it would preempt
    // 0.35 s after starting) until lb2's snapshot has reached it.
    which("iptables").context("iptables is needed (apt-get install iptables)")?;
    replication_into(&lab, "lb1", "-A")?;
    let lb1 = LabNode::start_config(&lab, "lb1", "10.77.0.11", &config("lb1", "10.77.0.11", 150))?;
    wait_for("lb1 to hear lb2's adverts", Duration::from_secs(5), || {
        lb1.vip(VIP).is_ok_and(|v| v == ("backup".into(), "lb2".into()))
    })
    .with_context(|| format!("lb1:\n{}", lb1.log()))?;
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        assert_eq!(holder(&lab, VIP), ["lb2"], "lb1 preempted with an unsynced table");
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = lb1.vip_status(VIP)?;
    assert_eq!(held["preemption_held"].as_bool(), Some(true), "{held}");
    assert_eq!(entries(&lb1), 0, "replication into lb1 was not blocked");

    replication_into(&lab, "lb1", "-D")?;
    let took = wait_for("lb1 to take the VIP back once synced", Duration::from_secs(15), || {
        holder(&lab, VIP) == ["lb1"]
    })
    .with_context(|| format!("lb1:\n{}", lb1.log()))?;
    eprintln!("failback: lb1 master {took:?} after replication was let through");
    assert!(entries(&lb1) >= 40, "lb1 took the VIP with {} bindings", entries(&lb1));
    assert_eq!(lb1.vip_status(VIP)?["preemption_held"].as_bool(), Some(false));
    let same = kept(&lab, vip_addr, &sessions)?;
    assert_eq!(same, 40, "{same} of 40 sessions kept their backend after the failback");
    Ok(())
}

/// How many of `sessions` (cookie → backend) a request through `vip`
/// from the client's namespace reaches on their own backend.
fn kept(lab: &Lab, vip: SocketAddr, sessions: &BTreeMap<String, String>) -> Result<usize> {
    run_in(&lab.ns("cl"), || {
        let mut conn = KeepAlive::open(vip, None)?;
        let mut same = 0;
        for (sid, backend) in sessions {
            let r = conn.send("GET", "/", &[("Cookie", &format!("sid={sid}"))], b"", false)?;
            if r.backend() == Some(backend.as_str()) {
                same += 1;
            }
        }
        Ok(same)
    })
}

/// Adds (`-A`) or deletes (`-D`) a rule in `node`'s namespace dropping
/// sticky-table replication (QUIC, UDP 7947) into it, both ways: the
/// node's own dials answer to that port too.
fn replication_into(lab: &Lab, node: &str, op: &str) -> Result<()> {
    drop_input(&lab.ns(node), op, &["-p", "udp", "--dport", "7947"])
}

/// Without CAP_NET_RAW and CAP_NET_ADMIN (dropped from the bounding set,
/// so even root lacks them) a node with a VIP refuses to start and says
/// which capabilities it needs.
#[test]
fn a_node_without_the_capabilities_refuses_to_start_clearly() -> Result<()> {
    let Some(mut lab) = Lab::new("a_node_without_the_capabilities_refuses_to_start_clearly")? else {
        return Ok(());
    };
    let Ok(setpriv) = which("setpriv") else {
        bail!("setpriv is needed (util-linux)");
    };
    lab.host("lb1", "10.77.0.11/24")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shoal.toml");
    std::fs::write(
        &path,
        base_config("lb1", "10.77.0.11", "", "0.0.0.0:80")
            + &web_pool("", &[("b1", B1)])
            + &vip(&format!("{VIP}/24"), 51, 100, true, ""),
    )?;
    let log = dir.path().join("node.log");
    let mut child = Proc(
        std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("lb1")])
            .arg(setpriv)
            .args(["--bounding-set=-net_raw,-net_admin", "--inh-caps=-all"])
            .arg(shoal_bin()?)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("running shoal without capabilities")?,
    );
    let mut status = None;
    let waited = wait_for("shoal to exit", Duration::from_secs(10), || {
        status = child.0.try_wait().ok().flatten();
        status.is_some()
    });
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(waited.is_ok(), "still running without capabilities:\n{stderr}");
    assert!(status.is_some_and(|s| !s.success()), "exited 0:\n{stderr}");
    assert!(
        stderr.contains("CAP_NET_RAW and CAP_NET_ADMIN") && stderr.contains(&format!("VIP {VIP}/24")),
        "unclear error:\n{stderr}"
    );
    assert!(!has_address(&lab.ns("lb1"), VIP));
    Ok(())
}
