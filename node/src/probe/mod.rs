//! `shoal probe`: a bounded client load for chaos runs. It sends GETs at a
//! fixed rate for a fixed time, each on a fresh connection (so a VIP move
//! shows), optionally carrying sticky sessions it created first through
//! the backend's `/session` (learned cookies), and prints a JSON summary
//! (see `summary`).

pub mod summary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

use summary::{Outcome, Summary};

/// Most requests a run may send, whatever the rate and duration.
pub const MAX_REQUESTS: u64 = 1_000_000;
/// Most sticky sessions a run may create.
pub const MAX_SESSIONS: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub target: SocketAddr,
    /// Requests per second, 1–1000.
    pub rate: u32,
    pub duration: Duration,
    /// Sticky sessions to create first and rotate through.
    pub sessions: u32,
    pub timeout: Duration,
}

/// A run's summary, with when it started so that its `at_ms` figures
/// line up with the nodes' logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Wall-clock start of the run (after the sessions were created).
    pub started_unix_ms: u64,
    #[serde(flatten)]
    pub summary: Summary,
}

/// What one response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub backend: Option<String>,
    /// The value of a `sid` cookie set by the response.
    pub sid: Option<String>,
}

/// Parses a response head (status line and headers) from `buf`; `None`
/// until it is complete or if it is not HTTP.
pub fn parse_head(buf: &[u8]) -> Option<ResponseHead> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let (mut backend, mut sid) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-backend") {
            backend = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("set-cookie")
            && let Some(rest) = value.strip_prefix("sid=")
        {
            sid = rest.split(';').next().map(str::to_string);
        }
    }
    Some(ResponseHead { status, backend, sid })
}

/// One GET on a fresh connection, within `timeout`.
async fn get(target: SocketAddr, path: &str, cookie: Option<&str>, timeout: Duration) -> Result<ResponseHead> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(target).await.context("connect")?;
        let cookie = cookie.map(|c| format!("Cookie: sid={c}\r\n")).unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\n{cookie}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.context("send")?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(head) = parse_head(&buf) {
                return Ok(head);
            }
            if buf.len() > 16 * 1024 {
                bail!("response head over 16 KiB");
            }
            let n = s.read(&mut chunk).await.context("receive")?;
            if n == 0 {
                bail!("connection closed before a response");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .context("timed out")?
}

/// Creates the sessions (each the backend that made it, and its sid),
/// retrying for up to 10 s while the target is not ready (refused, 503).
async fn create_sessions(spec: &ProbeSpec) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(spec.sessions as usize);
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < spec.sessions as usize {
        let failure = match get(spec.target, "/session", None, spec.timeout).await {
            Ok(ResponseHead {
                status: 200,
                backend: Some(b),
                sid: Some(sid),
            }) => {
                out.push((b, sid));
                continue;
            }
            Ok(other) => anyhow::anyhow!("unexpected response {other:?}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(failure.context("creating sessions for 10 s"));
        }
        tracing::debug!(error = %failure, "session not created yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(out)
}

pub async fn run(spec: ProbeSpec) -> Result<Report> {
    // rate × duration requests, one every 1/rate s.
    let planned = (f64::from(spec.rate) * spec.duration.as_secs_f64()).round();
    if spec.rate == 0 || spec.rate > 1000 || planned > MAX_REQUESTS as f64 || planned < 1.0 {
        bail!("rate must be 1-1000/s and rate × duration between 1 and {MAX_REQUESTS}");
    }
    if spec.sessions > MAX_SESSIONS {
        bail!("at most {MAX_SESSIONS} sessions");
    }
    let planned = planned as usize;
    let sessions = create_sessions(&spec).await?;
    let sessions = Arc::new(sessions);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let started_unix_ms = crate::affinity::now_unix_ms();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / spec.rate);
    // A stalled sender catches up in a burst rather than dropping
    // requests: the count stays rate × duration.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..planned {
        tick.tick().await;
        // Finished tasks are reaped as we go: a long run holds only the
        // requests in flight (at most rate × timeout).
        while tasks.try_join_next().is_some() {}
        let session = (!sessions.is_empty()).then(|| n % sessions.len());
        let (sessions, outcomes, spec) = (Arc::clone(&sessions), Arc::clone(&outcomes), spec.clone());
        tasks.spawn(async move {
            let at = start.elapsed();
            let cookie = session.and_then(|i| sessions.get(i)).map(|s| s.1.as_str());
            let served_by = match get(spec.target, "/", cookie, spec.timeout).await {
                Ok(h) if h.status == 200 => Some(h.backend.unwrap_or_default()),
                _ => None,
            };
            outcomes.lock().await.push(Outcome { at, session, served_by });
        });
    }
    // The run ends with its last request sent: waiting for stragglers
    // (up to the timeout) is not an outage.
    let run_for = start.elapsed() + Duration::from_secs(1) / spec.rate;
    while tasks.join_next().await.is_some() {}
    let origins: Vec<String> = sessions.iter().map(|s| s.0.clone()).collect();
    let outcomes = outcomes.lock().await;
    Ok(Report {
        started_unix_ms,
        summary: summary::summarize(&outcomes, &origins, run_for),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_backend_and_session_cookie() {
        let h =
            parse_head(b"HTTP/1.1 200 OK\r\nx-backend: b2\r\nSet-Cookie: sid=b2-00ff; Path=/; HttpOnly\r\n\r\nbody");
        assert_eq!(
            h,
            Some(ResponseHead {
                status: 200,
                backend: Some("b2".into()),
                sid: Some("b2-00ff".into()),
            })
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").map(|h| h.status),
            Some(503)
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nx-backend: b2\r\n"), None, "incomplete");
        assert_eq!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_head(b"HTTP/1.1 abc\r\n\r\n"), None);
    }
}
