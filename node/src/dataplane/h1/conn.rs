//! One client connection on Shoal's own HTTP/1.1 path: requests are read
//! whole into the connection's buffer, forwarded on a kept-alive backend
//! connection, and the response streamed back, until the client closes,
//! goes idle, the node drains, or a request needs hyper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chunked::ChunkedEnd;
use super::head::{self, Framing, Parsed};
use super::io::{HttpRelay, make_room};
use crate::dataplane::body::RequestBodyError;
use crate::dataplane::headers;
use crate::dataplane::http::{AttemptError, Binding, HttpProxy, HttpSite, Tries, Upstream, request_hash};
use crate::dataplane::lazy_timer::LazyTimer;
use crate::pool::{Backend, InFlight, Outcome};

/// How a connection left this path.
pub enum Ending<S> {
    /// Closed (by either side, a timeout or the node draining).
    Closed,
    /// A request this path does not take: hyper serves the connection
    /// from here, starting with `buffered` (the request's bytes so far).
    Handoff { stream: S, buffered: Bytes },
}

/// What a client connection needs from its listener.
pub struct Settings<'a> {
    pub proxy: &'a HttpProxy,
    pub peer: SocketAddr,
    /// Longest wait for a next request on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Longest a request head may take from its first byte.
    pub header_timeout: Duration,
    /// Largest request head; a bigger one goes to hyper, which answers 431.
    pub max_header_bytes: usize,
    pub shutdown: &'a CancellationToken,
}

/// Size of the buffer a response body is read into.
const BODY_CHUNK: usize = 16 * 1024;

/// Serves `stream`, whose first bytes (`first`) were read already, on the
/// I/O interface `R`. Errors are the connection's end, said for the debug
/// log.
pub async fn serve<R: HttpRelay>(
    settings: &Settings<'_>,
    mut stream: R::Stream,
    first: &[u8],
) -> Result<Ending<R::Stream>, String> {
    // The listener's settings, held from one request to the next and
    // checked for a reload (one pointer comparison) as each request is
    // parsed: taking a reference on every request would move the shared
    // count's cache line between the cores. A reload takes effect at the
    // connection's next request; until then (the idle timeout at most) an
    // idle connection keeps the previous settings alive.
    let mut site = arc_swap::Cache::new(&settings.proxy.site);
    let mut conn = ClientConn {
        s: settings,
        addr: head::ClientAddr::new(settings.peer.ip()),
        answered: Instant::now(),
        client_timer: LazyTimer::default(),
        backend_timer: LazyTimer::default(),
        inbuf: Vec::with_capacity(first.len().max(4096)),
        out: Vec::with_capacity(4096),
        rbuf: Vec::with_capacity(BODY_CHUNK),
    };
    conn.inbuf.extend_from_slice(first);
    // When the head being read began; read from the clock only if it
    // does not arrive whole at once (most do: no clock read for them).
    let mut head_started: Option<Instant> = None;
    // Where the search for the end of the head resumes: a head trickling
    // in is scanned once, not parsed again from its start on every read
    // (a client sending a byte at a time would make that quadratic).
    let mut scanned = 0;
    // The node's drain, waited for between requests: registered once for
    // the connection's life rather than once per wait.
    let mut drained = std::pin::pin!(settings.shutdown.cancelled());
    loop {
        let (prepared, arrived) = loop {
            // The first bytes are parsed at once, so a request line that
            // is wrong (TLS on the plain port, say) goes to hyper's 400
            // without waiting for a blank line that may never come.
            let step = if scanned == 0 || ends_head(&conn.inbuf, scanned) {
                conn.prepare(site.load())
            } else {
                Step::Partial
            };
            scanned = conn.inbuf.len();
            match step {
                Step::Ready(p) => break (p, Instant::now()),
                Step::Handoff(why) => {
                    tracing::trace!(client = %settings.peer, why, "request handed to hyper");
                    return Ok(Ending::Handoff {
                        stream,
                        buffered: Bytes::from(std::mem::take(&mut conn.inbuf)),
                    });
                }
                Step::Partial if conn.inbuf.len() >= settings.max_header_bytes => {
                    return Ok(Ending::Handoff {
                        stream,
                        buffered: Bytes::from(std::mem::take(&mut conn.inbuf)),
                    });
                }
                Step::Partial => {}
            }
            let waiting = conn.inbuf.is_empty();
            let read = if waiting {
                // Between requests: the idle timeout, and a draining node
                // closes the connection here.
                tokio::select! {
                    // A request already here is served (and its response
                    // says close) before a drain closes the connection.
                    biased;
                    r = conn.client_timer.run(conn.answered + settings.idle_timeout, read_more::<R>(&mut stream, &mut conn.inbuf)) => r,
                    () = &mut drained => return Ok(Ending::Closed),
                }
            } else {
                let started = *head_started.get_or_insert_with(Instant::now);
                conn.client_timer
                    .run(
                        started + settings.header_timeout,
                        read_more::<R>(&mut stream, &mut conn.inbuf),
                    )
                    .await
            };
            match read {
                Ok(Ok(0)) if waiting => return Ok(Ending::Closed),
                Ok(Ok(0)) => return Err("client closed within a request head".into()),
                Ok(Ok(_)) if waiting => head_started = None,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("reading a request: {e}")),
                Err(_) if waiting => return Ok(Ending::Closed),
                Err(_) => {
                    return Err(format!(
                        "request head not complete within {:?}",
                        settings.header_timeout
                    ));
                }
            }
        };
        let keep = conn.exchange::<R>(&mut stream, prepared, arrived).await?;
        scanned = 0;
        head_started = None;
        if !keep {
            // Our FIN after the last response byte.
            R::shutdown(&mut stream).await;
            return Ok(Ending::Closed);
        }
    }
}

/// Whether `buf` holds the blank line that ends a head, looking from a
/// little before `from` (the line may straddle two reads).
fn ends_head(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf.get(start..)
        .is_some_and(|tail| tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n"))
}

/// Reads what the client sent next into `buf`; 0 at its end.
async fn read_more<R: HttpRelay>(stream: &mut R::Stream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    make_room(buf, 1024, 4096);
    R::read_more(stream, buf).await
}

/// A request whose head is complete, taken apart into what the exchange
/// needs (nothing here borrows the connection's buffer).
struct Prepared<'s> {
    head_len: usize,
    body_len: usize,
    /// The client asked to close after this request.
    close: bool,
    is_head: bool,
    idempotent: bool,
    request_id: headers::RequestId,
    site: &'s HttpSite,
    upstream: &'s Upstream,
    hash: Option<u64>,
    binding: Option<Binding>,
}

/// A response the proxy makes itself, and whether the connection ends
/// after it (a draining node ends it anyway).
struct Local<'a> {
    status: StatusCode,
    why: &'a str,
    extra: Option<(&'a [u8], &'a [u8])>,
    close: bool,
}

// Returned once per request and matched at once; boxing `Ready` would
// add the allocation the inline request id avoids.
#[allow(clippy::large_enum_variant)]
enum Step<'s> {
    Partial,
    Handoff(&'static str),
    Ready(Prepared<'s>),
}

struct ClientConn<'a, 's> {
    s: &'a Settings<'s>,
    /// The client's address as the backend's headers give it.
    addr: head::ClientAddr,
    /// When the last answer's head was ready, then when it was written
    /// (or when the connection began): the idle timeout runs from here.
    answered: Instant,
    /// Times the waits for the client: its next request, the rest of a
    /// head, taking a response.
    client_timer: LazyTimer,
    /// Times the waits for the backend's response head.
    backend_timer: LazyTimer,
    /// The client's bytes not yet served: the current request first.
    inbuf: Vec<u8>,
    /// The request as the backend gets it, then the response head (and
    /// first body bytes) as the client gets it.
    out: Vec<u8>,
    /// The backend's bytes.
    rbuf: Vec<u8>,
}

impl ClientConn<'_, '_> {
    /// Parses the buffered head; on success the backend's request head is
    /// in `out`.
    fn prepare<'s>(&mut self, site: &'s HttpSite) -> Step<'s> {
        let mut header_slots = head::header_slots();
        let head = match head::parse_request(&self.inbuf, &mut header_slots) {
            Parsed::Partial => return Step::Partial,
            Parsed::Unsupported(why) => return Step::Handoff(why),
            Parsed::Complete(h) => h,
        };
        // Beyond the listener's limit: hyper streams it and answers 413.
        if head.body_len > site.max_body_bytes {
            return Step::Handoff("request body over max_body_bytes");
        }
        let upstream: &Upstream = site
            .routes
            .iter()
            .find(|r| r.matcher.matches_request(Some(head.host), head.path(), head.headers))
            .map_or(&site.default, |r| &r.upstream);
        let pool = &upstream.pool;
        let client = self.s.peer;
        let request_id = headers::request_id(head.headers);
        let hash = pool
            .needs_hash()
            .then(|| request_hash(&pool.hash_key, head.path(), head.headers, client));
        let binding = site.binding(pool, head.headers, client);
        self.out.clear();
        head::write_backend_request(&head, &self.addr, site.proto, request_id.as_bytes(), &mut self.out);
        // The head fits in the buffer, so its length fits in usize; the
        // body is at most MAX_BUFFERED_BODY.
        let body_len = usize::try_from(head.body_len).unwrap_or(usize::MAX);
        Step::Ready(Prepared {
            head_len: head.len,
            body_len,
            close: head.close,
            is_head: head.is_head(),
            idempotent: head.idempotent(),
            request_id,
            hash,
            binding,
            upstream,
            site,
        })
    }

    /// Reads the body, forwards the request, answers the client. Whether
    /// the connection stays open for another request.
    async fn exchange<R: HttpRelay>(
        &mut self,
        stream: &mut R::Stream,
        p: Prepared<'_>,
        arrived: Instant,
    ) -> Result<bool, String> {
        let proxy = self.s.proxy;
        proxy.stats.here().requests.fetch_add(1, Ordering::Relaxed);
        let site = p.site;
        let whole = p.head_len.saturating_add(p.body_len);
        while self.inbuf.len() < whole {
            match tokio::time::timeout(site.client_idle, read_more::<R>(stream, &mut self.inbuf)).await {
                Ok(Ok(0)) => return Err("client closed within a request body".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("reading a request body: {e}")),
                Err(_) => {
                    // As hyper's path answers a stalled upload; the rest
                    // of the body may still come, so the connection ends.
                    let stalled = RequestBodyError::Stalled(site.client_idle);
                    let answer = Local {
                        status: stalled.status(),
                        why: &stalled.to_string(),
                        extra: None,
                        close: true,
                    };
                    return self.answer_locally::<R>(stream, &p, arrived, answer).await;
                }
            }
        }
        self.out.extend_from_slice(&self.inbuf[p.head_len..whole]);
        self.inbuf.drain(..whole);

        if let Some(limiter) = &site.rate_limit
            && let Err(wait) = limiter.check(self.s.peer.ip(), std::time::Instant::now())
        {
            proxy.stats.here().rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut digits = itoa::Buffer::new();
            let answer = Local {
                status: StatusCode::TOO_MANY_REQUESTS,
                why: "rate limit exceeded for your address",
                extra: Some((
                    b"retry-after",
                    digits.format(headers::retry_after_secs(wait)).as_bytes(),
                )),
                close: p.close,
            };
            return self.answer_locally::<R>(stream, &p, arrived, answer).await;
        }

        let pool = &*p.upstream.pool;
        let preferred = p.binding.as_ref().and_then(|b| b.bound.clone());
        let mut tries = Tries::new(site, pool, p.hash, preferred.as_ref(), p.idempotent);
        while let Some((in_flight, _retry)) = tries.next().await {
            match self.attempt::<R>(&p, &in_flight).await {
                Ok(answer) => {
                    drop(tries);
                    return self.relay::<R>(stream, &p, arrived, in_flight, answer).await;
                }
                // A body read whole cannot fail later.
                Err(e) => {
                    if !tries.failed(Arc::clone(in_flight.backend()), e, true) {
                        break;
                    }
                }
            }
        }
        let (status, why) = tries.unanswered();
        let answer = Local {
            status,
            why: &why,
            extra: None,
            close: p.close,
        };
        self.answer_locally::<R>(stream, &p, arrived, answer).await
    }

    /// A response the proxy makes itself.
    async fn answer_locally<R: HttpRelay>(
        &mut self,
        stream: &mut R::Stream,
        p: &Prepared<'_>,
        arrived: Instant,
        answer: Local<'_>,
    ) -> Result<bool, String> {
        let close = answer.close || self.s.shutdown.is_cancelled();
        self.out.clear();
        head::write_local_response(
            answer.status,
            answer.why,
            p.request_id.as_bytes(),
            answer.extra,
            close,
            &mut self.out,
        );
        let stats = self.s.proxy.stats.here();
        stats.count_status(answer.status);
        self.answered = Instant::now();
        stats.latency.observe(self.answered - arrived);
        self.write_client::<R>(stream, p.site.client_idle).await?;
        Ok(!close)
    }

    /// Writes `out` to the client, which has `idle` from the last answer
    /// to take it; the idle timeout then runs from the write's end.
    async fn write_client<R: HttpRelay>(&mut self, stream: &mut R::Stream, idle: Duration) -> Result<(), String> {
        match self
            .client_timer
            .run(self.answered + idle, R::write_all(stream, &mut self.out))
            .await
        {
            Ok(Ok(())) => {
                self.answered = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => Err(format!("writing to the client: {e}")),
            Err(_) => Err(format!("client read nothing for {idle:?}")),
        }
    }

    /// One try on `in_flight`'s backend: sends `out` and reads the
    /// response head into `rbuf`; once it is there, `out` holds the head
    /// as the client gets it.
    async fn attempt<R: HttpRelay>(
        &mut self,
        p: &Prepared<'_>,
        in_flight: &InFlight,
    ) -> Result<Answer<R::Stream>, AttemptError> {
        let upstream = p.upstream;
        let pool = &*upstream.pool;
        let draining = self.s.shutdown;
        let backend = in_flight.backend();
        let started = Instant::now();
        let mut kept = R::take_idle(upstream, backend.id, started);
        loop {
            let reused = kept.is_some();
            let mut conn = match kept.take() {
                Some(c) => c,
                None => match R::connect(backend.addr, pool.connect_timeout).await {
                    Ok(c) => c,
                    Err(_) => {
                        backend.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                        backend.observe_latency(pool.connect_timeout);
                        return Err(AttemptError::Connect);
                    }
                },
            };
            self.rbuf.clear();
            // The response timeout covers the send too: a backend that
            // stops reading is as stuck as one that does not answer.
            let sent = if reused { started } else { Instant::now() };
            let (out, rbuf) = (&mut self.out, &mut self.rbuf);
            let head = self
                .backend_timer
                .run(sent + pool.response_timeout, async {
                    R::send_all(&mut conn, out).await.map_err(HeadError::Send)?;
                    read_head::<R, _>(&mut conn, rbuf, p.is_head, |resp| {
                        render_response(resp, p, backend, draining.is_cancelled(), out)
                    })
                    .await
                })
                .await;
            let failure = match head {
                Ok(Ok((head_len, code, rendered))) => {
                    self.answered = Instant::now();
                    backend.observe_latency_at(self.answered - started, self.answered.into_std());
                    let outcome = if code >= 500 {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    pool.report(backend, outcome);
                    return Ok(Answer {
                        conn,
                        head_len,
                        code,
                        rendered,
                    });
                }
                Err(_) => {
                    backend.counters.failures.fetch_add(1, Ordering::Relaxed);
                    backend.observe_latency(pool.response_timeout);
                    return Err(AttemptError::Timeout);
                }
                Ok(Err(e)) => e,
            };
            // A kept-alive connection the backend closed meanwhile: the
            // request goes again on a new one, as every proxy does, if it
            // surely was not processed (the write failed) or may be sent
            // twice. Not the backend's failure.
            let nothing_back = self.rbuf.is_empty() && failure.is_disconnect();
            if reused && nothing_back && (matches!(failure, HeadError::Send(_)) || p.idempotent) {
                tracing::debug!(backend = %backend.name, error = %failure, "kept-alive backend connection was closed; retrying on a new one");
                continue;
            }
            backend.counters.failures.fetch_add(1, Ordering::Relaxed);
            backend.observe_latency(started.elapsed().max(Duration::from_millis(1)));
            return Err(AttemptError::BeforeResponse(failure.to_string()));
        }
    }

    /// Sends the response head (in `out`) and the body bytes that came
    /// with it (in `rbuf`, after the backend's head) to the client, then
    /// the rest of the body as it arrives; keeps the backend connection
    /// when it can carry another request.
    async fn relay<R: HttpRelay>(
        &mut self,
        stream: &mut R::Stream,
        p: &Prepared<'_>,
        arrived: Instant,
        in_flight: InFlight,
        answer: Answer<R::Stream>,
    ) -> Result<bool, String> {
        let site = p.site;
        let backend = in_flight.backend();
        let Answer {
            conn: mut backend_conn,
            head_len,
            code,
            rendered,
        } = answer;
        let stats = self.s.proxy.stats.here();
        stats.count_status(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY));
        stats.latency.observe(self.answered - arrived);

        // The body bytes that came with the head.
        let mut body = BodyEnd::new(rendered.framing);
        let after_head = &self.rbuf[head_len..];
        let (take, done) = body
            .scan(after_head)
            .map_err(|e| format!("backend {:?}: {e}", backend.name))?;
        let mut clean = take == after_head.len();
        self.out.extend_from_slice(&after_head[..take]);
        self.write_client::<R>(stream, site.client_idle).await?;

        if !done {
            clean = relay_rest::<R>(stream, &mut backend_conn, &mut self.rbuf, &mut body, p, backend).await?;
            // The idle timeout runs from the body's end.
            self.answered = Instant::now();
        }
        if rendered.reusable && clean {
            R::put_idle(p.upstream, backend.id, backend_conn, self.answered);
        }
        drop(in_flight);
        Ok(!rendered.close)
    }
}

/// Copies the rest of the body from the backend to the client; whether
/// the backend sent nothing past its end.
async fn relay_rest<R: HttpRelay>(
    stream: &mut R::Stream,
    backend_conn: &mut R::Stream,
    buf: &mut Vec<u8>,
    body: &mut BodyEnd,
    p: &Prepared<'_>,
    backend: &Arc<Backend>,
) -> Result<bool, String> {
    let pool = &*p.upstream.pool;
    let client_idle = p.site.client_idle;
    loop {
        buf.clear();
        make_room(buf, BODY_CHUNK, BODY_CHUNK);
        let read = tokio::time::timeout(pool.response_timeout, R::read_more(backend_conn, buf)).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                backend.counters.failures.fetch_add(1, Ordering::Relaxed);
                return Err(format!("backend {:?} failed mid-response: {e}", backend.name));
            }
            Err(_) => {
                backend.counters.failures.fetch_add(1, Ordering::Relaxed);
                pool.report(backend, Outcome::Failure);
                tracing::warn!(backend = %backend.name, idle = ?pool.response_timeout, "backend stalled mid-response; cutting it");
                return Err(format!("backend {:?} stalled mid-response", backend.name));
            }
        };
        if n == 0 {
            if body.until_close() {
                return Ok(true);
            }
            backend.counters.failures.fetch_add(1, Ordering::Relaxed);
            return Err(format!("backend {:?} closed mid-response", backend.name));
        }
        let (take, done) = body.scan(buf).map_err(|e| format!("backend {:?}: {e}", backend.name))?;
        // Bytes past the body's end are the backend's mistake: not sent,
        // and the connection not kept.
        let clean = take == buf.len();
        buf.truncate(take);
        match tokio::time::timeout(client_idle, R::write_all(stream, buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("writing to the client: {e}")),
            Err(_) => return Err(format!("client read nothing for {client_idle:?}")),
        }
        if done {
            return Ok(clean);
        }
    }
}

/// A backend's answer whose head has arrived.
struct Answer<S> {
    conn: S,
    /// Of the backend's head, at the start of `rbuf`.
    head_len: usize,
    code: u16,
    rendered: Rendered,
}

/// What writing the client's response head decided.
struct Rendered {
    framing: Framing,
    /// The backend connection may carry another request.
    reusable: bool,
    /// The client connection ends after this response.
    close: bool,
}

/// Writes the client's response head into `out` and records the sticky
/// binding: the backend answered.
fn render_response(
    resp: &head::ResponseHead<'_, '_>,
    p: &Prepared<'_>,
    backend: &Arc<Backend>,
    draining: bool,
    out: &mut Vec<u8>,
) -> Rendered {
    let close = p.close || resp.framing == Framing::UntilClose || draining;
    let cookie = p
        .binding
        .as_ref()
        .and_then(|b| p.site.stick(&p.upstream.pool, b, backend, resp.headers));
    out.clear();
    head::write_client_response(
        resp,
        p.request_id.as_bytes(),
        cookie.as_ref().map(HeaderValue::as_bytes),
        close,
        out,
    );
    Rendered {
        framing: resp.framing,
        reusable: resp.reusable,
        close,
    }
}

/// Why a response head did not arrive.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    /// Sending the request failed: the backend did not get all of it.
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("closed before responding")]
    Closed,
    #[error("{0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The connection was gone (not a bad answer).
    fn is_disconnect(&self) -> bool {
        match self {
            Self::Closed => true,
            Self::Send(e) | Self::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            ),
            Self::Malformed(_) => false,
        }
    }
}

/// Reads a backend's response head into `buf`, skipping interim (1xx)
/// responses; the final head's length and status code, and what
/// `render` made of it (parsed once, where it was found complete).
async fn read_head<R: HttpRelay, T>(
    conn: &mut R::Stream,
    buf: &mut Vec<u8>,
    is_head: bool,
    render: impl FnOnce(&head::ResponseHead<'_, '_>) -> T,
) -> Result<(usize, u16, T), HeadError> {
    loop {
        if !buf.is_empty() {
            let mut header_slots = head::header_slots();
            match head::parse_response(buf, &mut header_slots, is_head) {
                Err(why) => return Err(HeadError::Malformed(why)),
                Ok(Some(h)) if h.code == 101 => return Err(HeadError::Malformed("101 to a request without upgrade")),
                Ok(Some(h)) if (100..200).contains(&h.code) => {
                    let len = h.len;
                    buf.drain(..len);
                    continue;
                }
                Ok(Some(h)) => return Ok((h.len, h.code, render(&h))),
                Ok(None) if buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(HeadError::Malformed("response head too large"));
                }
                Ok(None) => {}
            }
        }
        make_room(buf, 1024, BODY_CHUNK);
        match R::read_more(conn, buf).await {
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Largest backend response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Where a response body ends, by its framing.
enum BodyEnd {
    Empty,
    Length(u64),
    Chunked(ChunkedEnd),
    UntilClose,
}

impl BodyEnd {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Empty,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(ChunkedEnd::default()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    fn until_close(&self) -> bool {
        matches!(self, Self::UntilClose)
    }

    /// Of `bytes` (the next ones from the backend): how many belong to the
    /// body, and whether the body is complete with them.
    fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), super::chunked::ChunkError> {
        Ok(match self {
            Self::Empty => (0, true),
            Self::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                // `take` is at most `bytes.len()`.
                (take as usize, *left == 0)
            }
            Self::Chunked(c) => match c.feed(bytes)? {
                Some(n) => (n, true),
                None => (bytes.len(), false),
            },
            Self::UntilClose => (bytes.len(), false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(ends_head(head, 0));
        assert!(!ends_head(&head[..head.len() - 1], 0));
        // The blank line straddles the previous read's end.
        for from in head.len() - 4..head.len() {
            assert!(ends_head(head, from), "from {from}");
        }
        assert!(ends_head(b"GET / HTTP/1.1\nHost: h\n\n", 20));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 10));
    }
}
