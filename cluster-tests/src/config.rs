//! TOML fragments for node configs in tests.

use std::net::SocketAddr;

/// The `[node]` table of node "lb1". `extra` is appended inside it.
pub fn node(admin: SocketAddr, extra: &str) -> String {
    node_named("lb1", admin, extra)
}

/// The `[node]` table of node `id`. Where `extra` does not set `io`,
/// SHOAL_TEST_IO (environment) does, if set: run-all.sh runs the suites
/// that leave `io` to its default (io_uring) once more on epoll, the
/// interface a node falls back to.
pub fn node_named(id: &str, admin: impl std::fmt::Display, extra: &str) -> String {
    node_table(id, admin, extra, std::env::var("SHOAL_TEST_IO").ok().as_deref())
}

/// The `[node]` table of node `id`, with `io = "TEST_IO"` added where
/// `extra` does not set `io`; `None` leaves `io` to the node's default
/// (as the tests of that default need, whatever SHOAL_TEST_IO says).
pub fn node_table(id: &str, admin: impl std::fmt::Display, extra: &str, test_io: Option<&str>) -> String {
    let io = match test_io {
        Some(io) if !extra.lines().any(|l| l.trim_start().starts_with("io ")) => format!("io = \"{io}\"\n"),
        _ => String::new(),
    };
    format!("[node]\nid = \"{id}\"\nadmin_addr = \"{admin}\"\n{io}{extra}\n\n")
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

#[cfg(test)]
mod tests {
    use super::node_table;

    #[test]
    fn the_test_io_applies_only_where_the_test_leaves_io_unset() {
        let unset = node_table("lb1", "127.0.0.1:1", "shutdown_timeout = \"1s\"", Some("epoll"));
        assert!(unset.contains("\nio = \"epoll\"\n"), "{unset}");
        let own = node_table("lb1", "127.0.0.1:1", "io = \"io_uring\"", Some("epoll"));
        assert_eq!(own.matches("io = ").count(), 1, "{own}");
        assert!(own.contains("io = \"io_uring\""), "{own}");
        let none = node_table("lb1", "127.0.0.1:1", "", None);
        assert!(!none.contains("io = "), "{none}");
    }
}
