//! A response body that ends with an error the moment its call is revoked: hyper then resets
//! the HTTP/2 stream (or closes the HTTP/1.1 connection), so the far end sees the stream cut,
//! not a clean end it could take for the whole answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;

use super::Watched;
use crate::body::{Body, BoxError};

/// The error a revoked stream ends with.
#[derive(Debug)]
struct Revoked(String);

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the call was cut: {}", self.0)
    }
}

impl std::error::Error for Revoked {}

pub(super) struct Revocable {
    inner: Body,
    watched: Option<Watched>,
}

impl Revocable {
    pub(super) fn wrap(inner: Body, watched: Watched) -> Body {
        Self {
            inner,
            watched: Some(watched),
        }
        .boxed_unsync()
    }
}

impl HttpBody for Revocable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(watched) = &this.watched else {
            return Poll::Ready(None);
        };
        if watched.signal.poll_cut(cx).is_ready() {
            let why = watched.signal.why();
            // Out of the registry now: the call is over.
            this.watched = None;
            return Poll::Ready(Some(Err(Box::new(Revoked(why)))));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            this.watched = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.watched.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
