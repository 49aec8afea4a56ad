use std::path::Path;
use std::time::Duration;

use super::*;

const FULL: &str = r#"
[node]
id = "lb1"
admin_addr = "127.0.0.1:9901"

[cluster]
name = "edge"
gossip_addr = "10.0.0.11:7946"
replication_addr = "10.0.0.11:7947"
seeds = ["10.0.0.12:7946"]

[[vip]]
address = "10.0.0.100/24"
interface = "eth0"
vrid = 51
priority = 150
advert_interval = "100ms"
preempt = true

[[listener]]
name = "web"
bind = "0.0.0.0:80"
protocol = "http"
pool = "web"

[[listener]]
name = "db"
bind = "0.0.0.0:5432"
protocol = "tcp"
pool = "db"

[[pool]]
name = "web"
algorithm = "least_conn"
sticky = { mode = "learn_cookie", cookie = "sid", ttl = "30m" }
health = { kind = "http", path = "/health", interval = "2s", timeout = "1s", rise = 2, fall = 3 }
outlier = { consecutive_failures = 5, base_ejection = "30s" }

[[pool.backend]]
name = "web-1"
address = "10.0.1.10:8080"
weight = 1

[[pool.backend]]
name = "web-2"
address = "backend2:8080"
weight = 3
backup = true

[[pool]]
name = "db"
algorithm = "maglev"

[[pool.backend]]
name = "db-1"
address = "10.0.2.10:5432"
"#;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, "test.toml", Path::new("."))
}

/// The single problem of an invalid config, as (line, key, message).
fn one_problem(text: &str) -> (Option<usize>, String, String) {
    match parse_str(text) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(e) => {
            let problems = e.problems();
            assert_eq!(problems.len(), 1, "expected one problem, got: {e}");
            let p = &problems[0];
            (p.at.map(|a| a.line), p.key.clone(), p.message.clone())
        }
    }
}

#[test]
fn full_example_parses_with_defaults() {
    let config = parse_str(FULL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.node.id.as_str(), "lb1");
    assert_eq!(config.listeners.len(), 2);
    let web = &config.pools[0];
    assert_eq!(web.algorithm, Algorithm::LeastConn);
    assert_eq!(web.retries, 2);
    assert_eq!(web.connect_timeout.get(), Duration::from_secs(3));
    assert_eq!(web.backends[1].weight, 3);
    assert!(web.backends[1].backup);
    assert_eq!(
        web.backends[1].address,
        HostPort::Name {
            host: "backend2".into(),
            port: 8080
        }
    );
    let health = web.health.as_ref().map(|h| (h.kind, h.rise, h.fall, h.interval.get()));
    assert_eq!(health, Some((HealthKind::Http, 2, 3, Duration::from_secs(2))));
    assert_eq!(config.vips[0].advert_interval.get(), Duration::from_millis(100));
    assert_eq!(config.listeners[1].idle_timeout().get(), Duration::from_secs(300));
    assert_eq!(config.pools[1].hash_key, HashKey::ClientIp);
}

const MINIMAL_HEAD: &str = "[node]\nid = \"lb1\"\n";

fn minimal_with(rest: &str) -> String {
    format!(
        "{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n{rest}"
    )
}

#[test]
fn unknown_key_is_named_with_line() {
    let text = minimal_with("colour = \"blue\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
    let (line, key, message) = one_problem(&text);
    assert_eq!(line, Some(11));
    assert!(key.starts_with("pool[0]"), "{key}");
    assert!(message.contains("unknown field `colour`"), "{message}");
}

#[test]
fn unknown_algorithm_lists_the_valid_ones() {
    let text = minimal_with("algorithm = \"fastest\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
    let (line, key, message) = one_problem(&text);
    assert_eq!(line, Some(11));
    assert_eq!(key, "pool[0].algorithm");
    assert!(message.contains("fastest") && message.contains("maglev"), "{message}");
}

#[test]
fn io_defaults_to_io_uring_and_an_unknown_one_lists_the_valid_ones() {
    let backend = "[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
    let default = parse_str(&minimal_with(backend)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(default.node.io, IoMode::IoUring);
    let epoll = minimal_with(backend).replacen("[node]\n", "[node]\nio = \"epoll\"\n", 1);
    let epoll = parse_str(&epoll).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(epoll.node.io, IoMode::Epoll);
    let bad = minimal_with(backend).replacen("[node]\n", "[node]\nio = \"kqueue\"\n", 1);
    let (line, key, message) = one_problem(&bad);
    assert_eq!((line, key.as_str()), (Some(2), "node.io"));
    assert!(message.contains("kqueue") && message.contains("io_uring"), "{message}");
}

#[test]
fn zero_weight_is_rejected_at_its_line() {
    let text = minimal_with("[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nweight = 0\n");
    let (line, key, message) = one_problem(&text);
    assert_eq!(line, Some(14));
    assert_eq!(key, "pool[0].backend[0].weight");
    assert!(message.contains("between 1 and"), "{message}");
}

#[test]
fn duplicate_backend_names_are_rejected() {
    let text = minimal_with(
        "[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n",
    );
    let (line, key, message) = one_problem(&text);
    assert_eq!(line, Some(15));
    assert_eq!(key, "pool[0].backend[1].name");
    assert!(message.contains("used twice"), "{message}");
}

#[test]
fn listener_pointing_at_missing_pool_is_rejected() {
    let text = format!(
        "{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"nope\"\n"
    );
    let (line, key, message) = one_problem(&text);
    assert_eq!(line, Some(7));
    assert_eq!(key, "listener[0].pool");
    assert!(
        message.contains("\"nope\"") && message.contains("not defined"),
        "{message}"
    );
}

#[test]
fn bad_addresses_are_rejected() {
    let text = minimal_with("[[pool.backend]]\nname = \"a\"\naddress = \"10.0.0.300:80\"\n");
    let (line, key, message) = one_problem(&text);
    assert_eq!((line, key.as_str()), (Some(13), "pool[0].backend[0].address"));
    assert!(message.contains("10.0.0.300:80"), "{message}");

    let text =
        format!("{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"localhost\"\nprotocol = \"http\"\npool = \"p\"\n");
    let (line, key, _) = one_problem(&text);
    assert_eq!((line, key.as_str()), (Some(5), "listener[0].bind"));
}

#[test]
fn syntax_error_reports_its_line() {
    let text = format!("{MINIMAL_HEAD}[[pool]\nname = \"p\"\n");
    let (line, _, message) = one_problem(&text);
    assert_eq!(line, Some(3));
    assert!(!message.is_empty());
}

#[test]
fn bad_duration_names_the_key() {
    let text =
        minimal_with("connect_timeout = \"3 seconds\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
    let (line, key, message) = one_problem(&text);
    assert_eq!((line, key.as_str()), (Some(11), "pool[0].connect_timeout"));
    assert!(message.contains("invalid duration"), "{message}");
}

#[test]
fn tcp_listener_rejects_http_only_pool_features() {
    let text = format!(
        "{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nalgorithm = \"maglev\"\nhash_key = \"header:x-user\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
    );
    let (_, key, message) = one_problem(&text);
    assert_eq!(key, "listener[0].pool");
    assert!(message.contains("needs HTTP"), "{message}");
}

#[test]
fn all_problems_are_reported_together() {
    let text = minimal_with(
        "retries = 50\nhealth = { kind = \"tcp\", interval = \"1s\", timeout = \"2s\", fall = 0 }\n[[pool.backend]]\nname = \"a b\"\naddress = \"127.0.0.1:1\"\nweight = 5000\n",
    );
    let err = parse_str(&text).err().map(|e| e.to_string()).unwrap_or_default();
    for needle in [
        "pool[0].retries",
        "pool[0].health.timeout",
        "pool[0].health.fall",
        "pool[0].backend[0].name",
        "pool[0].backend[0].weight",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
}

#[test]
fn vip_limits_are_checked() {
    let text = format!(
        "{MINIMAL_HEAD}[[vip]]\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\nvrid = 300\npriority = 255\nadvert_interval = \"5ms\"\n"
    );
    let err = parse_str(&text).err().map(|e| e.to_string()).unwrap_or_default();
    for needle in ["vip[0].vrid", "vip[0].priority", "vip[0].advert_interval"] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
}

/// IPv4 and IPv6 routers with one VRID are separate (RFC 5798 §5.2.3);
/// two of one family are not, and a link-local VIP is refused.
#[test]
fn ipv6_vips_share_vrids_with_ipv4_but_not_with_each_other() {
    let vip =
        |address: &str| format!("[[vip]]\naddress = \"{address}\"\ninterface = \"eth0\"\nvrid = 51\npriority = 100\n");
    let both = format!("{MINIMAL_HEAD}{}{}", vip("10.0.0.100/24"), vip("fd00::100/64"));
    let config = parse_str(&both).map_err(|e| e.to_string());
    assert!(config.is_ok(), "{config:?}");

    let (_, key, message) = one_problem(&format!("{MINIMAL_HEAD}{}{}", vip("fd00::100/64"), vip("fd00::101/64")));
    assert_eq!(key, "vip[1].vrid");
    assert!(message.contains("used twice for IPv6"), "{message}");

    let (_, key, message) = one_problem(&format!("{MINIMAL_HEAD}{}", vip("fe80::100/64")));
    assert_eq!(key, "vip[0].address");
    assert!(message.contains("link-local"), "{message}");
}

#[test]
fn missing_files_are_reported() {
    let text = format!(
        "{MINIMAL_HEAD}[cluster]\nname = \"edge\"\ngossip_addr = \"127.0.0.1:7946\"\nreplication_addr = \"127.0.0.1:7947\"\ngossip_key_file = \"no-such-gossip.key\"\n"
    );
    let (line, key, message) = one_problem(&text);
    assert_eq!((line, key.as_str()), (Some(7), "cluster.gossip_key_file"));
    assert!(message.contains("no-such-gossip.key"), "{message}");
}

#[test]
fn sticky_mode_requirements() {
    let text = minimal_with(
        "sticky = { mode = \"learn_cookie\" }\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let (_, key, message) = one_problem(&text);
    assert_eq!(key, "pool[0].sticky.cookie");
    assert!(message.contains("needs `cookie`"), "{message}");
}

#[test]
fn rendered_error_has_file_line_key_and_source() {
    let text = minimal_with("[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nweight = 0\n");
    let rendered = parse_str(&text).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        rendered.starts_with("test.toml:14:1: pool[0].backend[0].weight: "),
        "{rendered}"
    );
    assert!(rendered.contains("14 | weight = 0"), "{rendered}");
}

#[test]
fn routes_are_checked() {
    let text = format!(
        "{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n\
         [[listener.route]]\npath_prefix = \"/api/\"\npool = \"api\"\n\
         [[listener.route]]\npool = \"p\"\n\
         [[listener.route]]\nhost = \"*.example.com:80\"\npath_prefix = \"api\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
    );
    let err = parse_str(&text).err().map(|e| e.to_string()).unwrap_or_default();
    for needle in [
        "listener[0].route[0].pool: route uses pool \"api\"",
        "listener[0].route[1]: a route needs at least one",
        "listener[0].route[2].host",
        "listener[0].route[2].path_prefix",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let ok = text
        .replace("pool = \"api\"", "pool = \"p\"")
        .replace(
            "[[listener.route]]\npool = \"p\"\n",
            "[[listener.route]]\nheader = { name = \"x-beta\", value = \"1\" }\npool = \"p\"\n",
        )
        .replace("*.example.com:80", "*.example.com")
        .replace("path_prefix = \"api\"", "path_prefix = \"/api\"");
    let config = parse_str(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners[0].routes.len(), 3);
}

#[test]
fn traffic_management_keys_are_checked() {
    let text = minimal_with(
        "max_pending = 10\nslow_start = \"0s\"\nretry_budget = { percent = 120 }\n\
         outlier = { base_ejection = \"30s\", max_ejection = \"10s\" }\n\
         [[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let err = parse_str(&text).err().map(|e| e.to_string()).unwrap_or_default();
    for needle in [
        "pool[0].max_pending: max_pending only applies with max_connections",
        "pool[0].slow_start",
        "pool[0].retry_budget.percent",
        "pool[0].outlier.max_ejection",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let text = format!(
        "{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\n\
         tls = {{ cert = \"c.pem\", key = \"k.pem\" }}\nrate_limit = {{ requests_per_second = 0, burst = 0 }}\n\n\
         [[pool]]\nname = \"p\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
    );
    let err = parse_str(&text).err().map(|e| e.to_string()).unwrap_or_default();
    for needle in [
        "listener[0].tls: TLS termination is only available on http listeners",
        "listener[0].tls.cert: cannot read certificates from ./c.pem",
        "listener[0].rate_limit.requests_per_second",
        "listener[0].rate_limit.burst",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn tls_certificates_must_parse_and_match_their_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for name in ["a", "b"] {
        let g = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(format!("{name}.pem")), g.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(format!("{name}.key")), g.signing_key.serialize_pem())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let with_tls = |cert: &str, key: &str| {
        format!(
            "{MINIMAL_HEAD}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8443\"\nprotocol = \"http\"\npool = \"p\"\n\
             tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\n\
             [[pool]]\nname = \"p\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
        )
    };
    let good = parse(&with_tls("a.pem", "a.key"), "t.toml", dir.path());
    assert!(good.is_ok(), "{:?}", good.err().map(|e| e.to_string()));
    let err = parse(&with_tls("a.pem", "b.key"), "t.toml", dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("listener[0].tls.cert") && err.contains("do not belong together"),
        "{err}"
    );
    assert!(err.contains("t.toml:8:"), "{err}");
}

#[test]
fn the_cluster_identity_must_verify_as_peers_will_verify_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ids = ["lb1", "lb2"].map(|id| shoal_proto::NodeId::new(id).unwrap_or_else(|e| panic!("{e}")));
    crate::certs::generate(dir.path(), &ids).unwrap_or_else(|e| panic!("{e}"));
    crate::certs::generate(other.path(), &ids[..1]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
    let cluster = |ca: &str, cert: &str, key: &str| {
        format!(
            "{MINIMAL_HEAD}[cluster]\nname = \"edge\"\ngossip_addr = \"127.0.0.1:7946\"\n\
             replication_addr = \"127.0.0.1:7947\"\ntls = {{ ca = \"{ca}\", cert = \"{cert}\", key = \"{key}\" }}\n"
        )
    };
    let other_ca = other.path().join("ca.pem").display().to_string();
    let good = parse(&cluster("ca.pem", "lb1.pem", "lb1.key"), "t.toml", dir.path());
    assert!(good.is_ok(), "{:?}", good.err().map(|e| e.to_string()));
    for (text, key, words) in [
        (
            cluster("ca.pem", "lb2.pem", "lb2.key"),
            "cluster.tls.cert",
            "does not name this node (\"lb1\")",
        ),
        (
            cluster("ca.pem", "lb1.pem", "lb2.key"),
            "cluster.tls.cert",
            "do not belong together",
        ),
        (
            cluster(&other_ca, "lb1.pem", "lb1.key"),
            "cluster.tls.cert",
            "does not verify against the CA",
        ),
        (
            cluster("garbage.pem", "lb1.pem", "lb1.key"),
            "cluster.tls.ca",
            "holds no certificate",
        ),
        (
            cluster("ca.pem", "lb1.pem", "garbage.pem"),
            "cluster.tls.key",
            "cannot read a private key",
        ),
        (
            cluster("ca.pem", "missing.pem", "lb1.key"),
            "cluster.tls.cert",
            "cannot read",
        ),
    ] {
        let err = parse(&text, "t.toml", dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(key) && err.contains(words),
            "want {key}: {words} in {err:?}"
        );
        assert!(err.contains("t.toml:7:"), "{err}");
    }
}

#[test]
fn admin_token_file_must_hold_a_token() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("empty.token"), "  \n").unwrap_or_else(|e| panic!("{e}"));
    let text = "[node]\nid = \"lb1\"\nadmin_token_file = \"empty.token\"\n";
    let err = parse(text, "t.toml", dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("node.admin_token_file") && err.contains("is empty"),
        "{err}"
    );
}

#[test]
fn http_limits_have_defaults_and_bounds() {
    let backend = "[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
    let config = parse_str(&minimal_with(backend)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners[0].max_header_bytes(), 64 * 1024);
    assert_eq!(config.listeners[0].max_body_bytes(), 100 * 1024 * 1024);
    assert_eq!(config.listeners[0].max_connections(), 20_000);
    assert_eq!(config.listeners[0].header_timeout().get(), Duration::from_secs(10));

    let text = minimal_with(backend).replace("pool = \"p\"\n\n", "pool = \"p\"\nheader_timeout = \"0s\"\n\n");
    let (_, key, _) = one_problem(&text);
    assert_eq!(key, "listener[0].header_timeout");

    let text = minimal_with(backend).replace("pool = \"p\"\n\n", "pool = \"p\"\nmax_connections = 0\n\n");
    let (_, key, message) = one_problem(&text);
    assert_eq!(key, "listener[0].max_connections");
    assert!(message.contains("between 1 and 10000000, got 0"), "{message}");

    // hyper panics on a read buffer under 8 KiB: config must refuse it.
    let text = minimal_with(backend).replace("pool = \"p\"\n\n", "pool = \"p\"\nmax_header_bytes = 4096\n\n");
    let (line, key, message) = one_problem(&text);
    assert_eq!(line, Some(8));
    assert_eq!(key, "listener[0].max_header_bytes");
    assert!(message.contains("between 8192 and 16777216, got 4096"), "{message}");

    let text = minimal_with(backend).replace("pool = \"p\"\n\n", "pool = \"p\"\nmax_body_bytes = 0\n\n");
    let (_, key, message) = one_problem(&text);
    assert_eq!(key, "listener[0].max_body_bytes");
    assert!(message.contains("greater than 0"), "{message}");

    let text = minimal_with(backend)
        .replace("protocol = \"http\"", "protocol = \"tcp\"")
        .replace("pool = \"p\"\n\n", "pool = \"p\"\nmax_body_bytes = 10\n\n");
    let (_, key, message) = one_problem(&text);
    assert_eq!(key, "listener[0].max_body_bytes");
    assert!(message.contains("only available on http listeners"), "{message}");
}
