//! TOML fragments for node configs in tests.

use std::net::SocketAddr;

/// The `[node]` table. `extra` is appended inside it.
pub fn node(admin: SocketAddr, extra: &str) -> String {
    format!("[node]\nid = \"lb1\"\nadmin_addr = \"{admin}\"\n{extra}\n\n")
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
