//! What a node publishes in gossip, and how: short keys, compact values.
//! Pool and backend names are restricted to `A-Z a-z 0-9 - _ .`, so the
//! separators below are unambiguous.

pub const ADMIN: &str = "admin";
pub const REPLICATION: &str = "repl";
pub const FINGERPRINT: &str = "fp";
/// Set just before a graceful leave: peers stop counting the node at once.
pub const LEAVING: &str = "leaving";
const BACKEND_PREFIX: &str = "b:";
const VIP_PREFIX: &str = "v:";

/// `v:ADDRESS` (the VIP's IP).
pub fn vip_key(address: &str) -> String {
    format!("{VIP_PREFIX}{address}")
}

pub fn parse_vip_key(key: &str) -> Option<&str> {
    key.strip_prefix(VIP_PREFIX)
}

/// `STATE:PRIORITY`.
pub fn vip_value(state: &str, priority: u8) -> String {
    format!("{state}:{priority}")
}

pub fn parse_vip_value(value: &str) -> Option<(&str, u8)> {
    let (s, p) = value.split_once(':')?;
    matches!(s, "init" | "backup" | "master" | "fault")
        .then_some(())
        .and(p.parse().ok().map(|p| (s, p)))
}

/// `b:POOL/BACKEND`.
pub fn backend_key(pool: &str, backend: &str) -> String {
    format!("{BACKEND_PREFIX}{pool}/{backend}")
}

/// (pool, backend) of a backend key.
pub fn parse_backend_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(BACKEND_PREFIX)?.split_once('/')
}

/// `H:N`: health verdict (1/0) and active connections.
pub fn backend_value(healthy: bool, active: u64) -> String {
    format!("{}:{active}", u8::from(healthy))
}

/// Largest connection count believed from a peer: beyond it a value is a
/// bug or a lie, and summing such values must not overflow.
pub const MAX_PEER_CONNECTIONS: u64 = 100_000_000;

pub fn parse_backend_value(value: &str) -> Option<(bool, u64)> {
    let (h, n) = value.split_once(':')?;
    let healthy = match h {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let n: u64 = n.parse().ok()?;
    Some((healthy, n.min(MAX_PEER_CONNECTIONS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let k = backend_key("web", "web-1");
        assert_eq!(k, "b:web/web-1");
        assert_eq!(parse_backend_key(&k), Some(("web", "web-1")));
        assert_eq!(parse_backend_key("admin"), None);
        assert_eq!(parse_backend_value(&backend_value(true, 12)), Some((true, 12)));
        assert_eq!(parse_backend_value(&backend_value(false, 0)), Some((false, 0)));
        assert_eq!(
            parse_backend_value("1:18446744073709551615"),
            Some((true, MAX_PEER_CONNECTIONS))
        );
        for bad in ["", "1", "2:3", "1:-4", "1:x", ":"] {
            assert_eq!(parse_backend_value(bad), None, "{bad:?}");
        }
    }
}
