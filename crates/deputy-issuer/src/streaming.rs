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

/// Which API a caller is on: the Workload API never serves delegated-only entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Workload,
    DelegatedIdentity,
}

/// The registered entries for `selectors` that `api` may serve, or the refusal that explains
/// why there are none.
pub(crate) fn entries_or_refuse(
    issuer: &Issuer,
    api: Api,
    who: &str,
    selectors: &BTreeSet<Selector>,
) -> Result<Vec<Entry>, Status> {
    let mut entries = issuer.entries_for(selectors);
    let withheld: Vec<String> = match api {
        Api::DelegatedIdentity => Vec::new(),
        Api::Workload => entries
            .extract_if(.., |e| e.delegated_only)
            .map(|e| e.spiffe_id.to_string())
            .collect(),
    };
    if !entries.is_empty() {
        Ok(entries)
    } else if withheld.is_empty() {
        Err(no_entry(who, selectors))
    } else {
        Err(Status::permission_denied(format!(
            "no identity issued to this caller ({who}): {} is delegated-only, served only to an \
             authorized delegate (deputyd) through the Delegated Identity API, so that the agent \
             never holds its key; the agent calls through deputyd's outbound listener instead",
            withheld.join(", ")
        )))
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
