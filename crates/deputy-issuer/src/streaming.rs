//! What both API servers share: who is calling, and server streams that push a fresh response
//! whenever the issuer's state changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use deputy_identity::Selector;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::server::UdsConnectInfo;

use crate::attest::Process;
use crate::entries::Entry;
use crate::svids::Issuer;

/// A server stream of responses (or a final error).
pub(crate) type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// The attested caller of a request on a unix socket.
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Result<Process, Status> {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .ok_or_else(|| {
            Status::permission_denied(
                "the kernel reported no credentials for this caller; connect over the unix socket",
            )
        })?;
    Ok(Process {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// The message a caller gets when no registration entry matches it.
pub(crate) fn no_entry(who: &str, selectors: &BTreeSet<Selector>) -> Status {
    Status::permission_denied(format!(
        "no identity issued: no registration entry matches this caller ({who}; selectors: {}); \
         add an [[entry]] whose selectors describe it to the issuer's entries file",
        join(selectors)
    ))
}

/// The registered entries for `selectors`, or the refusal that explains there are none.
pub(crate) fn entries_or_refuse(
    issuer: &Issuer,
    who: &str,
    selectors: &BTreeSet<Selector>,
) -> Result<Vec<Entry>, Status> {
    let entries = issuer.entries_for(selectors);
    if entries.is_empty() {
        Err(no_entry(who, selectors))
    } else {
        Ok(entries)
    }
}

pub(crate) fn join(selectors: &BTreeSet<Selector>) -> String {
    selectors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stream that sends `compute`'s response now and again after every issuer change that
/// alters it, until the client goes away or `compute` fails (the error ends the stream).
///
/// The first response is computed before the stream is returned, so a caller that is refused
/// gets the status on the call itself.
pub(crate) fn follow<T, F>(issuer: Arc<Issuer>, mut compute: F) -> Result<ResponseStream<T>, Status>
where
    T: PartialEq + Clone + Send + 'static,
    F: FnMut(&Issuer) -> Result<T, Status> + Send + 'static,
{
    let mut changes = issuer.subscribe();
    changes.borrow_and_update();
    let first = compute(&issuer)?;
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut last = first.clone();
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                () = issuer.closing().cancelled() => return,
            }
            changes.borrow_and_update();
            match compute(&issuer) {
                Ok(response) if response == last => {}
                Ok(response) => {
                    last = response.clone();
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Maps a signing failure to the status a client sees.
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("the issuer could not sign: {e}"))
}
