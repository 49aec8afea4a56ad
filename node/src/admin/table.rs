//! `shoal status` without `--json`: the `/status` document as tables for a
//! terminal. Works on the JSON, so it renders whatever node answered.

use std::fmt::Write;

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, &header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(out, r);
    }
}

pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let node = &status["node"];
    let _ = write!(
        out,
        "node {} (shoal {}), up {}s",
        s(&node["id"]),
        s(&node["version"]),
        s(&node["uptime_s"])
    );
    match status.get("cluster") {
        Some(c) if !c.is_null() => {
            let _ = writeln!(
                out,
                ", cluster {:?}, {} peer(s) alive, config {}",
                s(&c["name"]),
                s(&c["peers_alive"]),
                s(&c["config_fingerprint"])
            );
        }
        _ => out.push_str(", standalone\n"),
    }
    let me = s(&node["id"]);
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    if !peers.is_empty() {
        out.push_str("\nPEERS\n");
        let rows: Vec<Vec<String>> = peers
            .iter()
            .map(|p| {
                let state = if p["left"] == true {
                    "left".to_string()
                } else {
                    s(&p["state"])
                };
                vec![
                    s(&p["id"]),
                    state,
                    s(&p["gossip_addr"]),
                    format!("{}ms", s(&p["last_seen_ms"])),
                    s(&p["admin_addr"]),
                    if p["config_matches"] == true {
                        "same".into()
                    } else {
                        "DIFFERENT".into()
                    },
                ]
            })
            .collect();
        table(
            &mut out,
            &["ID", "STATE", "GOSSIP", "LAST SEEN", "ADMIN", "CONFIG"],
            &rows,
        );
    }
    let vips = status["vips"].as_array().cloned().unwrap_or_default();
    if !vips.is_empty() {
        out.push_str("\nVIPS\n");
        let rows: Vec<Vec<String>> = vips
            .iter()
            .map(|v| {
                let mut state = s(&v["state"]);
                if v["preemption_held"] == true && state == "backup" {
                    state.push_str(" (syncing)");
                }
                vec![
                    s(&v["address"]),
                    s(&v["vrid"]),
                    state,
                    s(&v["priority"]),
                    s(&v["master"]),
                ]
            })
            .collect();
        table(&mut out, &["ADDRESS", "VRID", "STATE", "PRIORITY", "MASTER"], &rows);
    }
    // Health columns: this node first, then peers by name.
    let mut nodes = vec![me.clone()];
    nodes.extend(peers.iter().map(|p| s(&p["id"])).filter(|id| *id != me));
    for pool in status["pools"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(out, "\nPOOL {} ({})", s(&pool["name"]), s(&pool["algorithm"]));
        let mut header: Vec<String> = ["BACKEND", "ADDRESS", "STATE", "ACTIVE", "CLUSTER"]
            .map(String::from)
            .to_vec();
        header.extend(nodes.iter().map(|n| format!("@{n}")));
        let rows: Vec<Vec<String>> = pool["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| {
                let mut state = s(&b["state"]);
                if b["ejected"] == true {
                    state.push_str(",ejected");
                }
                let mut row = vec![
                    s(&b["name"]),
                    s(&b["address"]),
                    state,
                    s(&b["active_connections"]),
                    s(&b["cluster_connections"]),
                ];
                row.extend(nodes.iter().map(|n| match b["health_by_node"].get(n) {
                    Some(Value::Bool(true)) => "up".to_string(),
                    Some(Value::Bool(false)) => "DOWN".to_string(),
                    _ => "-".to_string(),
                }));
                row
            })
            .collect();
        let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
        table(&mut out, &header_refs, &rows);
    }
    let warnings = status["cluster"]["warnings"].as_array().cloned().unwrap_or_default();
    if !warnings.is_empty() {
        out.push_str("\nWARNINGS\n");
        for w in warnings {
            let _ = writeln!(out, "  {}", s(&w));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_peers_and_the_health_matrix() {
        let status = serde_json::json!({
            "node": {"id": "lb1", "version": "0.1.0", "uptime_s": 5},
            "cluster": {"name": "edge", "peers_alive": 1, "config_fingerprint": "abc", "warnings": ["lb3 runs different pools"]},
            "peers": [
                {"id": "lb2", "state": "alive", "left": false, "gossip_addr": "10.0.0.2:7946", "last_seen_ms": 40, "admin_addr": "10.0.0.2:9901", "config_matches": true},
                {"id": "lb3", "state": "dead", "left": false, "gossip_addr": "10.0.0.3:7946", "last_seen_ms": 5000, "admin_addr": null, "config_matches": false}
            ],
            "vips": [],
            "pools": [{"name": "web", "algorithm": "least_conn", "backends": [
                {"name": "web-1", "address": "10.0.1.10:8080", "state": "ready", "ejected": false,
                 "active_connections": 3, "cluster_connections": 7, "health_by_node": {"lb1": true, "lb2": false}}
            ]}]
        });
        let text = render(&status);
        assert!(
            text.starts_with("node lb1 (shoal 0.1.0), up 5s, cluster \"edge\", 1 peer(s) alive"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("web-1"))
            .unwrap_or_default()
            .to_string();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            vec!["web-1", "10.0.1.10:8080", "ready", "3", "7", "up", "DOWN", "-"]
        );
        assert!(text.contains("@lb1") && text.contains("@lb3"));
        assert!(text.contains("DIFFERENT") && text.contains("lb3 runs different pools"));
    }
}
