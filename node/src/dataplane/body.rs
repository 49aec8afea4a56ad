//! Body types of the HTTP proxy. Bodies are streamed frame by frame, never
//! collected.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::pool::InFlight;

/// A client's request body that a retry can take back as long as no attempt
/// has started sending it: the first poll moves it out of the shared slot.
pub struct RequestBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    taken: Option<Incoming>,
    hint: SizeHint,
    end_stream: bool,
}

/// The shared slot behind every [`RequestBody`] of one request.
#[derive(Clone)]
pub struct BodySlot {
    slot: Arc<Mutex<Option<Incoming>>>,
    hint: SizeHint,
    end_stream: bool,
}

impl BodySlot {
    pub fn new(body: Incoming) -> Self {
        Self {
            hint: body.size_hint(),
            end_stream: body.is_end_stream(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// A body for one attempt.
    pub fn attempt(&self) -> RequestBody {
        RequestBody {
            slot: Arc::clone(&self.slot),
            taken: None,
            hint: self.hint,
            end_stream: self.end_stream,
        }
    }

    /// Whether no attempt has sent any of the body yet (so it can be sent
    /// again elsewhere).
    pub fn untouched(&self) -> bool {
        self.end_stream || self.slot.lock().map(|s| s.is_some()).unwrap_or(false)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
    #[error("request body was already consumed by an earlier attempt")]
    AlreadyConsumed,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            if this.end_stream {
                return Poll::Ready(None);
            }
            let taken = this.slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(b) => this.taken = Some(b),
                None => return Poll::Ready(Some(Err(RequestBodyError::AlreadyConsumed))),
            }
        }
        match this.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx).map_err(|e| e.into()),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

/// What the proxy answers with: a backend's streamed body (holding the
/// backend's in-flight count until it ends), or a short local body.
pub enum ResponseBody {
    Upstream { body: Incoming, _in_flight: InFlight },
    Local(Full<Bytes>),
}

impl ResponseBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        Self::Local(Full::new(text.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
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
