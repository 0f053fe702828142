//! The outbound side: an agent's plain HTTP (1.1 or h2c) calls, carried over mTLS with the
//! agent's SVID to the deputyd that fronts the target service.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::attest::{tcp_caller_uid, unix_caller_uid};
use crate::authz;
use crate::body::{AccessRecord, Body, DecisionId, Metered, problem_response, stream};
use crate::config::PolicyConfig;
use crate::config::{Limits, LocalAgent, Timeouts};
use crate::connections::{
    ConnectionHandle, Ended, InFlight, Opening, Registry, Side, Slot, Slots, over_limit,
    overloaded_response, serve_until_drained,
};
use crate::context::ContextStore;
use crate::delegation::{self, OutboundCall};
use crate::metrics;
use crate::pool::Pool;
use crate::problem::{Problem, ProblemKind};
use crate::routing::{DELEGATION, REQUEST_ID, Routes, strip_all_deputy_headers, strip_hop_by_hop};
use crate::tls::Material;
use deputy_policy::Direction;

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
    pub(crate) material: Material,
    pub(crate) routes: Routes,
    pub(crate) pool: Arc<Pool>,
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
    /// Bounds.
    pub(crate) limits: Limits,
    /// This listener's connection slots.
    pub(crate) slots: Slots,
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
                let Some(slot) = outbound.slots.take() else {
                    metrics::overloaded("outbound", "max_connections");
                    continue;
                };
                let outbound = outbound.clone();
                tokio::spawn(async move { serve_connection(outbound, connection, slot).await });
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

async fn serve_connection(outbound: Arc<Outbound>, connection: Connection, slot: Slot) {
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
    });
    let life = crate::connections::lifetime(&slot, &outbound.limits);
    let caller = Arc::new(Caller {
        admitted,
        handle: registration.handle(),
        slot,
    });
    let builder = server_builder(&outbound.timeouts, &outbound.limits);
    let service = hyper::service::service_fn(move |request| {
        let outbound = outbound.clone();
        let caller = caller.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&outbound, &caller, request).await) }
    });
    let io = match connection {
        Connection::Tcp(s) => Either::Left(s),
        Connection::Unix(s) => Either::Right(s),
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let served = tokio::time::timeout(
        life,
        serve_until_drained(connection, &mut registration, |c| c.graceful_shutdown()),
    )
    .await;
    if let Ok(Ended::Finished(Err(e))) = served {
        tracing::debug!(error = %e, "outbound connection ended with an error");
    }
}

/// The agent process on one connection, as each of its requests sees it.
struct Caller {
    /// Its uid, or why it may not call.
    admitted: Result<u32, String>,
    handle: ConnectionHandle,
    slot: Slot,
}

async fn handle(
    outbound: &Outbound,
    caller: &Caller,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let mut in_flight = vec![caller.handle.request_started()];
    let request_id = uuid::Uuid::now_v7().to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_bytes = Arc::new(AtomicU64::new(0));
    let request = request.map(|b| Metered::counting(b, request_bytes.clone()));
    let over_limit = over_limit(
        &caller.slot,
        &outbound.slots,
        &in_flight[0],
        outbound.limits.max_streams,
        &format!("agent {}'s outbound listener", outbound.agent.name),
    );
    let (response, service) = match over_limit {
        Some((limit, detail)) => {
            metrics::overloaded("outbound", limit);
            let problem = Problem::new(ProblemKind::Overloaded, detail, &request_id);
            (overloaded_response(&problem, &caller.slot), "-".to_owned())
        }
        None => forward(outbound, caller, request, &request_id, &mut in_flight).await,
    };
    let status = response.status().as_u16();
    metrics::request_done("outbound", &service, status, started.elapsed());
    let record = AccessRecord {
        direction: "outbound",
        agent: outbound.agent.name.clone(),
        peer: "-".into(),
        service,
        method,
        path,
        status,
        started,
        decision_id: DecisionId::of(response.extensions()),
        request_id,
        request_bytes,
        in_flight,
    };
    response.map(|body| record.log_at_end(body))
}

/// Forwards one request; returns the response and the service name for logs and metrics.
async fn forward(
    outbound: &Outbound,
    caller: &Caller,
    mut request: Request<Body>,
    request_id: &str,
    in_flight: &mut Vec<InFlight>,
) -> (Response<Body>, String) {
    let refuse = |kind: ProblemKind, detail: String, service: &str| {
        (
            problem_response(&Problem::new(kind, detail, request_id)),
            service.to_owned(),
        )
    };
    if let Err(reason) = &caller.admitted {
        return refuse(ProblemKind::CallerNotAttested, reason.clone(), "-");
    }
    let service = match outbound.routes.target_of(&request) {
        Ok(service) => service,
        Err((kind, detail)) => return refuse(kind, detail, "-"),
    };
    let Some(material) = outbound.material.borrow().clone() else {
        return refuse(
            ProblemKind::NoIdentity,
            format!(
                "agent {} has no valid SVID right now; see deputyd's /status for why",
                outbound.agent.name
            ),
            &service.name,
        );
    };
    let call = OutboundCall {
        agent: &outbound.agent,
        signers: &outbound.signers,
        links: &outbound.links,
        contexts: &outbound.contexts,
        material: &material,
        service: &service,
        now: std::time::SystemTime::now(),
        origination_by_policy: outbound.policy.is_some(),
    };
    let plan = match delegation::plan(&call, request.headers()) {
        Ok(plan) => plan,
        Err((kind, detail)) => return refuse(kind, detail, &service.name),
    };
    if let Some(task) = plan.task() {
        caller.handle.saw_task(task);
    }
    let narrowed = match &outbound.policy {
        None => None,
        Some(policy) => match decide(policy, &call, &plan, request, request_id).await {
            Ok((allowed, narrowed)) => {
                request = allowed;
                narrowed
            }
            Err(problem) => return (problem_response(&problem), service.name.clone()),
        },
    };
    let decision_id = DecisionId::of(request.extensions());
    // The connection first: a call that cannot leave the node must not spend its budget.
    let (mut sender, pooled_in_flight) = match outbound
        .pool
        .sender(&outbound.agent.name, &service, &material)
        .await
    {
        Ok(sender) => sender,
        Err(e) => return refuse(e.kind, e.detail, &service.name),
    };
    if let Some(task) = plan.task() {
        pooled_in_flight.saw_task(task);
    }
    in_flight.push(pooled_in_flight);
    let spent_under = plan.context().cloned();
    let chain = match delegation::sign(&call, plan, narrowed) {
        Ok(chain) => chain,
        Err((kind, detail)) => return refuse(kind, detail, &service.name),
    };

    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = match format!("https://{}{path}", service.name).parse() {
        Ok(uri) => uri,
        Err(e) => {
            return refuse(
                ProblemKind::BadRequest,
                format!("bad request target: {e}"),
                &service.name,
            );
        }
    };
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    strip_hop_by_hop(request.headers_mut());
    request.headers_mut().remove(header::HOST);
    // The agent's own Deputy-* headers were requests to this deputyd, not facts for the peer.
    strip_all_deputy_headers(request.headers_mut());
    if let Some(chain) = chain.and_then(|c| HeaderValue::from_str(&c).ok()) {
        request.headers_mut().insert(DELEGATION, chain);
    }
    // The join key of both ends' logs: the receiving deputyd takes it as its request's id.
    if let Ok(id) = HeaderValue::from_str(request_id) {
        request.headers_mut().insert(REQUEST_ID, id);
    }

    let sent = tokio::time::timeout(outbound.timeouts.request, sender.try_send_request(request))
        .await
        .map(|sent| {
            sent.map_err(|mut failed| {
                // hyper hands back a request it never wrote: that call did not happen.
                if failed.take_message().is_some()
                    && let Some(context) = &spent_under
                {
                    context.refund();
                }
                failed.into_error()
            })
        });
    match sent {
        Ok(Ok(response)) => {
            let mut response = response.map(stream);
            strip_hop_by_hop(response.headers_mut());
            // What the agent hears from deputyd about its call comes from this deputyd only: a
            // peer (or the agent behind it) must not hand it a context handle or forged facts.
            strip_all_deputy_headers(response.headers_mut());
            if let Ok(id) = HeaderValue::from_str(request_id) {
                response.headers_mut().insert(REQUEST_ID, id);
            }
            DecisionId::mark(&mut response, decision_id);
            (response, service.name.clone())
        }
        Ok(Err(e)) => refuse(
            ProblemKind::UpstreamUnavailable,
            format!("{} did not answer: {e}", service.name),
            &service.name,
        ),
        Err(_) => refuse(
            ProblemKind::Timeout,
            format!(
                "{} sent no response within {:?}; retry later or raise [timeouts] request",
                service.name, outbound.timeouts.request
            ),
            &service.name,
        ),
    }
}

/// Asks the policy whether this agent may make this call; returns the request to send (its body
/// still streaming, inspected) and the policy's narrower scope for the next link, if any.
async fn decide(
    policy: &PolicyConfig,
    call: &OutboundCall<'_>,
    plan: &delegation::TaskPlan,
    request: Request<Body>,
    request_id: &str,
) -> Result<(Request<Body>, Option<Vec<String>>), Problem> {
    let asked = request.uri().clone();
    let parties = authz::Parties {
        direction: Direction::Outbound,
        agent: (&call.agent.name, &call.agent.spiffe_id),
        peer: None,
        service: Some(call.service),
        mcp: call.service.mcp,
    };
    let (request, record) = authz::judge(
        policy,
        &parties,
        plan.facts(&call.agent.spiffe_id),
        request,
        &asked,
        call.now,
        request_id,
    )
    .await?;
    Ok((request, record.decision.scope))
}

/// The HTTP server of both listeners: HTTP/1.1 and HTTP/2, with a bound on how long a client may
/// take to send its request headers (a client that trickles them must not hold a connection and
/// its task forever).
pub(crate) fn server_builder(timeouts: &Timeouts, limits: &Limits) -> auto::Builder<TokioExecutor> {
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
