//! The HTTP server of both listeners.

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::config::{Limits, Timeouts};
use crate::head_timer::Watched;

/// The server of one connection, `io`: HTTP/1.1 and HTTP/2, with a bound on how long a client
/// may take to send a request's head (`[timeouts] connect` from its first byte: a client that
/// trickles it must not hold a connection and its task forever) while a kept-alive connection
/// waits up to `[timeouts] idle` for its next request (`head_timer`), keepalive pings, and a
/// hard ceiling on streams. Serve the stream it returns: the timer watches its reads.
pub(crate) fn builder<T>(
    timeouts: &Timeouts,
    limits: &Limits,
    io: T,
) -> (auto::Builder<TokioExecutor>, Watched<T>) {
    let (timer, io) = crate::head_timer::for_connection(timeouts.connect, timeouts.idle, io);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(timer)
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
    (builder, io)
}
