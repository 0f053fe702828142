//! The outbound side: an agent's plain HTTP (1.1 or h2c) calls, carried over mTLS with the
//! agent's SVID to the deputyd that fronts the target service.
//!
//! This file accepts the agent's connections and attests them; each request then passes the
//! stages of `stages/` over one call context (`call.rs`).

mod call;
pub(crate) mod stages;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use self::call::Call;
use crate::attest::{tcp_caller_uid, unix_caller_uid};
use crate::body::{Arrival, Body};
use crate::config::{Limits, LocalAgent, PolicyConfig, Timeouts};
use crate::connections::{
    ConnectionHandle, Ended, Opening, Registry, Side, Slot, Slots, serve_until_drained,
};
use crate::context::ContextStore;
use crate::metrics;
use crate::pipeline;
use crate::pool::Pool;
use crate::routing::Routes;
use crate::tls::Material;

/// A bound outbound listener.
#[derive(Debug)]
pub enum OutboundListener {
    /// Loopback TCP.
    Tcp(TcpListener),
    /// A unix socket.
    Unix(UnixListener),
}

/// What every request on one agent's outbound listener needs.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) agent: LocalAgent,
    /// The agent's SPIFFE ID as text, made once.
    pub(crate) agent_id: Arc<str>,
    pub(crate) material: Material,
    pub(crate) routes: Routes,
    pub(crate) pool: Arc<Pool>,
    /// Clients of the tools outside the mesh.
    pub(crate) externals: Arc<crate::external::Externals>,
    pub(crate) timeouts: Timeouts,
    pub(crate) signers: crate::delegation::SignerCache,
    /// Links this agent signed recently, for reuse.
    pub(crate) links: crate::delegation::LinkCache,
    /// The node's contexts (shared with the inbound side).
    pub(crate) contexts: Arc<ContextStore>,
    /// The policy every call of this agent is decided by, if one is configured.
    pub(crate) policy: Option<PolicyConfig>,
    /// Where connections are registered.
    pub(crate) registry: Arc<Registry>,
    /// Revocations, and the calls in flight they cut.
    pub(crate) revoker: Arc<crate::revocation::Revoker>,
    /// Where each call's record goes, if anywhere.
    pub(crate) audit: Option<Arc<deputy_audit::Trail>>,
    /// Bounds.
    pub(crate) limits: Limits,
    /// This listener's connection slots.
    pub(crate) slots: Slots,
    /// The credentials `agent.inject` renders from.
    pub(crate) credentials: deputy_secrets::CredentialStore,
    /// Credentials issued per task.
    pub(crate) task_secrets: Option<deputy_secrets::task::TaskSecrets>,
    /// Kept responses of writes with an `Idempotency-Key`.
    pub(crate) idempotency: Option<Arc<stages::Idempotency>>,
    /// Where a pending approval is announced.
    pub(crate) approval_webhook: Option<crate::webhook::ApprovalWebhook>,
    /// Calls held for a human's approval.
    pub(crate) approvals: Option<Arc<deputy_state::Approvals>>,
    /// How long an approval may wait to be decided and redeemed, in seconds.
    pub(crate) approval_ttl: i64,
}

/// Accepts callers until cancelled.
pub(crate) async fn serve(
    outbound: Arc<Outbound>,
    listener: OutboundListener,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(connection) => {
                let outbound = outbound.clone();
                tokio::spawn(async move { serve_connection(outbound, connection).await });
            }
            Err(e) => {
                tracing::warn!(agent = %outbound.agent.name, error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &OutboundListener) -> std::io::Result<Connection> {
    match listener {
        OutboundListener::Tcp(l) => l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            Connection::Tcp(s)
        }),
        OutboundListener::Unix(l) => l.accept().await.map(|(s, _)| Connection::Unix(s)),
    }
}

async fn serve_connection(outbound: Arc<Outbound>, connection: Connection) {
    let uid = match &connection {
        Connection::Tcp(s) => tcp_caller_uid(s).await,
        Connection::Unix(s) => unix_caller_uid(s),
    };
    // Attested once per connection: a connection never changes hands.
    let admitted: Result<u32, String> = uid.and_then(|uid| {
        if outbound.agent.uids.contains(&uid) {
            Ok(uid)
        } else {
            Err(format!(
                "uid {uid} may not call through agent {}'s outbound listener (allowed uids: {:?}); \
                 run the agent as an allowed user or add its uid to the agent's `uids`",
                outbound.agent.name, outbound.agent.uids
            ))
        }
    });
    if let Err(reason) = &admitted {
        tracing::warn!(agent = %outbound.agent.name, %reason, "outbound caller refused");
    }
    // The agent's places are for the agent: a caller that is not one is told so from the
    // overflow, briefly, and never holds a place.
    let slot = match &admitted {
        Ok(_) => outbound.slots.take(),
        Err(_) => outbound.slots.take_overflow(),
    };
    let Some(slot) = slot else {
        metrics::overloaded("outbound", "max_connections");
        return;
    };
    let mut registration = outbound.registry.register(Opening {
        side: Side::Outbound,
        agent: outbound.agent.name.clone(),
        remote: match (&connection, &admitted) {
            (Connection::Tcp(_), Ok(uid)) => format!("tcp, uid {uid}"),
            (Connection::Unix(_), Ok(uid)) => format!("unix, uid {uid}"),
            (_, Err(_)) => "not attested".to_owned(),
        },
        local_expires: None,
        peer_chain: Vec::new(),
        verified_under: None,
    });
    let life = crate::connections::lifetime(&slot, &outbound.limits);
    let caller = Arc::new(Caller {
        close_after_answer: admitted.is_err() || matches!(slot, Slot::Overloaded { .. }),
        admitted,
        handle: registration.handle(),
        slot,
    });
    let io = match connection {
        Connection::Tcp(s) => Either::Left(s),
        Connection::Unix(s) => Either::Right(s),
    };
    let (builder, io) = crate::server::builder(&outbound.timeouts, &outbound.limits, io);
    let timeouts_connect = outbound.timeouts.connect;
    let service = hyper::service::service_fn(move |request| {
        let outbound = outbound.clone();
        let caller = caller.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&outbound, &caller, request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let served = tokio::time::timeout(
        life,
        serve_until_drained(connection, &mut registration, Some(timeouts_connect), |c| {
            c.graceful_shutdown()
        }),
    )
    .await;
    if let Ok(Ended::Finished(Err(e))) = served {
        tracing::debug!(error = %e, "outbound connection ended with an error");
    }
}

/// The agent process on one connection, as each of its requests sees it.
pub(crate) struct Caller {
    /// Its uid, or why it may not call.
    admitted: Result<u32, String>,
    /// It is refused (not attested, or over the limit): asked to close after each answer.
    close_after_answer: bool,
    handle: ConnectionHandle,
    slot: Slot,
}

async fn handle(
    outbound: &Outbound,
    caller: &Caller,
    request: Request<Incoming>,
) -> Response<Body> {
    let version = request.version();
    let in_flight = caller.handle.request_started();
    let request_id = uuid::Uuid::now_v7().to_string();
    let (arrival, request) = Arrival::of(request);
    let watched = outbound.revoker.watch();
    let mut call = Call::new(
        outbound,
        caller,
        &request_id,
        request,
        in_flight,
        watched.as_ref(),
    );
    // A stage may answer early (an idempotent replay): its response ends the call.
    let checks = pipeline::Checks {
        answered: |c: &Call<'_>| c.answered_early,
        stopped: |c: &Call<'_>| crate::revocation::stopped(c.watched, c.request_id),
    };
    let ran = crate::revocation::until_cut(
        pipeline::run(&stages::stages(), &mut call, &checks),
        watched.as_ref(),
        &request_id,
    )
    .await;
    let service = call.service_name();
    let response = pipeline::answer(
        ran,
        call.response.take(),
        caller.close_after_answer,
        &request_id,
        "outbound",
        &outbound.agent.name,
    );
    let in_flight = std::mem::take(&mut call.in_flight);
    let mut audit_facts = call.audit_facts.take();
    if call.answered_early {
        audit_facts.get_or_insert_with(Default::default).replayed = true;
    }
    drop(call);
    let mut response = crate::revocation::guard(watched, response);
    crate::connections::close_if_draining(&caller.handle, version, &mut response);
    let parties = (outbound.agent.name.clone(), "-".into(), service);
    let record = arrival
        .record("outbound", parties, request_id, in_flight)
        .audited(outbound.audit.as_ref(), audit_facts);
    record.answer(response)
}
