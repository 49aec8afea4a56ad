//! The admin HTTP server on `node.admin_addr`: `GET /status` (JSON) and
//! `GET /healthz`. Metrics, the dashboard and write endpoints arrive with
//! the cluster and traffic-management issues.

pub mod status;

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::NodeState;

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
                async move { Ok::<_, Infallible>(route(&state, &req)) }
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

fn route(state: &NodeState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/status" | "/healthz");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found; try /status\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/status" => match serde_json::to_vec_pretty(&status::build(state)) {
            Ok(json) => {
                let mut resp = Response::new(Full::new(Bytes::from(json)));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("status encoding failed: {e}\n"),
            ),
        },
        _ => text(StatusCode::OK, "ok\n"),
    }
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
