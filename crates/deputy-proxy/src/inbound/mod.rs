//! The inbound side: mTLS from other deputyd instances, terminated here, delivered as plain
//! HTTP to the local agent the SNI names, with the verified caller in `Deputy-Peer-Id`.
//!
//! This file accepts peers and registers their connections (`handshake.rs` admits them); each
//! request then passes the stages of `stages/` over one call context (`call.rs`).

mod call;
mod handshake;
pub(crate) mod stages;

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use spiffe::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use self::call::Call;
use self::handshake::{Handshaken, handshake};
use crate::body::{Arrival, Body};
use crate::config::{Limits, Timeouts};
use crate::connections::{
    ConnectionHandle, Ended, Opening, Registry, Side, Slot, Slots, serve_until_drained,
};
use crate::metrics;
use crate::pipeline;
use crate::tls::peer_spiffe_id;

/// A local agent as the inbound side sees it.
#[derive(Debug, Clone)]
pub(crate) struct InboundAgent {
    pub(crate) name: String,
    pub(crate) spiffe_id: SpiffeId,
    /// `spiffe_id` as text, made once.
    pub(crate) id: Arc<str>,
    pub(crate) upstream: Option<http::Uri>,
    /// How its calls are read (MCP: by tool and arguments; A2A: by method and skill).
    pub(crate) protocol: deputy_policy::mcp::Protocol,
}

/// What every inbound connection needs.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) agents: HashMap<String, InboundAgent>,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) upstreams: Client<HttpConnector, Body>,
    pub(crate) timeouts: Timeouts,
    /// Trust anchors for delegation links (the same bundles as for peers).
    pub(crate) anchors: crate::tls::Anchors,
    /// Verifies peers' delegation chains, with its cache.
    pub(crate) chains: deputy_delegation::ChainVerifier,
    /// The node's contexts (shared with the outbound side).
    pub(crate) contexts: Arc<crate::context::ContextStore>,
    /// The policy every inbound call is decided by, if one is configured.
    pub(crate) policy: Option<crate::config::PolicyConfig>,
    /// How calls are admitted when no policy is configured.
    pub(crate) without_policy: crate::admission::WithoutPolicy,
    /// Each agent's SVID, for the expiry of the one a connection was served with.
    pub(crate) materials: HashMap<String, crate::tls::Material>,
    /// Where connections are registered.
    pub(crate) registry: Arc<Registry>,
    /// Revocations, and the calls in flight they cut.
    pub(crate) revoker: Arc<crate::revocation::Revoker>,
    /// Where each call's record goes, if anywhere.
    pub(crate) audit: Option<Arc<deputy_audit::Trail>>,
    /// Bounds.
    pub(crate) limits: Limits,
    /// This listener's connection slots, for authenticated peers.
    pub(crate) slots: Slots,
    /// Handshakes in progress ([`Limits::max_handshakes`]).
    pub(crate) handshakes: Arc<tokio::sync::Semaphore>,
}

/// The answer to a client that speaks plain HTTP to the mTLS port.
fn plaintext_refusal() -> Vec<u8> {
    let body = r#"{"type":"urn:deputy:problem:tls-required","title":"TLS required","status":400,"detail":"this is deputyd's inbound mTLS port; agents call each other through their own deputyd's outbound listener"}"#;
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Accepts peers until cancelled.
pub(crate) async fn serve(inbound: Arc<Inbound>, listener: TcpListener, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote)) => {
                // A connection slot is for an authenticated peer; until then the connection
                // holds one of the handshakes in progress, so that strangers who never finish
                // theirs cannot take the peers' places.
                let Ok(handshaking) = inbound.handshakes.clone().try_acquire_owned() else {
                    metrics::overloaded("inbound", "max_handshakes");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let inbound = inbound.clone();
                tokio::spawn(async move {
                    serve_connection(inbound, tcp, remote, handshaking).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    inbound: Arc<Inbound>,
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    handshaking: tokio::sync::OwnedSemaphorePermit,
) {
    let limit = inbound.limits.handshake;
    let verified_under = inbound.registry.current_bundles();
    let Ok(handshaken) = tokio::time::timeout(limit, handshake(&inbound, tcp, remote)).await else {
        metrics::handshake_failed("inbound", "timeout");
        tracing::warn!(%remote, ?limit,
            "refused inbound connection: the TLS handshake did not finish in time ([limits] handshake)");
        return;
    };
    let Some(Handshaken {
        tls,
        agent,
        local_expires,
    }) = handshaken
    else {
        return;
    };
    drop(handshaking);
    metrics::handshake_succeeded("inbound");
    let Some(slot) = inbound.slots.take() else {
        // Past the limit and its overflow: closed unanswered, at no cost.
        metrics::overloaded("inbound", "max_connections");
        return;
    };
    let peer_chain = crate::tls::owned_chain(tls.get_ref().1.peer_certificates());
    let Some(peer) = peer_spiffe_id(Some(&peer_chain)) else {
        // The verifier accepted an SVID, so this cannot happen; fail closed if it does.
        tracing::error!(%remote, "verified peer without a SPIFFE ID; closing");
        return;
    };
    let mut registration = inbound.registry.register(Opening {
        side: Side::Inbound,
        agent: agent.name.clone(),
        remote: remote.to_string(),
        local_expires,
        peer_chain,
        verified_under,
    });
    let life = crate::connections::lifetime(&slot, &inbound.limits);
    let connection = Arc::new(Connection {
        peer_id: peer.to_string().into(),
        peer,
        agent,
        handle: registration.handle(),
        slot,
    });
    let service_inbound = inbound.clone();
    let service = hyper::service::service_fn(move |request| {
        let inbound = service_inbound.clone();
        let connection = connection.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&inbound, &connection, request).await) }
    });
    let (builder, tls) = crate::server::builder(&inbound.timeouts, &inbound.limits, tls);
    let served = serve_until_drained(
        builder.serve_connection(TokioIo::new(tls), service),
        &mut registration,
        Some(inbound.timeouts.connect),
        |connection| connection.graceful_shutdown(),
    );
    if let Ok(Ended::Finished(Err(e))) = tokio::time::timeout(life, served).await {
        tracing::debug!(%remote, error = %e, "inbound connection ended with an error");
    }
}

/// One admitted inbound connection, as each of its requests sees it.
pub(crate) struct Connection {
    pub(crate) peer: SpiffeId,
    /// `peer` as text, made once per connection.
    pub(crate) peer_id: Arc<str>,
    pub(crate) agent: InboundAgent,
    pub(crate) handle: ConnectionHandle,
    pub(crate) slot: Slot,
}

async fn handle(
    inbound: &Inbound,
    connection: &Connection,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.uri().path() == crate::revocation::PATH {
        // Not a call: another node revoking a task it extended here. Never delivered.
        return crate::revocation::receive(inbound, connection, request).await;
    }
    let version = request.version();
    let in_flight = connection.handle.request_started();
    // One id per call, at both ends: the calling deputyd's, when the peer sent a well-formed one.
    let request_id = crate::routing::peer_request_id(request.headers())
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let (arrival, request) = Arrival::of(request);
    let watched = inbound.revoker.watch();
    let mut call = Call::new(
        inbound,
        connection,
        &request_id,
        request,
        in_flight,
        watched.as_ref(),
    );
    let checks = pipeline::Checks {
        answered: |_: &Call<'_>| false,
        stopped: |c: &Call<'_>| crate::revocation::stopped(c.watched, c.request_id),
    };
    let ran = crate::revocation::until_cut(
        pipeline::run(&stages::stages(), &mut call, &checks),
        watched.as_ref(),
        &request_id,
    )
    .await;
    let response = pipeline::answer(
        ran,
        call.response.take(),
        matches!(connection.slot, Slot::Overloaded { .. }),
        &request_id,
        "inbound",
        &connection.agent.name,
    );
    let in_flight = call.in_flight.take().into_iter().collect();
    let mut audit_facts = call.audit_facts.take();
    if call.dry_run {
        audit_facts.get_or_insert_with(Default::default).dry_run = true;
    }
    drop(call);
    let mut response = crate::revocation::guard(watched, response);
    crate::connections::close_if_draining(&connection.handle, version, &mut response);
    let agent = &connection.agent;
    let parties = (
        agent.name.clone(),
        connection.peer.to_string(),
        agent.name.clone(),
    );
    let record = arrival
        .record("inbound", parties, request_id, in_flight)
        .audited(inbound.audit.as_ref(), audit_facts);
    record.answer(response)
}
