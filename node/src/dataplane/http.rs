//! The L7 proxy: hyper HTTP/1.1 (and HTTP/2 over TLS) server connections
//! per client; each request is rate-limited, routed to a pool, balanced
//! onto a backend and forwarded on a pooled keep-alive connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::{BodySlot, RequestBody, RequestBodyError, ResponseBody, Tracked};
use super::bridge;
use super::h1::BackendConns;
use super::headers::{self, HeaderSource};
use super::idle::ConnActivity;
use super::ratelimit::RateLimiter;
use super::route::RouteMatch;
use super::stats::ListenerStats;
use super::workers;
use crate::affinity::sticky::StickyKey;
use crate::affinity::{AffinityTable, Found, now_unix_ms};
use crate::balance::{PickCtx, hash_bytes, hash_ip};
use crate::config::HashKey;
use crate::config::StickyMode;
use crate::pool::{Backend, InFlight, NoAttempt, NoBackend, Outcome, Pool, RequestGuard, RetryGuard};

pub type HttpClient = Client<HttpConnector, RequestBody>;

/// A pool as the HTTP proxy uses it: its backends and keep-alive
/// connection pools to them, one per data-plane worker.
pub struct Upstream {
    pub pool: Arc<Pool>,
    clients: Vec<HttpClient>,
    /// Shoal's own HTTP/1.1 path's kept-alive backend connections.
    pub(super) conns: Arc<BackendConns>,
}

impl Upstream {
    /// Keeps `previous`'s connection pools when the connection settings are
    /// unchanged, so a reload does not drop warm backend connections.
    pub fn new(pool: Arc<Pool>, previous: Option<&Upstream>, workers: usize) -> Self {
        let (clients, conns) = match previous {
            Some(p)
                if p.pool.connect_timeout == pool.connect_timeout
                    && p.pool.keepalive_timeout == pool.keepalive_timeout
                    && p.clients.len() == workers.max(1) =>
            {
                (p.clients.clone(), Arc::clone(&p.conns))
            }
            _ => (
                (0..workers.max(1)).map(|_| build_client(&pool)).collect(),
                Arc::new(BackendConns::new(pool.keepalive_timeout, workers)),
            ),
        };
        Self { pool, clients, conns }
    }

    /// The kept-alive connections of Shoal's own HTTP/1.1 path.
    pub fn backend_conns(&self) -> &Arc<BackendConns> {
        &self.conns
    }

    /// The calling worker's connection pool: a connection is reused only by
    /// the thread that owns it.
    fn client(&self) -> &HttpClient {
        &self.clients[workers::current() % self.clients.len()]
    }
}

fn build_client(pool: &Pool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(pool.connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(pool.keepalive_timeout)
        .pool_max_idle_per_host(1024)
        .build(connector)
}

pub struct Route {
    pub matcher: RouteMatch,
    pub upstream: Arc<Upstream>,
}

/// An HTTP listener's request-handling settings; replaced whole on reload
/// while connections stay open, so the next request uses the new ones.
pub struct HttpSite {
    pub listener: Arc<str>,
    pub default: Arc<Upstream>,
    pub routes: Vec<Route>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Longest pause of a client uploading a body, or not reading a
    /// response, and the idle timeout of upgraded connections.
    pub client_idle: Duration,
    /// "http" or "https", for X-Forwarded-Proto.
    pub proto: &'static str,
    /// Sticky bindings (node-wide, replicated).
    pub affinity: Arc<AffinityTable>,
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: u64,
}

/// The request-handling half of an HTTP listener.
pub struct HttpProxy {
    pub site: ArcSwap<HttpSite>,
    pub stats: Arc<ListenerStats>,
}

/// The attempts of one request on a pool's backends, within the pool's
/// retries and retry budget. A failed attempt is repeated on another
/// backend only when nothing reached the backend (a connect failure) or
/// the request may be sent twice, and never once its body has begun to
/// stream.
pub(super) struct Tries<'a> {
    site: &'a HttpSite,
    pool: &'a Pool,
    ctx: PickCtx,
    preferred: Option<&'a Arc<Backend>>,
    idempotent: bool,
    next: u32,
    last_error: Option<(Arc<Backend>, AttemptError)>,
    no_backend: NoBackend,
    done: bool,
    _counted: RequestGuard<'a>,
}

impl<'a> Tries<'a> {
    pub(super) fn new(
        site: &'a HttpSite,
        pool: &'a Pool,
        hash: Option<u64>,
        preferred: Option<&'a Arc<Backend>>,
        idempotent: bool,
    ) -> Self {
        Self {
            site,
            pool,
            ctx: PickCtx::new(hash),
            preferred,
            idempotent,
            next: 0,
            last_error: None,
            no_backend: NoBackend::NoneUsable,
            done: false,
            _counted: pool.budget.request(),
        }
    }

    /// A slot on the backend for the next attempt (and, for a retry, its
    /// place in the retry budget, held until dropped); `None` when there
    /// is no further attempt.
    pub(super) async fn next(&mut self) -> Option<(InFlight, Option<RetryGuard<'a>>)> {
        if self.done || self.next > self.pool.retries {
            return None;
        }
        let n = self.next;
        self.next += 1;
        match self.pool.next_attempt(&mut self.ctx, n, self.preferred).await {
            Ok(a) => Some(a),
            Err(NoAttempt::Budget) => None,
            Err(NoAttempt::NoBackend(e)) => {
                self.no_backend = e;
                None
            }
        }
    }

    /// Records a failed attempt on `backend`; whether to try another.
    pub(super) fn failed(&mut self, backend: Arc<Backend>, e: AttemptError, body_untouched: bool) -> bool {
        let pool = self.pool;
        pool.report(&backend, Outcome::Failure);
        self.ctx.exclude(backend.id);
        let retryable = body_untouched
            && match &e {
                AttemptError::Connect => true,
                AttemptError::BeforeResponse(_) => self.idempotent,
                AttemptError::Timeout | AttemptError::ClientBody(..) => false,
            };
        let (kind, detail) = match &e {
            AttemptError::Connect => ("connect", ""),
            AttemptError::BeforeResponse(d) => ("request", d.as_str()),
            AttemptError::Timeout => ("timeout", ""),
            AttemptError::ClientBody(_, d) => ("client", d.as_str()),
        };
        let attempt = self.next - 1;
        tracing::warn!(
            listener = %self.site.listener, pool = %pool.name, backend = %backend.name,
            attempt, kind, detail, will_retry = retryable && attempt < pool.retries,
            "backend attempt failed"
        );
        self.last_error = Some((backend, e));
        self.done = !retryable;
        retryable
    }

    /// What the client is told when no attempt got an answer.
    pub(super) fn unanswered(self) -> (StatusCode, String) {
        let pool = self.pool;
        match self.last_error {
            None if self.no_backend == NoBackend::Saturated => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "every usable backend in pool {:?} is at its connection limit",
                    &*pool.name
                ),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no usable backend in pool {:?}", &*pool.name),
            ),
            Some((b, AttemptError::Timeout)) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "backend {:?} did not respond within {:?}",
                    &*b.name, pool.response_timeout
                ),
            ),
            Some((b, AttemptError::Connect)) => (
                StatusCode::BAD_GATEWAY,
                format!("could not connect to backend {:?} (pool {:?})", &*b.name, &*pool.name),
            ),
            Some((b, AttemptError::BeforeResponse(_) | AttemptError::ClientBody(..))) => (
                StatusCode::BAD_GATEWAY,
                format!("backend {:?} failed before responding", &*b.name),
            ),
        }
    }
}

/// A sticky pool's view of one request.
pub(super) struct Binding {
    /// The sticky key the request carries, if any.
    key: Option<StickyKey>,
    /// The backend the key is bound to, when it is in the pool.
    pub(super) bound: Option<Arc<Backend>>,
    /// The sticky table's binding, for the modes that keep one.
    found: Option<Found>,
    now: u64,
}

/// Why an attempt on one backend failed.
pub(super) enum AttemptError {
    /// The connection was never established: nothing reached the backend.
    Connect,
    /// Failed before any response byte arrived (reset, closed).
    BeforeResponse(String),
    /// No response headers within the pool's response timeout.
    Timeout,
    /// The client's request body failed (aborted, stalled or too large):
    /// the client's doing, not the backend's; answered with the status.
    ClientBody(StatusCode, String),
}

impl HttpProxy {
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ResponseBody> {
        let arrived = Instant::now();
        // The task stays on its worker: one shard for the whole request.
        let stats = self.stats.here();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let site = self.site.load_full();
        let request_id = headers::request_id(req.headers()).to_header_value();
        let mut resp = match rate_limited(&site, client) {
            Some(limited) => {
                stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                limited
            }
            None => site.proxy(req, client, &request_id).await,
        };
        resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), request_id);
        stats.count_status(resp.status());
        stats.latency.observe(arrived.elapsed());
        resp
    }
}

/// 429 with Retry-After when the client is over its rate.
fn rate_limited(site: &HttpSite, client: SocketAddr) -> Option<Response<ResponseBody>> {
    let wait = site.rate_limit.as_ref()?.check(client.ip(), Instant::now()).err()?;

    let mut resp = local(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded for your address");
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(headers::retry_after_secs(wait)));
    Some(resp)
}

/// An HTTP/1.1 `Connection: upgrade` request (WebSocket and friends).
fn is_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Keeps the upgrade handshake headers through hop-by-hop stripping.
fn restore_upgrade(headers: &mut http::HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(v) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, v);
    }
}

impl HttpSite {
    fn upstream_for(&self, parts: &Parts) -> &Arc<Upstream> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(parts))
            .map_or(&self.default, |r| &r.upstream)
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        request_id: &HeaderValue,
    ) -> Response<ResponseBody> {
        if let Some(rejection) = reject_request(&req) {
            return rejection;
        }
        // A declared length over the limit is refused before any backend
        // sees it; a chunked body is counted as it streams.
        if http_body::Body::size_hint(req.body()).lower() > self.max_body_bytes {
            return closing(local(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body is larger than the listener's max_body_bytes ({} bytes)",
                    self.max_body_bytes
                ),
            ));
        }
        let (mut parts, body) = req.into_parts();
        let upstream = Arc::clone(self.upstream_for(&parts));
        let pool = &upstream.pool;
        let mut client_upgrade = None;
        let mut upgrade_header = None;
        if is_upgrade(&parts) {
            client_upgrade = parts.extensions.remove::<OnUpgrade>();
            upgrade_header = parts.headers.get(header::UPGRADE).cloned();
        }
        let path = match parts.uri.path_and_query() {
            Some(pq) => pq.clone(),
            None => http::uri::PathAndQuery::from_static("/"),
        };
        let hash = pool
            .needs_hash()
            .then(|| request_hash(&pool.hash_key, parts.uri.path(), &parts.headers, client));
        headers::strip_hop_by_hop(&mut parts.headers);
        restore_upgrade(&mut parts.headers, upgrade_header);
        // HTTP/2 carries the host in the URI; HTTP/1.1 backends want Host.
        if !parts.headers.contains_key(header::HOST)
            && let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, host);
        }
        headers::set_forwarding(&mut parts.headers, client.ip(), self.proto, request_id);
        let idempotent = headers::is_idempotent(parts.method.as_str());
        let binding = self.binding(pool, &parts.headers, client);
        let preferred = binding.as_ref().and_then(|b| b.bound.clone());
        let body = BodySlot::new(body);
        let mut tries = Tries::new(self, pool, hash, preferred.as_ref(), idempotent);
        while let Some((in_flight, _retry)) = tries.next().await {
            let backend = Arc::clone(in_flight.backend());
            match self
                .attempt(&upstream, in_flight, &parts, &path, &body, &mut client_upgrade)
                .await
            {
                Ok(mut resp) => {
                    if let Some(binding) = &binding
                        && let Some(cookie) = self.stick(pool, binding, &backend, resp.headers())
                    {
                        resp.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    return resp;
                }
                Err(AttemptError::ClientBody(status, why)) => {
                    tracing::debug!(listener = %self.listener, error = %why, "client request body failed");
                    return closing(local(status, &why));
                }
                Err(e) => {
                    if !tries.failed(backend, e, body.untouched()) {
                        break;
                    }
                }
            }
        }
        let (status, why) = tries.unanswered();
        local(status, &why)
    }

    /// The request's sticky key and the backend it is bound to, for a
    /// sticky pool.
    pub(super) fn binding(
        &self,
        pool: &Pool,
        headers: &(impl HeaderSource + ?Sized),
        client: SocketAddr,
    ) -> Option<Binding> {
        let s = pool.sticky.as_ref()?;
        let key = s.request_key(headers, client.ip());
        let now = now_unix_ms();
        let mut found = None;
        let bound = key.as_deref().and_then(|k| {
            if s.uses_table() {
                let f = found.insert(self.affinity.find(&pool.name, k, s.ttl, now)?);
                pool.backend(&f.backend).cloned()
            } else {
                pool.backend(s.backend_for_token(k)?).cloned()
            }
        });
        Some(Binding { key, bound, found, now })
    }

    /// Records the session's binding after `backend` answered with
    /// `response` headers; the Set-Cookie to add for `insert_cookie`.
    pub(super) fn stick(
        &self,
        pool: &Pool,
        binding: &Binding,
        backend: &Arc<Backend>,
        response: &(impl HeaderSource + ?Sized),
    ) -> Option<HeaderValue> {
        let s = pool.sticky.as_ref()?;
        let (key, now) = (binding.key.as_deref(), binding.now);
        let same = binding.bound.as_ref().is_some_and(|b| Arc::ptr_eq(b, backend));
        let found = binding.found.as_ref();
        match s.mode {
            StickyMode::InsertCookie => {
                if !same {
                    return s.set_cookie(&pool.name, &backend.name);
                }
            }
            StickyMode::LearnCookie => match s.learned(response) {
                Some(Some(value)) => self.affinity.bind(&pool.name, value, &backend.name, s.ttl, now),
                Some(None) => {
                    if let Some(k) = key {
                        self.affinity.unbind(&pool.name, k, s.ttl, now);
                    }
                }
                // Only a Set-Cookie binds: a use extends the binding that
                // named this backend, and nothing else.
                None => {
                    if let Some(k) = key
                        && same
                    {
                        self.affinity
                            .record_use(&pool.name, k, &backend.name, found, s.ttl, now);
                    }
                }
            },
            StickyMode::Header | StickyMode::SourceIp => {
                if let Some(k) = key {
                    self.affinity
                        .record_use(&pool.name, k, &backend.name, found, s.ttl, now);
                }
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        upstream: &Upstream,
        in_flight: InFlight,
        parts: &Parts,
        path: &http::uri::PathAndQuery,
        body: &BodySlot,
        client_upgrade: &mut Option<OnUpgrade>,
    ) -> Result<Response<ResponseBody>, AttemptError> {
        let pool = &upstream.pool;
        let backend = Arc::clone(in_flight.backend());
        let uri = Uri::builder()
            .scheme("http")
            .authority(backend.authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|e| AttemptError::BeforeResponse(e.to_string()))?;
        let (req_body, upload) = body.attempt(self.client_idle, self.max_body_bytes);
        let mut req = Request::new(req_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = parts.headers.clone();
        let started = Instant::now();
        // The response timeout runs from the end of the upload: a slow
        // client is bounded by its own idle timeout, not blamed on the
        // backend.
        let deadline = async {
            if let Some(upload) = &upload {
                upload.sent().await;
            }
            tokio::time::sleep(pool.response_timeout).await;
        };
        let result = tokio::select! {
            r = upstream.client().request(req) => Some(r),
            () = deadline => None,
        };
        let mut resp = match result {
            None => {
                backend.counters.failures.fetch_add(1, Ordering::Relaxed);
                backend.observe_latency(pool.response_timeout);
                return Err(AttemptError::Timeout);
            }
            Some(Err(e)) if e.is_connect() => {
                backend.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                backend.observe_latency(pool.connect_timeout);
                return Err(AttemptError::Connect);
            }
            Some(Err(e)) => {
                if let Some(client_error) = find_source::<RequestBodyError>(&e) {
                    return Err(AttemptError::ClientBody(
                        client_error.status(),
                        client_error.to_string(),
                    ));
                }
                backend.counters.failures.fetch_add(1, Ordering::Relaxed);
                backend.observe_latency(started.elapsed().max(Duration::from_millis(1)));
                return Err(AttemptError::BeforeResponse(error_chain(&e)));
            }
            Some(Ok(resp)) => resp,
        };
        let answered = Instant::now();
        backend.observe_latency_at(answered - started, answered);
        let outcome = if resp.status().is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        pool.report(&backend, outcome);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_upgrade.take()
        {
            return Ok(self.splice_upgrade(&mut resp, client_side, in_flight));
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, in_flight, pool.response_timeout, upload, Arc::clone(pool)),
        ))
    }

    /// Answers the client's upgrade with the backend's 101 and joins the two
    /// upgraded connections; the backend's in-flight count lasts as long.
    fn splice_upgrade(
        &self,
        resp: &mut Response<Incoming>,
        client_side: OnUpgrade,
        in_flight: InFlight,
    ) -> Response<ResponseBody> {
        let backend_side = hyper::upgrade::on(&mut *resp);
        let idle = self.client_idle;
        let listener = Arc::clone(&self.listener);
        tokio::spawn(async move {
            let backend = Arc::clone(in_flight.backend());
            match tokio::join!(client_side, backend_side) {
                (Ok(c), Ok(b)) => match bridge::bridge(TokioIo::new(c), TokioIo::new(b), idle).await {
                    Ok(moved) => {
                        tracing::debug!(%listener, backend = %backend.name, ?moved, "upgraded connection done")
                    }
                    Err(e) => {
                        tracing::debug!(%listener, backend = %backend.name, error = %e, "upgraded connection ended")
                    }
                },
                (c, b) => tracing::debug!(
                    %listener, backend = %backend.name,
                    client = ?c.err(), backend_error = ?b.err(), "upgrade did not complete"
                ),
            }
            drop(in_flight);
        });
        let mut out = Response::new(ResponseBody::local(Bytes::new()));
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let upgrade = resp.headers().get(header::UPGRADE).cloned();
        let mut headers = std::mem::take(resp.headers_mut());
        headers::strip_hop_by_hop(&mut headers);
        restore_upgrade(&mut headers, upgrade);
        *out.headers_mut() = headers;
        out
    }
}

/// Requests the proxy answers itself: methods it does not proxy, and
/// framing it cannot forward faithfully.
fn reject_request(req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
    if req.method() == Method::CONNECT {
        return Some(local(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported by this proxy",
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is malformed.
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Some(local(StatusCode::BAD_REQUEST, "HTTP/1.1 request without a Host header"));
    }
    // Only chunked framing is decoded; another transfer coding would reach
    // the backend undeclared once the hop-by-hop header is dropped.
    let te = req.headers().get_all(header::TRANSFER_ENCODING);
    if te.iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(b"chunked")) {
        return Some(local(
            StatusCode::NOT_IMPLEMENTED,
            "only the chunked transfer coding is supported",
        ));
    }
    None
}

/// The first error of type `E` in `e`'s source chain.
fn find_source<'a, E: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// `resp` with `Connection: close`: the client's request body was not read
/// to its end, so the connection cannot carry another request.
fn closing(mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A short plain-text response generated by the proxy itself.
pub fn local(status: StatusCode, why: &str) -> Response<ResponseBody> {
    let mut text = Vec::with_capacity(64 + why.len());
    headers::write_local_text(status, why, &mut text);
    let mut resp = Response::new(ResponseBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The hash of a request's balancing key; falls back to the client address
/// when the header or cookie is absent.
/// `path` is without the query.
pub fn request_hash(key: &HashKey, path: &str, headers: &(impl HeaderSource + ?Sized), client: SocketAddr) -> u64 {
    match key {
        HashKey::ClientIp => hash_ip(client.ip()),
        HashKey::Path => hash_bytes(path.as_bytes()),
        HashKey::Header(name) => headers
            .first(name.as_str())
            .map_or_else(|| hash_ip(client.ip()), hash_bytes),
        HashKey::Cookie(name) => cookie_value(headers, name).map_or_else(|| hash_ip(client.ip()), hash_bytes),
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie_value<'a>(headers: &'a (impl HeaderSource + ?Sized), name: &str) -> Option<&'a [u8]> {
    headers
        .values(header::COOKIE.as_str())
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// Adapts [`HttpProxy::handle`] to hyper's service interface, counting
/// each request as open on the client connection until its body is done.
pub fn service(
    proxy: Arc<HttpProxy>,
    client: SocketAddr,
    activity: Arc<ConnActivity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Tracked>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let open = activity.request();
        async move {
            let resp = proxy.handle(req, client).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                open.upgraded();
            }
            Ok(resp.map(|inner| Tracked { inner, open }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sid=abc ;x=y"));
        h.append(header::COOKIE, HeaderValue::from_static("late=2"));
        assert_eq!(cookie_value(&h, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&h, "late"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&h, "si"), None);
        assert_eq!(cookie_value(&h, "nope"), None);
    }

    #[test]
    fn local_responses_say_why() {
        let r = local(StatusCode::SERVICE_UNAVAILABLE, "no usable backend in pool \"web\"");
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("text/plain; charset=utf-8"))
        );
    }
}
