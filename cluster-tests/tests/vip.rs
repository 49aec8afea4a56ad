//! VIP failover between two real nodes in network namespaces on one
//! bridge, with a backend and a client: who holds the VIP, how long a
//! client making a request every 10 ms loses it, whether gratuitous ARP
//! moved the client, preemption, SIGTERM hand-over and active-active.
//! Needs root (skips loudly without).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_cluster_tests::netns::{drop_input, has_address, mac, neighbour, run_in, wait_for};
use shoal_cluster_tests::viplab::{
    BACKEND, LabNode, Proc, base_config, check_client_after_failover, client, holder, lab, request, vip, web_pool,
    which,
};

const VIP_A: &str = "10.77.0.100";
const VIP_B: &str = "10.77.0.101";
#[test]
fn active_passive_failover_on_link_loss_with_garp_and_preemption() -> Result<()> {
    let Some((lab, _backend)) = lab("active_passive_failover_on_link_loss_with_garp_and_preemption")? else {
        return Ok(());
    };
    let lb1 = LabNode::start(&lab, "lb1", "10.77.0.11", &[(VIP_A, 51, 150, true)])?;
    let lb2 = LabNode::start(&lab, "lb2", "10.77.0.12", &[(VIP_A, 51, 100, true)])?;
    wait_for("lb1 to hold the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb1"]
    })
    .with_context(|| format!("lb1:\n{}\nlb2:\n{}", lb1.log(), lb2.log()))?;
    wait_for("both to agree in status", Duration::from_secs(5), || {
        lb1.vip(VIP_A).is_ok_and(|v| v == ("master".into(), "lb1".into()))
            && lb2.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb1".into()))
    })
    .with_context(|| {
        format!(
            "lb1: {:?}\nlb2: {:?}",
            lb1.status().map(|s| s["vips"].clone()),
            lb2.status().map(|s| s["vips"].clone())
        )
    })?;
    // The backup never holds it while the master lives.
    assert_eq!(holder(&lab, VIP_A), ["lb1"]);

    let stop = Arc::new(AtomicBool::new(false));
    let cl = client(lab.ns("cl"), VIP_A, Arc::clone(&stop));
    wait_for("the client to reach the VIP", Duration::from_secs(5), || {
        neighbour(&lab.ns("cl"), VIP_A).is_some()
    })?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(neighbour(&lab.ns("cl"), VIP_A), Some(mac(&lab.ns("lb1"))?));

    // Pull lb1's cable.
    shoal_cluster_tests::netns::ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "down"])?;
    let moved = wait_for("lb2 to take the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb2"]
    })?;
    // The client's ARP cache follows at once (gratuitous ARP).
    let lb2_mac = mac(&lab.ns("lb2"))?;
    wait_for(
        "the client's ARP entry to point at lb2",
        Duration::from_millis(500),
        || neighbour(&lab.ns("cl"), VIP_A).as_deref() == Some(lb2_mac.as_str()),
    )?;
    check_client_after_failover(&stop, cl, "link loss", moved)?;
    assert_eq!(lb2.vip(VIP_A)?, ("master".into(), "lb2".into()));
    assert_eq!(lb1.vip(VIP_A)?.0, "fault");

    // Cable back: lb1 (higher priority, preempt) takes the VIP back and
    // lb2 lets go.
    shoal_cluster_tests::netns::ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "up"])?;
    wait_for("lb1 to preempt", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb1"]
    })?;
    wait_for("status to follow", Duration::from_secs(3), || {
        lb2.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb1".into()))
    })?;
    for n in [&lb1, &lb2] {
        assert!(!n.log().contains("panicked"), "{}", n.log());
    }
    Ok(())
}

#[test]
fn without_preempt_the_old_master_stays_backup_when_it_returns() -> Result<()> {
    let Some((lab, _backend)) = lab("without_preempt_the_old_master_stays_backup_when_it_returns")? else {
        return Ok(());
    };
    let lb1 = LabNode::start(&lab, "lb1", "10.77.0.11", &[(VIP_A, 51, 150, false)])?;
    let lb2 = LabNode::start(&lab, "lb2", "10.77.0.12", &[(VIP_A, 51, 100, false)])?;
    wait_for("lb1 to hold the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb1"]
    })?;
    shoal_cluster_tests::netns::ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "down"])?;
    wait_for("lb2 to take the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb2"]
    })?;
    shoal_cluster_tests::netns::ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "up"])?;
    wait_for("lb1 to be backup again", Duration::from_secs(3), || {
        lb1.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb2".into()))
    })?;
    // Well past a master-down interval (0.34 s), lb2 still holds it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(holder(&lab, VIP_A), ["lb2"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lb2.vip(VIP_A)?.0, "master");
    Ok(())
}

#[test]
fn sigterm_hands_the_vip_over_within_the_skew_time() -> Result<()> {
    let Some((lab, _backend)) = lab("sigterm_hands_the_vip_over_within_the_skew_time")? else {
        return Ok(());
    };
    let mut lb1 = LabNode::start(&lab, "lb1", "10.77.0.11", &[(VIP_A, 51, 150, true)])?;
    let lb2 = LabNode::start(&lab, "lb2", "10.77.0.12", &[(VIP_A, 51, 100, true)])?;
    wait_for("lb1 to hold the VIP", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb1"]
    })?;
    wait_for("lb2 to be lb1's backup", Duration::from_secs(5), || {
        lb2.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb1".into()))
    })?;
    lb1.signal("TERM")?;
    let took = wait_for("lb2 to take the VIP", Duration::from_secs(3), || {
        has_address(&lab.ns("lb2"), VIP_A)
    })?;
    // Skew time at priority 100 and 100 ms adverts is 61 ms; without the
    // priority-0 advert it would be the master-down interval, 361 ms.
    eprintln!("SIGTERM: lb2 holds the VIP after {took:?}");
    assert!(took < Duration::from_millis(200), "hand-over took {took:?}");
    assert!(!has_address(&lab.ns("lb1"), VIP_A), "lb1 kept the VIP");
    if let Some(c) = lb1.child.as_mut() {
        wait_for("lb1 to exit", Duration::from_secs(10), || {
            c.try_wait().ok().flatten().is_some()
        })?;
    }
    lb1.child = None;
    assert!(lb1.log().contains("VIP released for shutdown"), "{}", lb1.log());
    Ok(())
}

#[test]
fn active_active_puts_one_vip_on_each_node_and_both_on_the_survivor() -> Result<()> {
    let Some((lab, _backend)) = lab("active_active_puts_one_vip_on_each_node_and_both_on_the_survivor")? else {
        return Ok(());
    };
    let mut lb1 = LabNode::start(
        &lab,
        "lb1",
        "10.77.0.11",
        &[(VIP_A, 51, 150, true), (VIP_B, 52, 100, true)],
    )?;
    let lb2 = LabNode::start(
        &lab,
        "lb2",
        "10.77.0.12",
        &[(VIP_A, 51, 100, true), (VIP_B, 52, 150, true)],
    )?;
    wait_for("one VIP on each node", Duration::from_secs(5), || {
        holder(&lab, VIP_A) == ["lb1"] && holder(&lab, VIP_B) == ["lb2"]
    })
    .with_context(|| {
        format!(
            "A on {:?}, B on {:?}\nlb1:\n{}\nlb2:\n{}",
            holder(&lab, VIP_A),
            holder(&lab, VIP_B),
            lb1.log(),
            lb2.log()
        )
    })?;
    for vip in [VIP_A, VIP_B] {
        let ok = run_in(&lab.ns("cl"), || Ok(request(vip)))?;
        assert!(ok, "{vip} not served");
    }
    lb1.kill();
    wait_for("lb2 to hold both", Duration::from_secs(5), || {
        has_address(&lab.ns("lb2"), VIP_A) && has_address(&lab.ns("lb2"), VIP_B)
    })?;
    // lb1 died without cleaning up; gratuitous ARP points the client at
    // lb2 for both.
    let lb2_mac = mac(&lab.ns("lb2"))?;
    for vip in [VIP_A, VIP_B] {
        wait_for("the client to reach the VIP", Duration::from_secs(2), || {
            run_in(&lab.ns("cl"), || Ok(request(vip))).unwrap_or(false)
        })?;
        assert_eq!(
            neighbour(&lab.ns("cl"), vip).as_deref(),
            Some(lb2_mac.as_str()),
            "{vip}"
        );
    }
    let s = lb2.status()?;
    let masters = s["vips"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|v| v["state"] == "master").count());
    if masters != 2 {
        bail!("lb2 status: {s}");
    }
    Ok(())
}

/// Adds (`-A`) or deletes (`-D`) a rule dropping VRRP (to `dest`, if
/// given) on input.
fn iptables_to(ns: &str, op: &str, dest: Option<&str>) -> Result<()> {
    match dest {
        Some(d) => drop_input(ns, op, &["-p", "112", "-d", d]),
        None => drop_input(ns, op, &["-p", "112"]),
    }
}

fn iptables(ns: &str, op: &str) -> Result<()> {
    iptables_to(ns, op, None)
}

/// Unicast mode: with multicast VRRP dropped on both nodes, adverts sent
/// to `unicast_peers` still keep lb2 a backup, and failover still works.
#[test]
fn unicast_peers_carry_the_election_without_multicast() -> Result<()> {
    let Some((lab, _backend)) = lab("unicast_peers_carry_the_election_without_multicast")? else {
        return Ok(());
    };
    which("iptables").context("iptables is needed (apt-get install iptables)")?;
    for n in ["lb1", "lb2"] {
        iptables_to(&lab.ns(n), "-A", Some("224.0.0.18"))?;
    }
    let node = |name: &str, ip: &str, peer: &str, priority: u16| {
        let config = base_config(name, ip, "", "0.0.0.0:80")
            + &web_pool("", &[("b1", BACKEND)])
            + &vip(
                &format!("{VIP_A}/24"),
                51,
                priority,
                true,
                // No guard: it would hide lost adverts for 2 s.
                &format!("unicast_peers = [\"{peer}\"]\nsplit_brain_hold = \"0s\"\n"),
            );
        LabNode::start_config(&lab, name, ip, &config)
    };
    let lb1 = node("lb1", "10.77.0.11", "10.77.0.12", 150)?;
    let lb2 = node("lb2", "10.77.0.12", "10.77.0.11", 100)?;
    wait_for("lb2 to follow lb1 over unicast", Duration::from_secs(5), || {
        lb2.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb1".into())) && holder(&lab, VIP_A) == ["lb1"]
    })
    .with_context(|| format!("lb1:\n{}\nlb2:\n{}", lb1.log(), lb2.log()))?;
    // Stable well past a master-down interval: adverts do arrive.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        assert_eq!(holder(&lab, VIP_A), ["lb1"], "lb2 took the VIP: unicast adverts lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lb2.vip_status(VIP_A)?["adverts_received"].as_u64().unwrap_or(0) >= 5);
    shoal_cluster_tests::netns::ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "down"])?;
    wait_for("lb2 to take over", Duration::from_secs(3), || {
        holder(&lab, VIP_A) == ["lb2"]
    })?;
    assert!(run_in(&lab.ns("cl"), || Ok(request(VIP_A)))?);
    Ok(())
}

fn guard_holds(node: &LabNode) -> u64 {
    node.status()
        .ok()
        .and_then(|s| s["vips"][0]["guard_holds"].as_u64())
        .unwrap_or(0)
}

#[test]
fn split_brain_guard_holds_off_then_the_split_heals_to_one_master() -> Result<()> {
    let Some((lab, _backend)) = lab("split_brain_guard_holds_off_then_the_split_heals_to_one_master")? else {
        return Ok(());
    };
    // cluster-tests/run-all.sh installs iptables when it runs as root.
    std::process::Command::new("iptables")
        .arg("-V")
        .output()
        .context("iptables is needed (apt-get install iptables)")?;
    let lb1 = LabNode::start(&lab, "lb1", "10.77.0.11", &[(VIP_A, 51, 150, true)])?;
    let lb2 = LabNode::start(&lab, "lb2", "10.77.0.12", &[(VIP_A, 51, 100, true)])?;
    wait_for("lb2 to be lb1's backup", Duration::from_secs(5), || {
        lb2.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb1".into())) && holder(&lab, VIP_A) == ["lb1"]
    })?;
    assert!(run_in(&lab.ns("cl"), || Ok(request(VIP_A)))?);

    // lb2 stops hearing VRRP; gossip still shows lb1 alive and master.
    iptables(&lab.ns("lb2"), "-A")?;
    let held = wait_for("the guard to engage", Duration::from_secs(2), || guard_holds(&lb2) >= 1)?;
    // It holds: lb2 stays backup, without the VIP, for a while.
    let hold_start = Instant::now();
    while hold_start.elapsed() < Duration::from_millis(1000) {
        assert_eq!(holder(&lab, VIP_A), ["lb1"], "lb2 took the VIP during the hold");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...but only for the bounded hold (2 s), then it takes over.
    let took = wait_for("lb2 to take over after the hold", Duration::from_secs(3), || {
        has_address(&lab.ns("lb2"), VIP_A)
    })?;
    eprintln!(
        "split: guard engaged {held:?} after the cut, lb2 took over {:?} after that",
        hold_start.elapsed() - Duration::from_millis(1000) + took
    );
    assert!(lb2.log().contains("split-brain guard"), "{}", lb2.log());

    // The split heals: lb2 hears lb1 again and lets go; lb1 re-announces,
    // so the client ends on lb1.
    iptables(&lab.ns("lb2"), "-D")?;
    wait_for("one master again", Duration::from_secs(2), || {
        holder(&lab, VIP_A) == ["lb1"]
    })?;
    let lb1_mac = mac(&lab.ns("lb1"))?;
    wait_for("the client to point at lb1", Duration::from_secs(2), || {
        neighbour(&lab.ns("cl"), VIP_A).as_deref() == Some(lb1_mac.as_str())
    })?;
    assert!(run_in(&lab.ns("cl"), || Ok(request(VIP_A)))?);
    assert_eq!(lb1.vip(VIP_A)?.0, "master");
    wait_for("lb2 backup", Duration::from_secs(2), || {
        lb2.vip(VIP_A).is_ok_and(|v| v == ("backup".into(), "lb1".into()))
    })?;
    Ok(())
}

/// keepalived (VRRPv3, 100 ms adverts) and Shoal in one group: each
/// understands the other's adverts.
#[test]
fn interoperates_with_keepalived() -> Result<()> {
    let Some((mut lab, _backend)) = lab("interoperates_with_keepalived")? else {
        return Ok(());
    };
    let Ok(keepalived) = which("keepalived") else {
        // cluster-tests/run-all.sh installs it when it runs as root.
        bail!("keepalived is needed (apt-get install keepalived)");
    };
    lab.host("ka", "10.77.0.13/24")?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("keepalived.conf");
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI {{\n  state BACKUP\n  interface eth0\n  \
             virtual_router_id 51\n  priority 100\n  advert_int 0.1\n  virtual_ipaddress {{\n    {VIP_A}/24\n  }}\n}}\n"
        ),
    )?;
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let log = File::create(dir.path().join("keepalived.log"))?;
    let _ka = Proc(lab.spawn(
        "ka",
        &keepalived,
        &[
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "-f",
            &p("keepalived.conf"),
            "-p",
            &p("k.pid"),
            "-r",
            &p("v.pid"),
        ],
        Some(log),
    )?);
    let ka_log = || std::fs::read_to_string(dir.path().join("keepalived.log")).unwrap_or_default();
    wait_for("keepalived to become master", Duration::from_secs(10), || {
        has_address(&lab.ns("ka"), VIP_A)
    })
    .with_context(ka_log)?;

    // Shoal at a lower priority hears keepalived and stays backup.
    let lb1 = LabNode::start(&lab, "lb1", "10.77.0.11", &[(VIP_A, 51, 50, true)])?;
    wait_for("Shoal to see keepalived as master", Duration::from_secs(3), || {
        lb1.vip(VIP_A)
            .is_ok_and(|v| v == ("backup".into(), "10.77.0.13".into()))
    })
    .with_context(|| lb1.log())?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        assert!(
            !has_address(&lab.ns("lb1"), VIP_A),
            "Shoal took the VIP from a higher keepalived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Shoal at a higher priority preempts: keepalived understands its
    // adverts and lets go.
    let lb2 = LabNode::start(&lab, "lb2", "10.77.0.12", &[(VIP_A, 51, 150, true)])?;
    wait_for("keepalived to yield to Shoal", Duration::from_secs(3), || {
        has_address(&lab.ns("lb2"), VIP_A) && !has_address(&lab.ns("ka"), VIP_A)
    })
    .with_context(|| format!("keepalived:\n{}\nlb2:\n{}", ka_log(), lb2.log()))?;
    wait_for("keepalived to stay backup", Duration::from_secs(1), || {
        ka_log().contains("Entering BACKUP STATE")
    })?;
    assert!(run_in(&lab.ns("cl"), || Ok(request(VIP_A)))?);
    Ok(())
}
