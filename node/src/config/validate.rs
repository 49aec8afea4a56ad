//! Semantic checks that serde cannot express: ranges, references between
//! sections, uniqueness, and files that must exist. Every problem is reported
//! with the key path it concerns, and all problems are reported at once.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::addr::HostPort;
use super::schema::*;
use super::source::KeyPath;

/// One thing wrong with a config, at a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: KeyPath,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }

    fn check(&mut self, ok: bool, path: impl FnOnce() -> KeyPath, message: impl FnOnce() -> String) {
        if !ok {
            self.add(path(), message());
        }
    }
}

/// Validates `config`; relative file paths in it are checked against `base_dir`.
pub fn validate(config: &Config, base_dir: &Path) -> Vec<Problem> {
    let mut p = Problems::default();
    let root = KeyPath::root();
    validate_node(&config.node, &root.key("node"), base_dir, &mut p);
    if let Some(cluster) = &config.cluster {
        validate_cluster(cluster, config.node.id.as_str(), &root.key("cluster"), base_dir, &mut p);
    }
    validate_vips(&config.vips, &root, &mut p);
    validate_pools(&config.pools, &root, &mut p);
    validate_listeners(config, &root, base_dir, &mut p);

    p.0
}

/// Names that appear in URLs and metrics labels: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const NAME_RULE: &str = "1-64 characters of A-Z, a-z, 0-9, '-', '_', '.'";

fn validate_node(node: &NodeConfig, path: &KeyPath, base_dir: &Path, p: &mut Problems) {
    if let Some(token) = &node.admin_token_file {
        let full = base_dir.join(token);
        match std::fs::read_to_string(&full) {
            Ok(t) if t.trim().is_empty() => {
                p.add(path.key("admin_token_file"), format!("{} is empty", full.display()));
            }
            Ok(_) => {}
            Err(e) => p.add(
                path.key("admin_token_file"),
                format!("cannot read {}: {e}", full.display()),
            ),
        }
    }
    p.check(
        node.admin_addr.port() != 0,
        || path.key("admin_addr"),
        || "admin_addr needs a fixed port, not 0".into(),
    );
    if let Some(workers) = node.workers {
        p.check(
            (1..=1024).contains(&workers),
            || path.key("workers"),
            || format!("workers must be between 1 and 1024, got {workers}"),
        );
    }
}

fn validate_cluster(c: &ClusterConfig, node_id: &str, path: &KeyPath, base_dir: &Path, p: &mut Problems) {
    p.check(
        shoal_proto::NodeId::new(c.name.clone()).is_ok(),
        || path.key("name"),
        || {
            format!(
                "cluster name {:?} must be 1-63 characters of a-z, 0-9, '-', '_', starting with a letter",
                c.name
            )
        },
    );
    for (key, addr) in [("gossip_addr", c.gossip_addr), ("replication_addr", c.replication_addr)] {
        p.check(
            !addr.ip().is_unspecified() && addr.port() != 0,
            || path.key(key),
            || format!("{key} {addr} must be an address peers can reach (not 0.0.0.0 or port 0)"),
        );
    }
    p.check(
        c.gossip_addr != c.replication_addr,
        || path.key("replication_addr"),
        || "replication_addr must differ from gossip_addr (both are UDP)".into(),
    );
    for (i, seed) in c.seeds.iter().enumerate() {
        p.check(
            !seed.ip().is_unspecified() && seed.port() != 0,
            || path.key("seeds").index(i),
            || format!("seed {seed} is not a reachable address"),
        );
    }
    if let Some(tls) = &c.tls {
        let tls_path = path.key("tls");
        let readable = [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)]
            .into_iter()
            .filter(|(key, file)| check_file(file, base_dir, tls_path.key(key), p))
            .count();
        if readable == 3 {
            let [ca, cert, key] = [&tls.ca, &tls.cert, &tls.key].map(|f| base_dir.join(f));
            if let Err(e) = crate::tls::check_cluster_identity(&ca, &cert, &key, node_id) {
                p.add(tls_path.key(e.file), e.error.to_string());
            }
        }
    }
    if let Some(key_file) = &c.gossip_key_file {
        let full = base_dir.join(key_file);
        if let Err(e) = crate::cluster::auth::GossipKey::load(&full) {
            p.add(path.key("gossip_key_file"), e.to_string());
        }
    }
    p.check(
        (Duration::from_millis(10)..=Duration::from_secs(10)).contains(&c.gossip_interval.get()),
        || path.key("gossip_interval"),
        || {
            format!(
                "gossip_interval must be between 10ms and 10s, got {}",
                c.gossip_interval
            )
        },
    );
}

/// Whether `file` can be opened; if not, says so at `path`.
fn check_file(file: &Path, base_dir: &Path, path: KeyPath, p: &mut Problems) -> bool {
    let full = base_dir.join(file);
    match std::fs::File::open(&full) {
        Ok(_) => true,
        Err(e) => {
            p.add(path, format!("cannot read {}: {e}", full.display()));
            false
        }
    }
}

fn validate_vips(vips: &[VipConfig], root: &KeyPath, p: &mut Problems) {
    let mut seen_vrid = HashSet::new();
    let mut seen_addr = HashSet::new();
    for (i, vip) in vips.iter().enumerate() {
        let path = root.key("vip").index(i);
        let iface = &vip.interface;
        p.check(
            !iface.is_empty()
                && iface.len() <= 15
                && !iface.contains(|c: char| c == '/' || c.is_whitespace() || c == ':'),
            || path.key("interface"),
            || format!("interface {iface:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"),
        );
        if let Err(e) = shoal_vip::limits::validate_vrid(vip.vrid) {
            p.add(path.key("vrid"), e.to_string());
        }
        if let Err(e) = shoal_vip::Priority::new(vip.priority) {
            p.add(path.key("priority"), e.to_string());
        }
        p.check(
            !vip.address.addr.is_unspecified()
                && !vip.address.addr.is_multicast()
                && !vip.address.addr.is_loopback()
                && !matches!(vip.address.addr, IpAddr::V6(a) if a.is_unicast_link_local()),
            || path.key("address"),
            || {
                format!(
                    "VIP {} must be a unicast address, not unspecified, multicast, loopback or IPv6 link-local",
                    vip.address.addr
                )
            },
        );
        p.check(
            vip.health_penalty <= 253,
            || path.key("health_penalty"),
            || format!("health_penalty must be between 0 and 253, got {}", vip.health_penalty),
        );
        p.check(
            vip.split_brain_hold.get() <= Duration::from_secs(60),
            || path.key("split_brain_hold"),
            || "split_brain_hold must be at most 60s".into(),
        );
        if let Err(e) = shoal_vip::AdvertInterval::from_duration(vip.advert_interval.get()) {
            p.add(path.key("advert_interval"), e.to_string());
        }
        p.check(
            vip.preempt_delay.get() <= Duration::from_secs(3600),
            || path.key("preempt_delay"),
            || "preempt_delay must be at most 1h".into(),
        );
        p.check(
            (1..=100).contains(&vip.garp_repeat),
            || path.key("garp_repeat"),
            || format!("garp_repeat must be between 1 and 100, got {}", vip.garp_repeat),
        );
        if let Some(refresh) = vip.garp_refresh {
            p.check(
                refresh.get() >= Duration::from_secs(1),
                || path.key("garp_refresh"),
                || "garp_refresh must be at least 1s".into(),
            );
        }
        for (j, peer) in vip.unicast_peers.iter().enumerate() {
            p.check(
                !peer.is_unspecified() && !peer.is_multicast() && peer.is_ipv4() == vip.address.addr.is_ipv4(),
                || path.key("unicast_peers").index(j),
                || format!("unicast peer {peer} must be a unicast address of the VIP's family"),
            );
        }
        // IPv4 and IPv6 virtual routers are separate even with one VRID
        // (RFC 5798 §5.2.3).
        if !seen_vrid.insert((iface.clone(), vip.address.addr.is_ipv4(), vip.vrid)) {
            p.add(
                path.key("vrid"),
                format!(
                    "vrid {} is used twice for {} on interface {iface}",
                    vip.vrid,
                    if vip.address.addr.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            );
        }
        if !seen_addr.insert(vip.address.addr) {
            p.add(
                path.key("address"),
                format!("VIP {} is configured twice", vip.address.addr),
            );
        }
    }
}

fn validate_pools(pools: &[PoolConfig], root: &KeyPath, p: &mut Problems) {
    let mut names = HashSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let path = root.key("pool").index(i);
        p.check(
            valid_name(&pool.name),
            || path.key("name"),
            || format!("pool name {:?} must be {NAME_RULE}", pool.name),
        );
        if !names.insert(pool.name.as_str()) {
            p.add(path.key("name"), format!("pool name {:?} is used twice", pool.name));
        }
        p.check(
            pool.retries <= 10,
            || path.key("retries"),
            || format!("retries must be between 0 and 10, got {}", pool.retries),
        );
        positive(pool.connect_timeout.get(), path.key("connect_timeout"), p);
        positive(pool.response_timeout.get(), path.key("response_timeout"), p);
        positive(pool.keepalive_timeout.get(), path.key("keepalive_timeout"), p);
        if let Some(h) = &pool.health {
            validate_health(h, &path.key("health"), p);
        }
        if let Some(s) = &pool.sticky {
            validate_sticky(s, &path.key("sticky"), p);
        }
        let budget = &pool.retry_budget;
        p.check(
            budget.percent <= 100,
            || path.key("retry_budget").key("percent"),
            || format!("percent must be between 0 and 100, got {}", budget.percent),
        );
        p.check(
            budget.min_retries <= 10_000,
            || path.key("retry_budget").key("min_retries"),
            || format!("min_retries must be at most 10000, got {}", budget.min_retries),
        );
        if let Some(max) = pool.max_connections {
            p.check(
                max >= 1,
                || path.key("max_connections"),
                || "max_connections must be at least 1 (omit it for no limit)".into(),
            );
        }
        p.check(
            pool.max_pending <= 1_000_000,
            || path.key("max_pending"),
            || format!("max_pending must be at most 1000000, got {}", pool.max_pending),
        );
        p.check(
            pool.max_pending == 0 || pool.max_connections.is_some(),
            || path.key("max_pending"),
            || "max_pending only applies with max_connections".into(),
        );
        if let Some(ramp) = pool.slow_start {
            p.check(
                !ramp.is_zero() && ramp.get() <= Duration::from_secs(3600),
                || path.key("slow_start"),
                || format!("slow_start must be between 1ms and 1h, got {ramp}"),
            );
        }
        if let Some(o) = &pool.outlier {
            let op = path.key("outlier");
            p.check(
                o.consecutive_failures >= 1,
                || op.key("consecutive_failures"),
                || "consecutive_failures must be at least 1".into(),
            );
            positive(o.base_ejection.get(), op.key("base_ejection"), p);
            p.check(
                o.max_ejection >= o.base_ejection,
                || op.key("max_ejection"),
                || {
                    format!(
                        "max_ejection ({}) must be at least base_ejection ({})",
                        o.max_ejection, o.base_ejection
                    )
                },
            );

            p.check(
                o.max_ejection_percent <= 100,
                || op.key("max_ejection_percent"),
                || {
                    format!(
                        "max_ejection_percent must be between 0 and 100, got {}",
                        o.max_ejection_percent
                    )
                },
            );
        }
        validate_backends(pool, &path, p);
    }
}

fn positive(d: Duration, path: KeyPath, p: &mut Problems) {
    p.check(
        !d.is_zero(),
        || path.clone(),
        || format!("{path} must be greater than 0"),
    );
}

fn validate_health(h: &HealthConfig, path: &KeyPath, p: &mut Problems) {
    p.check(
        h.interval.get() >= Duration::from_millis(10),
        || path.key("interval"),
        || format!("interval must be at least 10ms, got {}", h.interval),
    );
    positive(h.timeout.get(), path.key("timeout"), p);
    p.check(
        h.timeout <= h.interval,
        || path.key("timeout"),
        || format!("timeout ({}) must not exceed interval ({})", h.timeout, h.interval),
    );
    for (key, v) in [("rise", h.rise), ("fall", h.fall)] {
        p.check(
            (1..=100).contains(&v),
            || path.key(key),
            || format!("{key} must be between 1 and 100, got {v}"),
        );
    }
    p.check(
        h.path.starts_with('/') && h.path.parse::<http::uri::PathAndQuery>().is_ok(),
        || path.key("path"),
        || format!("path {:?} must be an absolute URI path such as \"/health\"", h.path),
    );
    if let Some(host) = &h.host {
        p.check(
            http::HeaderValue::from_str(host).is_ok() && !host.is_empty(),
            || path.key("host"),
            || format!("host {host:?} is not a valid Host header value"),
        );
    }
}

fn validate_sticky(s: &StickyConfig, path: &KeyPath, p: &mut Problems) {
    let needs_cookie = matches!(s.mode, StickyMode::InsertCookie | StickyMode::LearnCookie);
    match (&s.cookie, needs_cookie) {
        (None, true) => p.add(path.key("cookie"), "this sticky mode needs `cookie` (the cookie name)"),
        (Some(c), true) if !valid_cookie_name(c) => {
            p.add(path.key("cookie"), format!("{c:?} is not a valid cookie name"));
        }
        (Some(_), false) => p.add(
            path.key("cookie"),
            "`cookie` is only used by insert_cookie and learn_cookie",
        ),
        _ => {}
    }
    let needs_header = s.mode == StickyMode::Header;
    match (&s.header, needs_header) {
        (None, true) => p.add(
            path.key("header"),
            "sticky mode \"header\" needs `header` (the header name)",
        ),
        (Some(h), true) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
            p.add(path.key("header"), format!("{h:?} is not a valid header name"));
        }
        (Some(_), false) => p.add(path.key("header"), "`header` is only used by sticky mode \"header\""),
        _ => {}
    }
    positive(s.ttl.get(), path.key("ttl"), p);
    p.check(
        (1..=100_000_000).contains(&s.max_entries),
        || path.key("max_entries"),
        || format!("max_entries must be between 1 and 100000000, got {}", s.max_entries),
    );
}

fn validate_backends(pool: &PoolConfig, path: &KeyPath, p: &mut Problems) {
    if !pool.backends.iter().any(|b| !b.backup) {
        p.add(
            path.key("backend"),
            format!(
                "pool {:?} needs at least one [[pool.backend]] that is not a backup",
                pool.name
            ),
        );
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (j, b) in pool.backends.iter().enumerate() {
        let bp = path.key("backend").index(j);
        p.check(
            valid_name(&b.name),
            || bp.key("name"),
            || format!("backend name {:?} must be {NAME_RULE}", b.name),
        );
        if !names.insert(b.name.as_str()) {
            p.add(
                bp.key("name"),
                format!("backend name {:?} is used twice in pool {:?}", b.name, pool.name),
            );
        }
        if !addrs.insert(&b.address) {
            p.add(
                bp.key("address"),
                format!("address {} is used twice in pool {:?}", b.address, pool.name),
            );
        }
        if let HostPort::Ip(addr) = &b.address {
            p.check(
                !addr.ip().is_unspecified() && !addr.ip().is_multicast(),
                || bp.key("address"),
                || format!("backend address {addr} is not a unicast address"),
            );
        }
        p.check(
            (1..=MAX_WEIGHT).contains(&b.weight),
            || bp.key("weight"),
            || format!("weight must be between 1 and {MAX_WEIGHT}, got {}", b.weight),
        );
    }
}

fn validate_route(r: &RouteConfig, path: &KeyPath, pools: &HashMap<&str, &PoolConfig>, p: &mut Problems) {
    if r.host.is_none() && r.path_prefix.is_none() && r.header.is_none() {
        p.add(path.clone(), "a route needs at least one of host, path_prefix, header");
    }
    if let Some(host) = &r.host {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        p.check(
            !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
            || path.key("host"),
            || format!("host {host:?} must be a host name, optionally starting with \"*.\" (no port)"),
        );
    }
    if let Some(prefix) = &r.path_prefix {
        p.check(
            prefix.starts_with('/') && http::HeaderValue::from_str(prefix).is_ok(),
            || path.key("path_prefix"),
            || format!("path_prefix {prefix:?} must start with '/'"),
        );
    }
    if let Some(h) = &r.header {
        p.check(
            http::HeaderName::from_bytes(h.name.as_bytes()).is_ok(),
            || path.key("header").key("name"),
            || format!("{:?} is not a valid header name", h.name),
        );
        p.check(
            http::HeaderValue::from_str(&h.value).is_ok(),
            || path.key("header").key("value"),
            || format!("{:?} is not a valid header value", h.value),
        );
    }
    if !pools.contains_key(r.pool.as_str()) {
        p.add(
            path.key("pool"),
            format!("route uses pool {:?}, which is not defined", r.pool),
        );
    }
}

fn validate_listeners(config: &Config, root: &KeyPath, base_dir: &Path, p: &mut Problems) {
    let pools: HashMap<&str, &PoolConfig> = config.pools.iter().map(|pl| (pl.name.as_str(), pl)).collect();
    let mut names = HashSet::new();
    let mut binds: HashMap<SocketAddr, &str> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let path = root.key("listener").index(i);
        p.check(
            valid_name(&l.name),
            || path.key("name"),
            || format!("listener name {:?} must be {NAME_RULE}", l.name),
        );
        if !names.insert(l.name.as_str()) {
            p.add(path.key("name"), format!("listener name {:?} is used twice", l.name));
        }
        p.check(
            l.bind.port() != 0,
            || path.key("bind"),
            || "bind needs a fixed port, not 0".into(),
        );
        if let Some(other) = binds.insert(l.bind, &l.name) {
            p.add(
                path.key("bind"),
                format!("{} is already bound by listener {other:?}", l.bind),
            );
        }
        if l.bind == config.node.admin_addr {
            p.add(path.key("bind"), format!("{} is the node's admin_addr", l.bind));
        }
        positive(l.idle_timeout().get(), path.key("idle_timeout"), p);
        positive(l.header_timeout().get(), path.key("header_timeout"), p);
        if l.protocol != Protocol::Http {
            for (set, key) in [
                (l.max_header_bytes.is_some(), "max_header_bytes"),
                (l.max_body_bytes.is_some(), "max_body_bytes"),
                (l.header_timeout.is_some(), "header_timeout"),
            ] {
                p.check(
                    !set,
                    || path.key(key),
                    || format!("{key} is only available on http listeners"),
                );
            }
        }
        p.check(
            MAX_HEADER_BYTES_RANGE.contains(&l.max_header_bytes()),
            || path.key("max_header_bytes"),
            || {
                format!(
                    "max_header_bytes must be between {} and {}, got {}",
                    MAX_HEADER_BYTES_RANGE.start(),
                    MAX_HEADER_BYTES_RANGE.end(),
                    l.max_header_bytes()
                )
            },
        );
        p.check(
            (1..=10_000_000).contains(&l.max_connections()),
            || path.key("max_connections"),
            || {
                format!(
                    "max_connections must be between 1 and 10000000, got {}",
                    l.max_connections()
                )
            },
        );
        p.check(
            l.max_body_bytes.is_none_or(|n| n > 0),
            || path.key("max_body_bytes"),
            || "max_body_bytes must be greater than 0".into(),
        );
        if let Some(tls) = &l.tls {
            let tp = path.key("tls");
            if l.protocol != Protocol::Http {
                p.add(tp.clone(), "TLS termination is only available on http listeners");
            }
            let (cert, key) = (base_dir.join(&tls.cert), base_dir.join(&tls.key));
            if let Err(e) = crate::tls::load_certified_key(&cert, &key) {
                let which = match e {
                    crate::tls::TlsError::Key { .. } => "key",
                    _ => "cert",
                };
                p.add(tp.key(which), e.to_string());
            }
        }
        if let Some(rl) = &l.rate_limit {
            let rp = path.key("rate_limit");
            p.check(
                rl.requests_per_second.is_finite() && (0.001..=1e6).contains(&rl.requests_per_second),
                || rp.key("requests_per_second"),
                || {
                    format!(
                        "requests_per_second must be between 0.001 and 1000000, got {}",
                        rl.requests_per_second
                    )
                },
            );
            p.check(
                (1..=1_000_000).contains(&rl.burst),
                || rp.key("burst"),
                || format!("burst must be between 1 and 1000000, got {}", rl.burst),
            );
            p.check(
                (1..=10_000_000).contains(&rl.max_clients),
                || rp.key("max_clients"),
                || format!("max_clients must be between 1 and 10000000, got {}", rl.max_clients),
            );
        }
        if !l.routes.is_empty() && l.protocol != Protocol::Http {
            p.add(path.key("route"), "routes are only available on http listeners");
        }
        for (j, r) in l.routes.iter().enumerate() {
            validate_route(r, &path.key("route").index(j), &pools, p);
        }

        let Some(pool) = pools.get(l.pool.as_str()) else {
            p.add(
                path.key("pool"),
                format!("listener {:?} uses pool {:?}, which is not defined", l.name, l.pool),
            );
            continue;
        };
        if l.protocol == Protocol::Tcp {
            if pool.algorithm.uses_hash_key() && !pool.hash_key.works_for_tcp() {
                p.add(
                    path.key("pool"),
                    format!(
                        "tcp listener {:?} uses pool {:?}, whose hash_key {} needs HTTP; use \"client_ip\"",
                        l.name, pool.name, pool.hash_key
                    ),
                );
            }
            if let Some(s) = &pool.sticky
                && s.mode != StickyMode::SourceIp
            {
                p.add(
                    path.key("pool"),
                    format!(
                        "tcp listener {:?} uses pool {:?}, whose sticky mode needs HTTP; use \"source_ip\"",
                        l.name, pool.name
                    ),
                );
            }
        }
    }
}
