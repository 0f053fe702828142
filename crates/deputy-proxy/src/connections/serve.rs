//! Serving a registered connection until it ends or is drained.

use std::future::Future;
use std::pin::{Pin, pin};

use std::time::Duration;

use super::{ConnectionHandle, Registration};

/// How a served connection ended.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    /// On its own (or after a drain, within the grace): the connection's result.
    Finished(T),
    /// Drained, with nothing left in flight (a pooled client connection): closed.
    Answered,
    /// Drained, and still carrying streams when the grace ran out: closed.
    Cut,
    /// Carried no request within the time a client has for its first one: closed.
    Silent,
}

/// Drives `connection` until it ends; when the registry drains it, `begin_shutdown` is called
/// (HTTP/2 GOAWAY, HTTP/1.1 close after the response in flight) and the streams in flight get
/// the registry's grace before the connection is dropped. A pooled client connection has no
/// shutdown of its own: it is dropped once its last request is answered (the pool no longer
/// hands it out).
///
/// HTTP/1.1 cannot tell an idle client to send no more but by closing, and a close races the
/// request the client may be sending at that moment, which then fails. So a connection drained
/// for a stop or for its age first lingers ([`LINGER`]): its answers say `Connection: close`
/// ([`close_if_draining`]), and a busy client closes it itself after its next one; only a
/// connection idle for the whole linger is closed here. A drain for revocation, expiry,
/// distrust or a removed agent does not linger, and cuts a linger short when it comes during
/// one. The linger is taken out of the grace, not added to it.
///
/// A served connection (`first_request`: `Some`) that has carried no request that long after it
/// began is closed: hyper runs no timer until it knows the protocol, so a client that opens a
/// connection and says nothing, or sends the first bytes of a request and no more, would hold
/// it (and its task) until its age drains it.
///
/// Boxed, and `Send` by its bounds: an `async fn` generic over hyper's connections trips a
/// compiler limitation (rust-lang/rust#102211) when the task that awaits it is spawned.
pub(crate) fn serve_until_drained<'a, C>(
    connection: C,
    registration: &'a mut Registration,
    first_request: Option<Duration>,
    begin_shutdown: impl FnOnce(Pin<&mut C>) + Send + 'a,
) -> Pin<Box<dyn Future<Output = Ended<C::Output>> + Send + 'a>>
where
    C: Future + Send + 'a,
    C::Output: Send,
{
    Box::pin(serve(
        connection,
        registration,
        first_request,
        begin_shutdown,
    ))
}

async fn serve<C: Future>(
    connection: C,
    registration: &mut Registration,
    first_request: Option<Duration>,
    begin_shutdown: impl FnOnce(Pin<&mut C>),
) -> Ended<C::Output> {
    let mut connection = pin!(connection);
    let handle = registration.handle();
    let silent = async {
        let Some(within) = first_request else {
            return std::future::pending().await;
        };
        tokio::time::sleep(within).await;
        if handle.0.requests.load(std::sync::atomic::Ordering::Acquire) > 0 {
            std::future::pending::<()>().await;
        }
    };
    let reason = tokio::select! {
        ended = connection.as_mut() => return Ended::Finished(ended),
        reason = registration.drained() => reason,
        () = silent => {
            tracing::debug!(connection = handle.0.id, side = handle.0.side.name(),
                agent = %handle.0.agent, ?first_request,
                "closed a connection that carried no request in time");
            return Ended::Silent;
        }
    };
    let grace = registration.registry.grace;
    let deadline = tokio::time::Instant::now() + grace;
    if handle.0.side != super::Side::Pool && reason.lingers() {
        // At most half the grace: the rest is for the close.
        let linger = tokio::time::Instant::now() + LINGER.min(grace / 2);
        tokio::select! {
            ended = connection.as_mut() => return Ended::Finished(ended),
            () = tokio::time::sleep_until(linger) => {}
            () = registration.escalated() => {}
        }
    }
    begin_shutdown(connection.as_mut());
    let answered = async {
        if handle.0.side == super::Side::Pool {
            handle.idle().await;
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        ended = connection => Ended::Finished(ended),
        () = answered => Ended::Answered,
        () = tokio::time::sleep_until(deadline) => {
            tracing::info!(connection = handle.0.id, side = handle.0.side.name(),
                agent = %handle.0.agent, %reason, ?grace,
                "closed a drained connection whose streams outlived the grace");
            Ended::Cut
        }
    }
}

/// How long a drained HTTP/1.1 connection waits for its client to close it after an answer
/// that says `Connection: close`, before it is closed idle.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Makes an answer on a draining HTTP/1.x connection say `Connection: close`, so that the
/// client sends its next request on a new connection (to the next process, after a restart)
/// rather than on one about to close. HTTP/2 has GOAWAY for this.
pub(crate) fn close_if_draining<B>(
    handle: &ConnectionHandle,
    version: http::Version,
    response: &mut http::Response<B>,
) {
    if handle.is_draining() && version < http::Version::HTTP_2 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}
