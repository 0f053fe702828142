//! Serving a registered connection until it ends or is drained.

use std::future::Future;
use std::pin::{Pin, pin};

use super::Registration;

/// How a served connection ended.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    /// On its own (or after a drain, within the grace): the connection's result.
    Finished(T),
    /// Drained, with nothing left in flight (a pooled client connection): closed.
    Answered,
    /// Drained, and still carrying streams when the grace ran out: closed.
    Cut,
}

/// Drives `connection` until it ends; when the registry drains it, `begin_shutdown` is called
/// (HTTP/2 GOAWAY, HTTP/1.1 close after the response in flight) and the streams in flight get
/// the registry's grace before the connection is dropped. A pooled client connection has no
/// shutdown of its own: it is dropped once its last request is answered (the pool no longer
/// hands it out).
///
/// Boxed, and `Send` by its bounds: an `async fn` generic over hyper's connections trips a
/// compiler limitation (rust-lang/rust#102211) when the task that awaits it is spawned.
pub(crate) fn serve_until_drained<'a, C>(
    connection: C,
    registration: &'a mut Registration,
    begin_shutdown: impl FnOnce(Pin<&mut C>) + Send + 'a,
) -> Pin<Box<dyn Future<Output = Ended<C::Output>> + Send + 'a>>
where
    C: Future + Send + 'a,
    C::Output: Send,
{
    Box::pin(serve(connection, registration, begin_shutdown))
}

async fn serve<C: Future>(
    connection: C,
    registration: &mut Registration,
    begin_shutdown: impl FnOnce(Pin<&mut C>),
) -> Ended<C::Output> {
    let mut connection = pin!(connection);
    let reason = tokio::select! {
        ended = connection.as_mut() => return Ended::Finished(ended),
        reason = registration.drained() => reason,
    };
    begin_shutdown(connection.as_mut());
    let grace = registration.registry.grace;
    let handle = registration.handle();
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
        () = tokio::time::sleep(grace) => {
            tracing::info!(connection = handle.0.id, side = handle.0.side.name(),
                agent = %handle.0.agent, %reason, ?grace,
                "closed a drained connection whose streams outlived the grace");
            Ended::Cut
        }
    }
}
