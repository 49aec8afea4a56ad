//! TOML fragments for node configs in tests.

use std::net::SocketAddr;

/// The `[node]` table of node "lb1". `extra` is appended inside it.
pub fn node(admin: SocketAddr, extra: &str) -> String {
    node_named("lb1", admin, extra)
}

/// The `[node]` table of node `id`.
pub fn node_named(id: &str, admin: SocketAddr, extra: &str) -> String {
    format!("[node]\nid = \"{id}\"\nadmin_addr = \"{admin}\"\n{extra}\n\n")
}

/// A `[cluster]` table named "edge".
pub fn cluster(
    gossip: SocketAddr,
    replication: SocketAddr,
    seeds: &[SocketAddr],
    key: Option<&std::path::Path>,
) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let key = key.map_or(String::new(), |k| format!("gossip_key_file = \"{}\"\n", k.display()));
    format!(
        "[cluster]\nname = \"edge\"\ngossip_addr = \"{gossip}\"\nreplication_addr = \"{replication}\"\nseeds = [{}]\n{key}\n",
        seeds.join(", ")
    )
}

/// A `[[listener]]`; `extra` lines (e.g. `idle_timeout = "1s"`, or
/// `[[listener.route]]` tables) follow the required keys.
pub fn listener(name: &str, bind: SocketAddr, protocol: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\nprotocol = \"{protocol}\"\npool = \"{pool}\"\n{extra}\n\n"
    )
}

/// A `[[pool]]` with its backends (name, address).
pub fn pool(name: &str, extra: &str, backends: &[(&str, SocketAddr)]) -> String {
    let mut s = format!("[[pool]]\nname = \"{name}\"\n{extra}\n\n");
    for (b, addr) in backends {
        s.push_str(&format!("[[pool.backend]]\nname = \"{b}\"\naddress = \"{addr}\"\n\n"));
    }
    s
}

/// A loopback address on a reserved free port.
pub fn local() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], crate::free_port()?)))
}
