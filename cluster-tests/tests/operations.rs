//! Operating a node: backend admin states through the admin API (with and
//! without a token), and config reload on SIGHUP without losing requests.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::config::{listener, local, node, pool};
use shoal_cluster_tests::{Backend, HttpResponse, Node, get, request, wait_until};

fn set_state(node: &Node, backend: &str, state: &str, token: Option<&str>) -> Result<HttpResponse> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let body = format!("{{\"state\": \"{state}\"}}");
    request(
        node.admin,
        None,
        "PUT",
        &format!("/pools/web/backends/{backend}/state"),
        &headers,
        body.as_bytes(),
    )
}

fn served_by(http: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    let mut conn = KeepAlive::open(http, None)?;
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = conn.send("GET", "/", &[], b"", false)?;
        anyhow::ensure!(r.status == 200, "status {}: {}", r.status, r.text());
        seen.insert(r.backend().context("no x-backend")?.to_string());
    }
    Ok(seen)
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn drain_stops_new_requests_but_lets_running_ones_finish() -> Result<()> {
    let (a, b) = (Backend::start("a")?, Backend::start("b")?);
    let (admin, http) = (local()?, local()?);
    let cfg =
        node(admin, "") + &listener("web", http, "http", "web", "") + &pool("web", "", &[("a", a.addr), ("b", b.addr)]);
    let node = Node::start(&cfg, admin)?;
    // A long request lands on one backend...
    let long = std::thread::spawn(move || get(http, "/drip?chunks=3&interval_ms=400"));
    let (busy, _) = wait_until(
        "a request in flight",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            ["a", "b"].into_iter().find(|n| {
                node.backend_status("web", n)
                    .is_ok_and(|s| s["active_connections"] == 1)
            })
        },
    )?;
    let other = if busy == "a" { "b" } else { "a" };
    // ...which is then drained: it finishes, and gets nothing new.
    let r = set_state(&node, busy, "drain", None)?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"previous\": \"ready\""), "{}", r.text());
    assert_eq!(served_by(http, 20)?, names(&[other]));
    let finished = long.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert!(
        finished.text().contains("chunk 2"),
        "the drained backend's request completed: {}",
        finished.text()
    );
    assert_eq!(node.backend_status("web", busy)?["state"], "drain");
    // Ready again: traffic returns.
    assert_eq!(set_state(&node, busy, "ready", None)?.status, 200);
    assert_eq!(served_by(http, 20)?, names(&["a", "b"]));
    node.assert_no_panic();
    Ok(())
}

#[test]
fn maint_also_stops_health_checks() -> Result<()> {
    let (a, mut b) = (Backend::start("a")?, Backend::start("b")?);
    let (admin, http) = (local()?, local()?);
    let health = "health = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let cfg = node(admin, "")
        + &listener("web", http, "http", "web", "")
        + &pool("web", health, &[("a", a.addr), ("b", b.addr)]);
    let node = Node::start(&cfg, admin)?;
    assert_eq!(set_state(&node, "b", "maint", None)?.status, 200);
    b.kill();
    // Ten check intervals pass without a check: b keeps its last verdict.
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.backend_healthy("web", "b")?, "no health check ran in maint");
    assert_eq!(served_by(http, 10)?, names(&["a"]));
    // Back to ready, the checks resume and find b down.
    assert_eq!(set_state(&node, "b", "ready", None)?.status, 200);
    wait_until(
        "b checked and found down",
        Duration::from_secs(3),
        Duration::from_millis(10),
        || node.backend_healthy("web", "b").ok().filter(|h| !h),
    )?;
    assert_eq!(served_by(http, 10)?, names(&["a"]));
    node.assert_no_panic();
    Ok(())
}

#[test]
fn admin_writes_need_the_token_and_valid_input() -> Result<()> {
    let a = Backend::start("a")?;
    let (admin, http) = (local()?, local()?);
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n")?;
    let cfg = node(admin, &format!("admin_token_file = \"{}\"", token_file.display()))
        + &listener("web", http, "http", "web", "")
        + &pool("web", "", &[("a", a.addr)]);
    let node = Node::start(&cfg, admin)?;
    let r = set_state(&node, "a", "drain", None)?;
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(set_state(&node, "a", "drain", Some("wrong"))?.status, 401);
    assert_eq!(
        node.backend_status("web", "a")?["state"],
        "ready",
        "refused writes change nothing"
    );
    assert_eq!(set_state(&node, "a", "drain", Some("s3cret-token"))?.status, 200);
    assert_eq!(node.backend_status("web", "a")?["state"], "drain");
    // Reads stay open.
    let r = get(node.admin, "/pools/web/backends/a")?;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"state\": \"drain\""), "{}", r.text());
    // Bad input gets a clear error.
    let r = set_state(&node, "a", "sleepy", Some("s3cret-token"))?;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("unknown state"), "{}", r.text());
    assert_eq!(set_state(&node, "nobody", "drain", Some("s3cret-token"))?.status, 404);
    let bad_json = request(
        admin,
        None,
        "PUT",
        "/pools/web/backends/a/state",
        &[("Authorization", "Bearer s3cret-token")],
        b"{state: drain",
    )?;
    assert_eq!(bad_json.status, 400);
    let huge = vec![b' '; 10_000];
    let r = request(
        admin,
        None,
        "PUT",
        "/pools/web/backends/a/state",
        &[("Authorization", "Bearer s3cret-token")],
        &huge,
    )?;
    assert_eq!(r.status, 413);
    assert_eq!(get(node.admin, "/pools/web/backends/a/state")?.status, 405);
    node.assert_no_panic();
    Ok(())
}

fn web_config(admin: SocketAddr, http: SocketAddr, backends: &[(&str, SocketAddr)]) -> String {
    node(admin, "") + &listener("web", http, "http", "web", "") + &pool("web", "", backends)
}

#[test]
fn reload_removing_a_backend_loses_no_request() -> Result<()> {
    let (a, b, c) = (Backend::start("a")?, Backend::start("b")?, Backend::start("c")?);
    let (admin, http) = (local()?, local()?);
    let all = [("a", a.addr), ("b", b.addr), ("c", c.addr)];
    let node = Node::start(&web_config(admin, http, &all), admin)?;
    // 4 keep-alive clients send 50 requests each while the config changes.
    let reloaded = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let reloaded = Arc::clone(&reloaded);
            std::thread::spawn(move || -> Result<(usize, usize, usize)> {
                let mut conn = KeepAlive::open(http, None)?;
                let (mut ok, mut to_c_after, mut spanning) = (0, 0, 0);
                for _ in 0..50 {
                    let before = reloaded.load(Ordering::SeqCst);
                    // Each request takes ~30 ms, so some are in flight
                    // while the reload happens.
                    let r = conn.send("GET", "/drip?chunks=2&interval_ms=30", &[], b"", false)?;
                    anyhow::ensure!(r.status == 200, "status {}: {}", r.status, r.text());
                    ok += 1;
                    if before && r.backend() == Some("c") {
                        to_c_after += 1;
                    }
                    if !before && reloaded.load(Ordering::SeqCst) {
                        spanning += 1;
                    }
                }
                Ok((ok, to_c_after, spanning))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    node.reload(&web_config(admin, http, &all[..2]))?;
    wait_until("the reload", Duration::from_secs(5), Duration::from_millis(5), || {
        node.status()
            .ok()
            .filter(|s| s["pools"][0]["backends"].as_array().is_some_and(|b| b.len() == 2))
    })?;
    reloaded.store(true, Ordering::SeqCst);
    let (mut total, mut spanning) = (0, 0);
    for cl in clients {
        let (ok, to_c, across) = cl.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        total += ok;
        spanning += across;
        assert_eq!(to_c, 0, "a removed backend got requests after the reload");
    }
    assert_eq!(total, 200);
    assert!(
        spanning >= 1,
        "no request was in flight across the reload: the test proved nothing"
    );
    assert_eq!(
        node.status()?["listeners"][0]["accepted_connections"],
        4,
        "client connections stayed open"
    );
    assert!(node.log().contains("reload applied"));
    node.assert_no_panic();
    Ok(())
}

#[test]
fn an_invalid_reload_keeps_the_old_config_serving() -> Result<()> {
    let a = Backend::start("a")?;
    let (admin, http) = (local()?, local()?);
    let good = web_config(admin, http, &[("a", a.addr)]);
    let node = Node::start(&good, admin)?;
    node.reload(&good.replace("[[pool.backend]]", "[[pool.backend]]\nweight = 0"))?;
    wait_until(
        "the refusal to be logged",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || (node.log_count("reload refused") == 1).then_some(()),
    )?;
    assert!(
        node.log().contains("pool[0].backend[0].weight"),
        "the log names the key:\n{}",
        node.log()
    );
    assert_eq!(served_by(http, 10)?, names(&["a"]));
    // A config that validates but cannot apply (a taken port) is refused
    // whole, too.
    // It must not even apply part of itself (here a new weight).
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let extra = listener("more", taken.local_addr()?, "http", "web", "");
    node.reload(&(good.replace("[[pool.backend]]", "[[pool.backend]]\nweight = 7") + &extra))?;
    wait_until(
        "the second refusal",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || (node.log_count("reload refused") == 2).then_some(()),
    )?;
    assert_eq!(node.status()?["listeners"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        node.backend_status("web", "a")?["weight"],
        1,
        "a refused reload changed a weight"
    );
    assert_eq!(served_by(http, 10)?, names(&["a"]));
    node.assert_no_panic();
    Ok(())
}

#[test]
fn reload_adds_and_removes_listeners_and_pools() -> Result<()> {
    let (a, b) = (Backend::start("a")?, Backend::start("b")?);
    let (admin, http, second) = (local()?, local()?, local()?);
    let first = web_config(admin, http, &[("a", a.addr)]);
    let node = Node::start(&first, admin)?;
    let grown = first.clone()
        + &listener("api", second, "http", "api", "")
        + &pool("api", "algorithm = \"maglev\"", &[("b", b.addr)]);
    node.reload(&grown)?;
    wait_until(
        "the new listener",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || get(second, "/").ok().filter(|r| r.backend() == Some("b")),
    )?;
    assert_eq!(served_by(http, 5)?, names(&["a"]));
    node.reload(&first)?;
    wait_until(
        "the removed listener to stop accepting",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || std::net::TcpStream::connect(second).is_err().then_some(()),
    )?;
    assert_eq!(served_by(http, 5)?, names(&["a"]));
    node.assert_no_panic();
    Ok(())
}
