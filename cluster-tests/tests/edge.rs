//! The client-facing edge: routing rules, TLS termination (HTTP/1.1 and
//! HTTP/2, certificate reload on SIGHUP) and per-client rate limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::config::{listener, local, node, pool};
use shoal_cluster_tests::{Backend, Node, wait_until};

#[test]
fn routes_pick_pools_by_path_host_and_header_first_match_wins() -> Result<()> {
    let (web, api, beta, shop) = (
        Backend::start("web-1")?,
        Backend::start("api-1")?,
        Backend::start("beta-1")?,
        Backend::start("shop-1")?,
    );
    let (admin, http) = (local()?, local()?);
    let routes = "[[listener.route]]\nheader = { name = \"x-beta\", value = \"1\" }\npool = \"beta\"\n\
                  [[listener.route]]\npath_prefix = \"/api/\"\npool = \"api\"\n\
                  [[listener.route]]\nhost = \"*.shop.example\"\npool = \"shop\"\n";
    let cfg = node(admin, "")
        + &listener("web", http, "http", "web", routes)
        + &pool("web", "", &[("web-1", web.addr)])
        + &pool("api", "", &[("api-1", api.addr)])
        + &pool("beta", "", &[("beta-1", beta.addr)])
        + &pool("shop", "", &[("shop-1", shop.addr)]);
    let node = Node::start(&cfg, admin)?;
    let mut conn = KeepAlive::open(http, None)?;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 6] = [
        ("/", &[], "web-1"),
        ("/api/users", &[], "api-1"),
        ("/apixyz", &[], "web-1"),
        ("/api/users", &[("X-Beta", "1")], "beta-1"),
        ("/", &[("Host", "www.shop.example:8080")], "shop-1"),
        ("/api/x", &[("Host", "www.shop.example")], "api-1"),
    ];
    for (path, headers, want) in cases {
        let r = conn.send("GET", path, headers, b"", false)?;
        assert_eq!((r.status, r.backend()), (200, Some(want)), "{path} {headers:?}");
    }
    node.assert_no_panic();
    Ok(())
}

/// Writes a self-signed certificate for localhost with common name `cn`.
fn write_cert(dir: &Path, cn: &str) -> Result<()> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("site.pem"), cert.pem())?;
    std::fs::write(dir.join("site.key"), key.serialize_pem())?;
    Ok(())
}

/// `curl -k` with extra args; returns (stdout, stderr).
fn curl(args: &[&str]) -> Result<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "10"])
        .args(args)
        .output()
        .context("running curl (install it: apt-get install curl)")?;
    if !out.status.success() {
        bail!("curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn tls_terminates_http1_and_http2_and_reloads_its_certificate() -> Result<()> {
    let b = Backend::start("a")?;
    let (admin, https) = (local()?, local()?);
    let certs = tempfile::tempdir()?;
    write_cert(certs.path(), "shoal-test-one")?;
    let (cert, key) = (certs.path().join("site.pem"), certs.path().join("site.key"));
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", cert.display(), key.display());
    let tls = tls + "\nidle_timeout = \"1s\"";
    let cfg = node(admin, "") + &listener("secure", https, "http", "web", &tls) + &pool("web", "", &[("a", b.addr)]);
    let node = Node::start(&cfg, admin)?;
    let url = format!("https://localhost:{}/headers", https.port());
    let resolve = format!("localhost:{}:127.0.0.1", https.port());

    let (body, trace) = curl(&["-v", "--http1.1", "--resolve", &resolve, &url])?;
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(trace.contains("HTTP/1.1 200"), "{trace}");
    assert!(trace.contains("CN=shoal-test-one"), "{trace}");
    let (body, trace) = curl(&["-v", "--http2", "--resolve", &resolve, &url])?;
    assert!(trace.contains("HTTP/2 200"), "{trace}");
    assert!(
        body.contains("host: localhost:"),
        "the HTTP/2 authority becomes Host: {body}"
    );

    // A client that completes the handshake and says nothing, with or
    // without HTTP/2, is closed after the idle timeout.
    for alpn in ["http/1.1", "h2"] {
        let start = std::time::Instant::now();
        let mut silent = Command::new("openssl")
            .args(["s_client", "-quiet", "-alpn", alpn, "-connect", &https.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("running openssl (install it: apt-get install openssl)")?;
        let closed = wait_until(
            "the idle TLS client to be closed",
            Duration::from_secs(8),
            Duration::from_millis(20),
            || silent.try_wait().ok().flatten(),
        );
        let _ = silent.kill();
        let _ = silent.wait();
        closed?;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{alpn}: closed after {took:?}"
        );
    }

    write_cert(certs.path(), "shoal-test-two")?;
    node.signal("HUP")?;
    wait_until(
        "the new certificate to be served",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            curl(&["-v", "--resolve", &resolve, &url])
                .ok()
                .filter(|(_, t)| t.contains("CN=shoal-test-two"))
        },
    )?;
    node.assert_no_panic();
    Ok(())
}

#[test]
fn a_burst_beyond_the_rate_limit_gets_429_and_no_5xx() -> Result<()> {
    let b = Backend::start("a")?;
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, "")
        + &listener(
            "web",
            http,
            "http",
            "web",
            "rate_limit = { requests_per_second = 20, burst = 5 }",
        )
        + &pool("web", "", &[("a", b.addr)]);
    let node = Node::start(&cfg, admin)?;
    let mut conn = KeepAlive::open(http, None)?;
    let mut statuses = BTreeMap::new();
    let mut retry_after = None;
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let r = conn.send("GET", "/", &[], b"", false)?;
        if r.status == 429 {
            retry_after = r.header("retry-after").map(str::to_string);
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = statuses.get(&200).copied().unwrap_or(0);
    // The burst, plus what 20/s refills while the loop runs.
    let most = 5 + (20.0 * elapsed).ceil() as usize + 1;
    assert!(
        ok >= 5 && ok <= most,
        "{ok} admitted in {elapsed:.2}s (at most {most}): {statuses:?}"
    );
    assert_eq!(statuses.get(&429).copied().unwrap_or(0), 100 - ok, "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(node.status()?["listeners"][0]["rate_limited"], 100 - ok);
    // Another client address has its own budget.
    let mut other = KeepAlive::open(http, Some([127, 0, 0, 9].into()))?;
    assert_eq!(other.send("GET", "/", &[], b"", false)?.status, 200);
    node.assert_no_panic();
    Ok(())
}

#[test]
fn tcp_listeners_rate_limit_connections() -> Result<()> {
    let b = Backend::start("a")?;
    let (admin, tcp) = (local()?, local()?);
    let cfg = node(admin, "")
        + &listener(
            "raw",
            tcp,
            "tcp",
            "p",
            "rate_limit = { requests_per_second = 1, burst = 3 }",
        )
        + &pool("p", "", &[("a", b.addr)]);
    let node = Node::start(&cfg, admin)?;
    let started = std::time::Instant::now();
    let served = (0..10)
        .filter(|_| shoal_cluster_tests::tcp_get(tcp, None, "/").is_ok_and(|r| r.status == 200))
        .count();
    // The burst of 3, plus one per second the loop ran.
    let most = 3 + started.elapsed().as_secs() as usize + 1;
    assert!(
        served >= 3 && served <= most,
        "{served} of 10 connections served (at most {most})"
    );
    node.assert_no_panic();
    Ok(())
}
