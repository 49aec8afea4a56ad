//! The `shoal` command line: version, and `check` exit codes and messages.

use std::fs;

use anyhow::Result;
use shoal_cluster_tests::procs::run_shoal;

const VALID: &str = r#"
[node]
id = "lb1"

[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
pool = "web"

[[pool]]
name = "web"
algorithm = "maglev"

[[pool.backend]]
name = "web-1"
address = "10.0.1.10:8080"
"#;

fn check(text: &str) -> Result<(i32, String, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shoal.toml");
    fs::write(&path, text)?;
    let path = path.to_string_lossy().into_owned();
    run_shoal(&["check", "-c", &path])
}

#[test]
fn version_is_printed() -> Result<()> {
    let (code, out, _) = run_shoal(&["--version"])?;
    assert_eq!(code, 0);
    assert!(out.starts_with("shoal "), "{out}");
    Ok(())
}

#[test]
fn check_accepts_a_valid_config() -> Result<()> {
    let (code, out, err) = check(VALID)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (1 listeners, 1 pools, 1 backends)"), "{out}");
    Ok(())
}

#[test]
fn check_names_the_key_and_line_of_each_problem() -> Result<()> {
    let cases = [
        // (edit, expected line, expected key, expected words)
        (
            VALID.replace("maglev", "fastest"),
            ":13:",
            "pool[0].algorithm",
            "unknown variant `fastest`",
        ),
        (
            VALID.replace("id = \"lb1\"", "id = \"lb1\"\nmystery = 1"),
            ":4:",
            "node",
            "unknown field `mystery`",
        ),
        (
            VALID.replace("pool = \"web\"", "pool = \"api\""),
            ":9:",
            "listener[0].pool",
            "\"api\", which is not defined",
        ),
        (
            VALID.replace("10.0.1.10:8080", "10.0.1.10"),
            ":17:",
            "pool[0].backend[0].address",
            "missing port",
        ),
        (
            format!("{VALID}weight = 0\n"),
            ":18:",
            "pool[0].backend[0].weight",
            "between 1 and",
        ),
        (VALID.replace("[[pool]]", "[[pool]"), ":11:", "[[pool]", "expected `]`"),
    ];
    for (text, line, key, words) in cases {
        let (code, _, err) = check(&text)?;
        assert_eq!(code, 2, "expected exit 2 for {words}: {err}");
        assert!(err.contains(line), "no line {line} in: {err}");
        assert!(err.contains(key), "no key {key} in: {err}");
        assert!(err.contains(words), "no {words:?} in: {err}");
    }
    Ok(())
}

#[test]
fn check_reports_an_unreadable_file() -> Result<()> {
    let (code, _, err) = run_shoal(&["check", "-c", "/nonexistent/shoal.toml"])?;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/shoal.toml"), "{err}");
    Ok(())
}

#[test]
fn run_refuses_an_invalid_config_with_exit_2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    fs::write(&path, VALID.replace("maglev", "fastest"))?;
    let (code, _, err) = run_shoal(&["run", "-c", &path.to_string_lossy()])?;
    assert_eq!(code, 2);
    assert!(err.contains("pool[0].algorithm"), "{err}");
    Ok(())
}
