//! A small HTTP server used as a demo backend (`shoal backend`, and the
//! backends of `shoal demo`). Every response names the backend in an
//! `X-Backend` header and in the body, so balancing is visible with curl.
//!
//! Paths: `/health` (200), `/session` (sets a new `sid` session cookie),
//! `/echo` (streams the request body back), `/sink`
//! (reads the whole body, then answers with its size),

//! `/headers` (the request headers as received), `/status/{code}`,
//! `/drip?chunks=N&interval_ms=M` (a slow chunked stream), `/bytes?n=N` (N
//! bytes, streamed), `/upgrade` (accepts an Upgrade and echoes the upgraded
//! connection), anything else a greeting.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, Clone)]
pub struct DemoBackend {
    pub name: String,
    /// Added before every response except `/health`.
    pub delay: Duration,
    /// Answer every request except `/health` with this status (a backend
    /// that is up but broken).
    pub fail_with: Option<StatusCode>,
}

pub async fn serve(listener: TcpListener, backend: DemoBackend, cancel: CancellationToken) {
    let backend = Arc::new(backend);
    let tracker = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // half_close: a client may shut its write side and still wait for the
    // answer (the TCP proxy forwards such half-closes).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .half_close(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "demo backend accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let backend = Arc::clone(&backend);
        let builder = builder.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(respond(&backend, req, peer).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
            tokio::select! {
                _ = conn => {}
                () = cancel.cancelled() => {}
            }
        });
    }
    tracker.close();
}

async fn respond(backend: &DemoBackend, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return finish(backend, full(StatusCode::OK, "ok\n".to_string()));
    }
    if path == "/upgrade" {
        return finish(backend, upgrade_echo(req));
    }
    if !backend.delay.is_zero() {
        tokio::time::sleep(backend.delay).await;
    }
    if let Some(status) = backend.fail_with {
        return finish(backend, full(status, format!("{} fails on purpose\n", backend.name)));
    }

    let resp = match path.as_str() {
        "/echo" => {
            let mut resp = Response::new(req.into_body().boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        "/sink" => match req.into_body().collect().await {
            Ok(body) => full(StatusCode::OK, format!("received {} bytes\n", body.to_bytes().len())),
            Err(e) => full(StatusCode::BAD_REQUEST, format!("reading the body failed: {e}\n")),
        },
        "/session" => {
            // A new session, as an application's login would make: the
            // cookie names this backend, so stickiness is easy to check.
            let sid = format!("{}-{:016x}", backend.name, fastrand::u64(..));
            let mut resp = full(StatusCode::OK, format!("session {sid} on {}\n", backend.name));
            if let Ok(v) = HeaderValue::from_str(&format!("sid={sid}; Path=/; HttpOnly")) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, String::from_utf8_lossy(v.as_bytes())));
            }
            full(StatusCode::OK, text)
        }
        "/drip" => drip(req.uri().query().unwrap_or("")),
        "/bytes" => bytes(req.uri().query().unwrap_or("")),
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            full(code, format!("status {} from {}\n", code.as_u16(), backend.name))
        }
        _ => full(
            StatusCode::OK,
            format!("Hello from {} ({} {} via {})\n", backend.name, req.method(), path, peer),
        ),
    };
    finish(backend, resp)
}

fn finish(backend: &DemoBackend, mut resp: Response<Body>) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&backend.name) {
        resp.headers_mut().insert("x-backend", v);
    }
    resp
}

fn full(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accepts any `Upgrade` (WebSocket or other) and echoes the bytes of the
/// upgraded connection back, to show upgrades pass through the proxy.
fn upgrade_echo(mut req: Request<Incoming>) -> Response<Body> {
    let Some(protocol) = req.headers().get(header::UPGRADE).cloned() else {
        return full(StatusCode::BAD_REQUEST, "expected an Upgrade header\n".to_string());
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, protocol);
    resp
}

/// `n` bytes (`/bytes?n=N`, at most 1 GiB) streamed in 64 KiB frames.
fn bytes(query: &str) -> Response<Body> {
    let n: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("n="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(1 << 30);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
    tokio::spawn(async move {
        let frame = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut left = n;
        while left > 0 {
            let len = left.min(frame.len() as u64) as usize;
            if tx.send(Ok(Frame::data(frame.slice(..len)))).await.is_err() {
                return;
            }
            left -= len as u64;
        }
    });
    let mut resp = Response::new(BodyExt::boxed(ChannelBody(rx)));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

/// A chunked response of `chunks` lines, one every `interval_ms`.
fn drip(query: &str) -> Response<Body> {
    let mut chunks = 3u32;
    let mut interval = 200u64;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("chunks", v)) => chunks = v.parse().unwrap_or(chunks).min(1000),
            Some(("interval_ms", v)) => interval = v.parse().unwrap_or(interval).min(10_000),
            _ => {}
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(interval)).await;
            }
            if tx
                .send(Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Response::new(BodyExt::boxed(ChannelBody(rx)))
}

/// Frames from a channel as a streamed body.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx)
    }
}
