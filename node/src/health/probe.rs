//! One active health probe: a TCP connect, or an HTTP GET whose status must
//! be 2xx or 3xx. Each probe uses a fresh connection, as a client would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::HealthKind;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("unhealthy status {0}")]
    Status(http::StatusCode),
}

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub kind: HealthKind,
    pub path: String,
    pub host: Option<String>,
    pub timeout: Duration,
}

pub async fn probe(spec: &ProbeSpec, addr: SocketAddr) -> Result<(), ProbeError> {
    match tokio::time::timeout(spec.timeout, probe_inner(spec, addr)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(spec.timeout)),
    }
}

async fn probe_inner(spec: &ProbeSpec, addr: SocketAddr) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(ProbeError::Connect)?;
    if spec.kind == HealthKind::Tcp {
        return Ok(());
    }
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends with the probe: it is dropped on return.
    let conn = tokio::spawn(conn);
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let req = http::Request::get(spec.path.as_str())
        .header(http::header::HOST, host)
        .header(
            http::header::USER_AGENT,
            concat!("shoal-health/", env!("CARGO_PKG_VERSION")),
        )
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let result = sender.send_request(req).await;
    conn.abort();
    let status = result?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}
