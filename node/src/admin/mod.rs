//! The admin HTTP server on `node.admin_addr`.
//!
//! - `GET /`: the dashboard; `GET /status`: the node as JSON (see
//!   `status.rs`); `GET /metrics`: Prometheus text; `GET /healthz`.
//! - `GET /pools/{pool}/backends/{backend}`: one backend as JSON.
//! - `PUT /pools/{pool}/backends/{backend}/state` with
//!   `{"state": "ready" | "drain" | "maint"}`.
//!
//! With `node.admin_token_file`, writes need `Authorization: Bearer TOKEN`;
//! reads stay open (the admin address defaults to loopback).

pub mod metrics;
pub mod status;
pub mod table;

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pool::AdminState;
use crate::server::NodeState;

/// The dashboard: one self-contained page that polls `/status`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Largest admin request body accepted.
const MAX_BODY: usize = 4096;

pub async fn serve(listener: TcpListener, state: Arc<NodeState>, tracker: TaskTracker, cancel: CancellationToken) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let builder = builder.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), svc));
            tokio::select! {
                _ = conn.as_mut() => {}
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(state: &NodeState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        ["status"] if read => json(StatusCode::OK, &status::build(state)),
        ["metrics"] if read => {
            let mut resp = text(StatusCode::OK, &metrics::render(state));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        [""] if read => {
            let mut resp = text(StatusCode::OK, DASHBOARD);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        ["healthz"] if read => text(StatusCode::OK, "ok\n"),
        ["pools", pool, "backends", backend] if read => get_backend(state, pool, backend),
        ["pools", pool, "backends", backend, "state"] if method == Method::PUT => {
            if let Some(denied) = check_token(state, &req) {
                return denied;
            }
            let (pool, backend) = (pool.to_string(), backend.to_string());
            match read_json::<StateChange>(req).await {
                Ok(change) => set_state(state, &pool, &backend, &change.state),
                Err(resp) => resp,
            }
        }
        ["status"] | ["healthz"] | ["metrics"] | [""] | ["pools", _, "backends", _] => not_allowed("GET, HEAD"),
        ["pools", _, "backends", _, "state"] => not_allowed("PUT"),
        _ => text(StatusCode::NOT_FOUND, "not found; try /status\n"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateChange {
    state: String,
}

#[derive(Serialize)]
struct StateChanged<'a> {
    pool: &'a str,
    backend: &'a str,
    state: &'static str,
    previous: &'static str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn get_backend(state: &NodeState, pool: &str, backend: &str) -> Response<Full<Bytes>> {
    let current = state.current.load();
    match current.pool(pool).and_then(|p| p.backend(backend)) {
        Some(b) => {
            let view = state.cluster.as_ref().map(|c| c.view());
            let peers = view.as_ref().and_then(|v| v.backend(pool, backend));
            json(StatusCode::OK, &status::backend(state.id.as_str(), b, peers))
        }
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no backend {backend:?} in pool {pool:?}"),
        ),
    }
}

fn set_state(state: &NodeState, pool: &str, backend: &str, wanted: &str) -> Response<Full<Bytes>> {
    let Some(new) = AdminState::parse(wanted) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("unknown state {wanted:?}: use \"ready\", \"drain\" or \"maint\""),
        );
    };
    let current = state.current.load();
    let Some(b) = current.pool(pool).and_then(|p| p.backend(backend)) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no backend {backend:?} in pool {pool:?}"),
        );
    };
    let previous = b.set_admin_state(new);
    tracing::info!(
        pool,
        backend,
        state = new.as_str(),
        previous = previous.as_str(),
        "backend state set by the admin API"
    );
    json(
        StatusCode::OK,
        &StateChanged {
            pool,
            backend,
            state: new.as_str(),
            previous: previous.as_str(),
        },
    )
}

/// `Some(401)` unless the request carries the configured bearer token.
fn check_token(state: &NodeState, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let token = state.admin_token.load_full()?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return None;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "admin writes need Authorization: Bearer <token>",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Full<Bytes>>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body larger than {MAX_BODY} bytes"),
                )
            } else {
                error(StatusCode::BAD_REQUEST, &format!("reading the body failed: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding failed: {e}\n")),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { error: message })
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, &format!("allowed: {allow}\n"));
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
