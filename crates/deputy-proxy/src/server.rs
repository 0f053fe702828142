//! The HTTP server of both listeners.

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::config::{Limits, Timeouts};

/// HTTP/1.1 and HTTP/2, with a bound on how long a client may take to send its request headers
/// (a client that trickles them must not hold a connection and its task forever), keepalive
/// pings, and a hard ceiling on streams.
pub(crate) fn builder(timeouts: &Timeouts, limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.connect);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .adaptive_window(true)
        .max_frame_size(crate::H2_MAX_FRAME)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        // Past `max_streams` a request is answered 503 `overloaded`, which the caller can read;
        // this is the hard ceiling a client that ignores those answers meets.
        .max_concurrent_streams(limits.max_streams.saturating_mul(2));
    builder
}
