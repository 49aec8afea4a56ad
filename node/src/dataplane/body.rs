//! Body types of the HTTP proxy. Bodies are streamed frame by frame, never
//! collected, and a stream that stalls longer than its timeout ends with an
//! error instead of holding a connection forever.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::idle::IdleTimer;
use crate::pool::{InFlight, Outcome, Pool};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body, shared by the attempts of one request. The
/// first attempt that polls it takes it; until then a retry on another
/// backend can still send it.
pub enum BodySlot {
    /// No body (most GETs): nothing to share or wait for.
    Empty,
    Shared {
        slot: Arc<Mutex<Option<Incoming>>>,
        hint: SizeHint,
    },
}

impl BodySlot {
    pub fn new(body: Incoming) -> Self {
        if body.is_end_stream() {
            Self::Empty
        } else {
            Self::Shared {
                hint: body.size_hint(),
                slot: Arc::new(Mutex::new(Some(body))),
            }
        }
    }

    /// A body for one attempt, and (unless there is no body) the upload's
    /// progress; `idle` bounds how long the client may pause while
    /// uploading, `limit` how many bytes it may send.
    pub fn attempt(&self, idle: Duration, limit: u64) -> (RequestBody, Option<Arc<Upload>>) {
        let (source, hint, upload) = match self {
            Self::Empty => (Source::Done, SizeHint::with_exact(0), None),
            Self::Shared { slot, hint } => (
                Source::Waiting(Arc::clone(slot)),
                *hint,
                Some(Arc::new(Upload::default())),
            ),
        };
        let body = RequestBody {
            source,
            hint,
            upload: upload.clone(),
            idle: IdleTimer::new(idle),
            received: 0,
            limit,
        };
        (body, upload)
    }

    /// Whether no attempt has sent any of the body yet (so it can be sent
    /// again elsewhere).
    pub fn untouched(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Shared { slot, .. } => slot.lock().map(|s| s.is_some()).unwrap_or(false),
        }
    }
}

enum Source {
    Waiting(Arc<Mutex<Option<Incoming>>>),
    Taken(Incoming),
    Done,
}

pub struct RequestBody {
    source: Source,
    hint: SizeHint,
    upload: Option<Arc<Upload>>,
    idle: IdleTimer,
    /// Body bytes read from the client, against `limit`.
    received: u64,
    limit: u64,
}

/// Whether an attempt's request body has been handed to the backend in
/// full: the response timeout starts then, and response pauses before it
/// may be the client's (a streaming echo waits for the upload).
#[derive(Default)]
pub struct Upload {
    done: AtomicBool,
    notify: Notify,
}

impl Upload {
    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        // Stores a permit if nobody waits yet, so `sent` cannot miss it.
        self.notify.notify_one();
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub async fn sent(&self) {
        if !self.is_done() {
            self.notify.notified().await;
        }
    }
}

/// Why a request body could not be sent. These are the client's doing,
/// never the backend's.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("reading the client's request body failed: {0}")]
    Client(#[from] hyper::Error),
    #[error("the client sent no request body data for {0:?}")]
    Stalled(Duration),
    #[error("request body was already consumed by an earlier attempt")]
    AlreadyConsumed,
    #[error("request body is larger than the listener's max_body_bytes ({0} bytes)")]
    TooLarge(u64),
}

impl RequestBodyError {
    /// What the client is answered when the backend has not responded.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::TooLarge(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

impl RequestBody {
    fn finish(&mut self) {
        if !matches!(self.source, Source::Done) {
            self.source = Source::Done;
            if let Some(upload) = &self.upload {
                upload.finish();
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Source::Waiting(slot) = &this.source {
            let taken = slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(b) => this.source = Source::Taken(b),
                None => return Poll::Ready(Some(Err(RequestBodyError::AlreadyConsumed))),
            }
        }
        let Source::Taken(body) = &mut this.source else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.poll_stalled(cx) {
                    Poll::Ready(Some(Err(RequestBodyError::Stalled(this.idle_timeout()))))
                } else {
                    Poll::Pending
                }
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    if this.received > this.limit {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                    }
                }
                if body.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Taken(b) => b.is_end_stream(),
            Source::Waiting(_) => false,
            Source::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Taken(b) => b.size_hint(),
            Source::Waiting(_) => self.hint,
            Source::Done => SizeHint::with_exact(0),
        }
    }
}

impl RequestBody {
    fn idle_timeout(&self) -> Duration {
        self.idle.timeout()
    }
}

/// What the proxy answers with: a backend's streamed body (holding the
/// backend's in-flight count until it ends), or a short local body.
pub enum ResponseBody {
    Upstream {
        body: Incoming,
        in_flight: InFlight,
        /// Bounds the backend's pauses between body frames.
        idle: IdleTimer,
        /// While the client is still uploading, pauses are not the
        /// backend's fault.
        upload: Option<Arc<Upload>>,
        /// For reporting a stall to passive health.
        pool: Arc<Pool>,
    },
    Local(Full<Bytes>),
}

impl ResponseBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        Self::Local(Full::new(text.into()))
    }

    pub fn upstream(
        body: Incoming,
        in_flight: InFlight,
        idle: Duration,
        upload: Option<Arc<Upload>>,
        pool: Arc<Pool>,
    ) -> Self {
        Self::Upstream {
            body,
            in_flight,
            idle: IdleTimer::new(idle),
            upload,
            pool,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("backend {backend:?} sent no response data for {idle:?}")]
pub struct BackendStalled {
    backend: String,
    idle: Duration,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Upstream {
                body,
                in_flight,
                idle,
                upload,
                pool,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Pending if idle.poll_stalled(cx) && upload.as_ref().is_some_and(|u| !u.is_done()) => {
                    // Still uploading: start a fresh period and wait on.
                    idle.progress();
                    let _ = idle.poll_stalled(cx);
                    Poll::Pending
                }
                Poll::Pending if idle.poll_stalled(cx) => {
                    let backend = in_flight.backend();
                    backend.counters.failures.fetch_add(1, Ordering::Relaxed);
                    pool.report(backend, Outcome::Failure);

                    tracing::warn!(backend = %backend.name, idle = ?idle.timeout(), "backend stalled mid-response; cutting it");
                    Poll::Ready(Some(Err(Box::new(BackendStalled {
                        backend: backend.name.to_string(),
                        idle: idle.timeout(),
                    }))))
                }
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    idle.progress();
                    Poll::Ready(r.map(|f| f.map_err(Into::into)))
                }
            },
            Self::Local(full) => Pin::new(full).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(full) => full.size_hint(),
        }
    }
}

/// A response body that keeps its request counted as open on the client
/// connection until the body is done, so an HTTP/2 connection streaming a
/// slow response is not mistaken for an idle one.
pub struct Tracked {
    pub inner: ResponseBody,
    pub open: super::idle::OpenRequest,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
