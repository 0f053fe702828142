//! The inbound side: mTLS from other deputyd instances, terminated here, delivered as plain
//! HTTP to the local agent the SNI names, with the verified caller in `Deputy-Peer-Id`.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use spiffe::SpiffeId;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

use deputy_identity::SvidVerifyError;

use crate::authz;
use crate::body::{AccessRecord, Body, DecisionId, Metered, problem_response, stream};
use crate::config::{Limits, Timeouts};
use crate::connections::{
    ConnectionHandle, Ended, Opening, Registry, Side, Slot, Slots, over_limit, overloaded_response,
    serve_until_drained, system_time,
};
use crate::delegation::Refusal;
use crate::metrics;
use crate::problem::{Problem, ProblemKind};
use crate::routing::{
    DELEGATION, PEER_ID, strip_all_deputy_headers, strip_hop_by_hop, upstream_uri,
};
use crate::tls::{PeerCertError, UNRECOGNIZED_NAME_ALERT, peer_spiffe_id};
use deputy_policy::Direction;

/// A local agent as the inbound side sees it.
#[derive(Debug, Clone)]
pub(crate) struct InboundAgent {
    pub(crate) name: String,
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) upstream: Option<http::Uri>,
    /// It serves MCP (its calls are judged by tool).
    pub(crate) mcp: bool,
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
    /// Bounds.
    pub(crate) limits: Limits,
    /// This listener's connection slots.
    pub(crate) slots: Slots,
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
                let Some(slot) = inbound.slots.take() else {
                    // Past the limit and its overflow: closed unanswered, at no cost.
                    metrics::overloaded("inbound", "max_connections");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let inbound = inbound.clone();
                tokio::spawn(async move { serve_connection(inbound, tcp, remote, slot).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A finished inbound handshake.
struct Handshaken {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    agent: InboundAgent,
    /// When the SVID this node presented expires.
    local_expires: Option<SystemTime>,
}

async fn serve_connection(
    inbound: Arc<Inbound>,
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    slot: Slot,
) {
    let limit = inbound.limits.handshake;
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
    metrics::handshake_succeeded("inbound");
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
    });
    let life = crate::connections::lifetime(&slot, &inbound.limits);
    let connection = Arc::new(Connection {
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
    let builder = crate::outbound::server_builder(&inbound.timeouts, &inbound.limits);
    let served = serve_until_drained(
        builder.serve_connection(TokioIo::new(tls), service),
        &mut registration,
        |connection| connection.graceful_shutdown(),
    );
    if let Ok(Ended::Finished(Err(e))) = tokio::time::timeout(life, served).await {
        tracing::debug!(%remote, error = %e, "inbound connection ended with an error");
    }
}

/// Reads the ClientHello, picks the agent by SNI and completes the handshake; `None` when the
/// connection was refused (and told why, where TLS allows).
async fn handshake(
    inbound: &Inbound,
    mut tcp: TcpStream,
    remote: std::net::SocketAddr,
) -> Option<Handshaken> {
    // A TLS connection starts with a handshake record (content type 22). Anything else, most
    // likely plain HTTP, gets an answer it can read instead of a TLS alert.
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == 0x16 => {}
        Ok(1) => {
            metrics::handshake_failed("inbound", "not_tls");
            tracing::warn!(%remote, "refused inbound connection: plaintext on the mTLS port");
            let _ = tcp.write_all(&plaintext_refusal()).await;
            let _ = tcp.shutdown().await;
            return None;
        }
        _ => return None,
    }
    let mut acceptor = pin!(LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        tcp
    ));
    let start = match acceptor.as_mut().await {
        Ok(start) => start,
        Err(e) => {
            metrics::handshake_failed("inbound", "bad_client_hello");
            tracing::warn!(%remote, error = %e, "refused inbound connection: bad ClientHello");
            return None;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    let Some(agent) = sni
        .as_deref()
        .filter(|name| !inbound.registry.is_retired(name))
        .and_then(|name| inbound.agents.get(name))
        .cloned()
    else {
        metrics::handshake_failed("inbound", "unknown_sni");
        tracing::warn!(%remote, sni = ?sni, "refused inbound connection: no such agent on this node");
        let mut accept = start.into_stream(inbound.tls.clone());
        if let Some(io) = accept.get_mut() {
            let _ = io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            let _ = io.shutdown().await;
        }
        return None;
    };
    // Read before the handshake picks the certificate: a rotation during it can only make the
    // recorded expiry earlier than the certificate's, never later.
    let local_expires = inbound
        .materials
        .get(&agent.name)
        .and_then(|m| m.borrow().as_ref().map(|m| system_time(m.not_after)));
    match start.into_stream(inbound.tls.clone()).await {
        Ok(tls) => Some(Handshaken {
            tls,
            agent,
            local_expires,
        }),
        Err(e) => {
            let reason = handshake_failure_reason(&e);
            metrics::handshake_failed("inbound", reason);
            tracing::warn!(%remote, agent = %agent.name, reason, error = %e, "refused inbound handshake");
            None
        }
    }
}

/// One admitted inbound connection, as each of its requests sees it.
struct Connection {
    peer: SpiffeId,
    agent: InboundAgent,
    handle: ConnectionHandle,
    slot: Slot,
}

fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    if let Some(e) = crate::tls::peer_cert_error(error) {
        return match e {
            PeerCertError::Svid(SvidVerifyError::NotAnSvid(_)) => "not_an_svid",
            PeerCertError::Svid(SvidVerifyError::UnknownTrustDomain(_)) => "unknown_trust_domain",
            PeerCertError::Svid(SvidVerifyError::Chain { .. }) => "untrusted_chain",
            _ => "bad_certificate",
        };
    }
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(_) => "tls",
        None => "io",
    }
}

async fn handle(
    inbound: &Inbound,
    connection: &Connection,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (agent, peer) = (&connection.agent, &connection.peer);
    let in_flight = connection.handle.request_started();
    // One id per call, at both ends: the calling deputyd's, when the peer sent a well-formed one.
    let request_id = crate::routing::peer_request_id(request.headers())
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_bytes = Arc::new(AtomicU64::new(0));
    let mut request = request.map(|b| Metered::counting(b, request_bytes.clone()));

    let over_limit = over_limit(
        &connection.slot,
        &inbound.slots,
        &in_flight,
        inbound.limits.max_streams,
        "the inbound listener",
    );
    let response = match (&agent.upstream, over_limit) {
        (_, Some((limit, detail))) => {
            metrics::overloaded("inbound", limit);
            let problem = Problem::new(ProblemKind::Overloaded, detail, &request_id);
            overloaded_response(&problem, &connection.slot)
        }
        (None, None) => problem_response(&Problem::new(
            ProblemKind::UpstreamUnavailable,
            format!(
                "agent {} serves no inbound calls (it has no upstream)",
                agent.name
            ),
            &request_id,
        )),
        (Some(upstream), None) => match upstream_uri(upstream, request.uri()) {
            Err(e) => problem_response(&Problem::new(
                ProblemKind::BadRequest,
                format!("bad request target: {e}"),
                &request_id,
            )),
            Ok(uri) => {
                let asked = std::mem::replace(request.uri_mut(), uri);
                match admit(inbound, connection, request, &asked, &request_id).await {
                    Ok(request) => {
                        let decision_id = DecisionId::of(request.extensions());
                        let mut response = deliver(inbound, agent, request, &request_id).await;
                        DecisionId::mark(&mut response, decision_id);
                        response
                    }
                    Err(problem) => problem_response(&problem),
                }
            }
        },
    };
    let status = response.status().as_u16();
    metrics::request_done("inbound", &agent.name, status, started.elapsed());
    let record = AccessRecord {
        direction: "inbound",
        agent: agent.name.clone(),
        peer: peer.to_string(),
        service: agent.name.clone(),
        method,
        path,
        status,
        started,
        decision_id: DecisionId::of(response.extensions()),
        request_id,
        request_bytes,
        in_flight: vec![in_flight],
    };
    response.map(|body| record.log_at_end(body))
}

/// Everything between the handshake and the agent: the peer's chain verified, the policy asked,
/// the verified facts (and a context handle) added for the agent. `asked` is the request target
/// as the peer sent it.
async fn admit(
    inbound: &Inbound,
    connection: &Connection,
    mut request: Request<Body>,
    asked: &http::Uri,
    request_id: &str,
) -> Result<Request<Body>, Problem> {
    let (agent, peer) = (&connection.agent, &connection.peer);
    *request.version_mut() = Version::HTTP_11;
    let chain = request
        .headers()
        .get(DELEGATION)
        .map(|v| v.to_str().map(str::to_owned));
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    // Nothing a peer says about the call reaches the agent unverified.
    strip_all_deputy_headers(headers);
    headers.remove(header::HOST);
    if let Ok(value) = HeaderValue::from_str(&peer.to_string()) {
        headers.insert(PEER_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(crate::routing::REQUEST_ID, value);
    }
    let now = std::time::SystemTime::now();
    let refused = |(kind, detail): Refusal| {
        // Debug-formatted: the detail quotes a principal and task the peer signed, which could
        // hold line breaks.
        tracing::warn!(agent = %agent.name, %peer, ?detail, "delegation chain refused");
        Problem::new(kind, detail, request_id)
    };
    if inbound.policy.is_none() {
        inbound.without_policy.check_peer(peer).map_err(|refusal| {
            tracing::warn!(agent = %agent.name, %peer, "inbound call refused: peer not allowed");
            Problem::new(refusal.0, refusal.1, request_id)
        })?;
    }
    let verified = match chain {
        None => None,
        Some(Err(_)) => {
            return Err(refused((
                ProblemKind::ChainRejected,
                "the Deputy-Delegation header is not visible ASCII".to_owned(),
            )));
        }
        Some(Ok(chain)) => Some(
            crate::delegation::verify_inbound(inbound, agent, &chain, peer, now)
                .map_err(refused)?,
        ),
    };
    if let Some(verified) = &verified {
        connection.handle.saw_task(verified.task());
    }
    if inbound.policy.is_none()
        && let Some(verified) = &verified
    {
        inbound
            .without_policy
            .check_origin(verified)
            .map_err(refused)?;
    }
    if let Some(policy) = &inbound.policy {
        let parties = authz::Parties {
            direction: Direction::Inbound,
            agent: (&agent.name, &agent.spiffe_id),
            peer: Some(peer),
            service: None,
            mcp: agent.mcp,
        };
        let task = verified
            .as_ref()
            .map(|v| crate::delegation::inbound_task(inbound, v));
        let judged = authz::judge(policy, &parties, task, request, asked, now, request_id).await;
        request = match judged {
            Ok((request, _)) => request,
            Err(problem) => {
                if let Some(decision_id) = &problem.decision_id {
                    tracing::info!(agent = %agent.name, %peer, %decision_id,
                        "inbound call denied by policy");
                }
                return Err(problem);
            }
        };
    }
    if let Some(verified) = verified {
        let facts =
            crate::delegation::inbound_facts(inbound, agent, verified, now).map_err(refused)?;
        request
            .headers_mut()
            .extend(facts.into_iter().map(|(k, v)| (Some(k), v)));
    }
    Ok(request)
}

async fn deliver(
    inbound: &Inbound,
    agent: &InboundAgent,
    request: Request<Body>,
    request_id: &str,
) -> Response<Body> {
    match tokio::time::timeout(inbound.timeouts.request, inbound.upstreams.request(request)).await {
        Ok(Ok(response)) => {
            let mut response = response.map(stream);
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Ok(Err(e)) => problem_response(&Problem::new(
            ProblemKind::UpstreamUnavailable,
            format!(
                "agent {} did not answer at its upstream: {e}; is it running?",
                agent.name
            ),
            request_id,
        )),
        Err(_) => problem_response(&Problem::new(
            ProblemKind::Timeout,
            format!(
                "agent {} sent no response within {:?}",
                agent.name, inbound.timeouts.request
            ),
            request_id,
        )),
    }
}
