//! IPv6 VIPs: VRRPv3 over IPv6 (ff02::12, link-local sources) between two
//! real nodes, unsolicited neighbour advertisements moving the client,
//! and an IPv4 VIP with the same VRID alongside (a separate router, RFC
//! 5798 §5.2.3). Needs root (skips loudly without).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_cluster_tests::netns::{ip, mac, neighbour, run_in, wait_for};
use shoal_cluster_tests::viplab::{
    BACKEND, LabNode, base_config, check_client_after_failover, client, holder, lab, request, vip, web_pool,
};

const VIP6: &str = "fd77::100";
const VIP4: &str = "10.77.0.100";

fn node(lab: &shoal_cluster_tests::netns::Lab, name: &str, ip4: &str, priority: u16) -> Result<LabNode> {
    // Listeners on [::]:80 are IPv6-only: the IPv4 VIP needs its own.
    let config = base_config(name, ip4, "", "[::]:80")
        + "[[listener]]\nname = \"web4\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\npool = \"web\"\n\n"
        + &web_pool("", &[("b1", BACKEND)])
        + &vip(&format!("{VIP6}/64"), 61, priority, true, "")
        + &vip(&format!("{VIP4}/24"), 61, priority, true, "");
    LabNode::start_config(lab, name, ip4, &config)
}

#[test]
fn ipv6_vip_fails_over_with_neighbour_advertisements() -> Result<()> {
    let Some((lab, _backend)) = lab("ipv6_vip_fails_over_with_neighbour_advertisements")? else {
        return Ok(());
    };
    for (host, addr) in [("lb1", "fd77::11/64"), ("cl", "fd77::30/64")] {
        lab.add_address(host, addr)?;
    }
    let lb1 = node(&lab, "lb1", "10.77.0.11", 150)?;
    // lb2 starts with IPv6 off on eth0, so without a link-local address
    // to advertise from: the IPv6 router waits in fault (the IPv4 one
    // works), and picks the address up when IPv6 comes on.
    let ipv6_on_lb2 = |on: bool| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("lb2"), "sh", "-c"])
            .arg(format!(
                "echo {} > /proc/sys/net/ipv6/conf/eth0/disable_ipv6",
                u8::from(!on)
            ))
            .status()
            .context("toggling IPv6")
    };
    ipv6_on_lb2(false)?;
    let lb2 = node(&lab, "lb2", "10.77.0.12", 100)?;
    wait_for("lb2: IPv6 router in fault, IPv4 backup", Duration::from_secs(5), || {
        lb2.vip(VIP6).is_ok_and(|v| v.0 == "fault") && lb2.vip(VIP4).is_ok_and(|v| v.0 == "backup")
    })
    .with_context(|| format!("lb2: {:?}\n{}", lb2.status().map(|s| s["vips"].clone()), lb2.log()))?;
    ipv6_on_lb2(true)?;
    wait_for("lb1 to hold both VIPs", Duration::from_secs(5), || {
        holder(&lab, VIP6) == ["lb1"] && holder(&lab, VIP4) == ["lb1"]
    })
    .with_context(|| format!("lb1:\n{}\nlb2:\n{}", lb1.log(), lb2.log()))?;
    wait_for("lb2 to follow lb1 for both", Duration::from_secs(5), || {
        [VIP6, VIP4]
            .iter()
            .all(|v| lb2.vip(v).is_ok_and(|s| s == ("backup".into(), "lb1".into())))
    })
    .with_context(|| format!("lb2: {:?}", lb2.status().map(|s| s["vips"].clone())))?;
    // The IPv6 router's adverts come from lb1's link-local address.
    let master_ip = lb2.vip_status(VIP6)?["master_ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(master_ip.starts_with("fe80::"), "master_ip {master_ip}");
    assert_eq!(holder(&lab, VIP6), ["lb1"]);

    let stop = Arc::new(AtomicBool::new(false));
    let cl = client(lab.ns("cl"), VIP6, Arc::clone(&stop));
    wait_for("the client to reach the IPv6 VIP", Duration::from_secs(5), || {
        neighbour(&lab.ns("cl"), VIP6).is_some()
    })?;
    let lb1_mac = mac(&lab.ns("lb1"))?;
    wait_for("the client's neighbour entry to be lb1", Duration::from_secs(2), || {
        neighbour(&lab.ns("cl"), VIP6).as_deref() == Some(lb1_mac.as_str())
    })?;

    // Pull lb1's cable: lb2 takes both; its unsolicited neighbour
    // advertisement overrides the client's cached entry at once (without
    // it, the client would keep lb1's MAC until neighbour unreachability
    // detection, seconds later).
    ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "down"])?;
    let moved = wait_for("lb2 to take the IPv6 VIP", Duration::from_secs(5), || {
        holder(&lab, VIP6) == ["lb2"]
    })?;
    let lb2_mac = mac(&lab.ns("lb2"))?;
    wait_for(
        "the client's neighbour entry to point at lb2",
        Duration::from_millis(500),
        || neighbour(&lab.ns("cl"), VIP6).as_deref() == Some(lb2_mac.as_str()),
    )?;
    wait_for("lb2 to take the IPv4 VIP too", Duration::from_secs(2), || {
        holder(&lab, VIP4) == ["lb2"]
    })?;
    check_client_after_failover(&stop, cl, "IPv6 link loss", moved)?;
    assert_eq!(lb2.vip(VIP6)?, ("master".into(), "lb2".into()));
    assert!(run_in(&lab.ns("cl"), || Ok(request(VIP4)))?);

    // Cable back: lb1 preempts both.
    ip(&["-n", &lab.ns("lb1"), "link", "set", "eth0", "up"])?;
    wait_for("lb1 to preempt both", Duration::from_secs(5), || {
        holder(&lab, VIP6) == ["lb1"] && holder(&lab, VIP4) == ["lb1"]
    })?;
    wait_for("the client to follow lb1", Duration::from_secs(2), || {
        neighbour(&lab.ns("cl"), VIP6).as_deref() == Some(lb1_mac.as_str())
    })?;
    assert!(run_in(&lab.ns("cl"), || Ok(request(VIP6)))?);
    for n in [&lb1, &lb2] {
        assert!(!n.log().contains("panicked"), "{}", n.log());
    }
    Ok(())
}
