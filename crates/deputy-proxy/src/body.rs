//! The body type of the data path: whatever arrived, streamed, or a small body of our own.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};

/// A response or request body: streamed from the peer, or a problem document.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A body holding `bytes`.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streamed body, passed on as it arrives.
pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming.boxed_unsync()
}

/// A problem as an HTTP response with this body type.
pub fn problem_response(problem: &crate::problem::Problem) -> http::Response<Body> {
    problem.to_response().map(full)
}
