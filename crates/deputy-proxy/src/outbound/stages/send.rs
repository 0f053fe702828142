//! `send`: the request, rewritten for where it goes (a mesh service's deputyd: its chain and
//! request id added; a tool outside the mesh: `send_external`), the agent's own Deputy-*
//! headers dropped, sent; the answer cleaned for the agent.

use http::{HeaderValue, Request, Response, Uri, Version, header};

use super::{Call, send_external};
use crate::body::{Body, DecisionId, stream};
use crate::config::Reach;
use crate::pipeline::{Refused, Step};
use crate::problem::{Problem, ProblemKind};
use crate::revocation::REVOCATION_KEY;
use crate::routing::{DELEGATION, REQUEST_ID, strip_all_deputy_headers, strip_hop_by_hop};

pub(super) fn send<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    Step::Wait(Box::pin(async move {
        let mut request = call
            .request
            .take()
            .ok_or_else(|| call.missing("send", "request"))?;
        let service = call
            .service
            .clone()
            .ok_or_else(|| call.missing("send", "service"))?;
        let decision_id = DecisionId::of(request.extensions());
        let lister = request.extensions_mut().remove::<crate::listing::Lister>();
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        // The agent's own Deputy-* headers were requests to this deputyd, not facts for the peer.
        strip_all_deputy_headers(headers);
        // The join key of both ends' logs: the receiving deputyd takes it as its request's id.
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            headers.insert(REQUEST_ID, id);
        }
        if call.dry_run.is_some() {
            return dry_run(call, &service, request, decision_id).await;
        }
        let mut response = match &service.reach {
            Reach::Mesh(_) => to_mesh(call, request).await?,
            Reach::External(external) => {
                send_external::send(call, &service.name, external, request).await?
            }
        };
        strip_hop_by_hop(response.headers_mut());
        // A problem the service's deputyd answered with (a mesh peer is a deputyd, which
        // removes its agent's Deputy-* headers); a tool outside the mesh vouches for nothing.
        let peer_refused = matches!(service.reach, Reach::Mesh(_))
            && response
                .headers()
                .get(crate::problem::SOURCE)
                .map(HeaderValue::as_bytes)
                == Some(crate::problem::FROM_THIS_NODE.as_bytes());
        // What the agent hears from deputyd about its call comes from this deputyd only: a
        // peer (or the agent behind it) must not hand it a context handle or forged facts.
        strip_all_deputy_headers(response.headers_mut());
        if peer_refused {
            response.headers_mut().insert(
                crate::problem::SOURCE,
                HeaderValue::from_static(crate::problem::FROM_SERVICE_NODE),
            );
        }
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        if matches!(service.protocol, deputy_policy::mcp::Protocol::A2a)
            && let Reach::Mesh(peer) = &service.reach
            && let Ok(id) = HeaderValue::from_str(&peer.id)
        {
            // The agent that answered, as its certificate proved: what an A2A caller checks
            // an Agent Card against (the card itself is the agent's word, passed on as sent).
            response.headers_mut().insert(crate::routing::PEER_ID, id);
        }
        DecisionId::mark(&mut response, decision_id);
        if let Some(lister) = lister {
            response = lister.filter(response).await;
        }
        call.response = Some(response);
        Ok(())
    }))
}

/// A dry run: the service's deputyd is asked to run its end too (and deliver nothing); a tool
/// outside the mesh is not called. The answer reports both ends.
async fn dry_run(
    call: &mut Call<'_>,
    service: &crate::config::Service,
    mut request: Request<crate::body::Body>,
    decision_id: Option<String>,
) -> crate::pipeline::Outcome {
    let far_end = match service.reach {
        Reach::External(_) => None,
        Reach::Mesh(_) => {
            request
                .headers_mut()
                .insert(super::dry_run::DRY_RUN, HeaderValue::from_static("true"));
            let response = to_mesh(call, request).await?;
            let status = response.status();
            let body = crate::body::read_whole(response.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let answer = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            });
            Some((status, answer))
        }
    };
    let found = call.dry_run.take().unwrap_or_default();
    let mut response = super::dry_run::answer(&found, &service.name, decision_id, far_end);
    if let Ok(id) = HeaderValue::from_str(call.request_id) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    call.response = Some(response);
    Ok(())
}

/// To the service's deputyd, over the pooled connection `connect` got, with the chain `sign`
/// made.
async fn to_mesh(
    call: &mut Call<'_>,
    mut request: Request<Body>,
) -> Result<Response<Body>, Refused> {
    let request_id = call.request_id;
    let sender = call
        .sender
        .take()
        .ok_or_else(|| call.missing("send", "connection"))?;
    let service = call.service_name();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = format!("https://{service}{path}")
        .parse()
        .map_err(|e| bad_target(&e, request_id))?;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    if let Some(chain) = call
        .chain
        .take()
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        request.headers_mut().insert(DELEGATION, chain);
    }
    if let Some(key) = call.revocation_key.take() {
        request.headers_mut().insert(REVOCATION_KEY, key);
    }

    let timeout = call.outbound.timeouts.request;
    let spent_under = call.spent_under.take();
    let sent = tokio::time::timeout(timeout, send_again_if_unwritten(call, sender, request)).await;
    match sent {
        Ok(Ok(response)) => Ok(response.map(stream)),
        Ok(Err(failed)) => {
            // A request never written is a call that did not happen.
            if !failed.written
                && let Some(context) = &spent_under
            {
                context.refund();
            }
            Err(failed.why.unwrap_or_else(|| {
                Problem::new(
                    ProblemKind::UpstreamUnavailable,
                    format!("{service} did not answer: {}", failed.error),
                    request_id,
                )
                .into()
            }))
        }
        Err(_) => Err(timed_out(&service, timeout, request_id)),
    }
}

/// A request that got no answer.
struct NotAnswered {
    /// hyper's error, of the last attempt.
    error: String,
    /// Whether the peer may have seen the request.
    written: bool,
    /// Why no second connection could be had, if that is where it ended.
    why: Option<Refused>,
}

/// Sends `request` on `sender`. A request hyper hands back unwritten did not happen: its
/// connection closed as the pool handed it out (the peer closing it as idle or drained, in the
/// moment between the pool's check and the send), so it is sent once more on a connection the
/// pool finds or opens. Once: a second connection that closes the same way says something is
/// wrong at the peer.
async fn send_again_if_unwritten(
    call: &mut Call<'_>,
    mut sender: hyper::client::conn::http2::SendRequest<Body>,
    request: Request<Body>,
) -> Result<Response<hyper::body::Incoming>, NotAnswered> {
    let not_answered = |mut failed: hyper::client::conn::TrySendError<Request<Body>>| {
        let unwritten = failed.take_message();
        (unwritten, failed.into_error().to_string())
    };
    let (request, first) = match sender.try_send_request(request).await {
        Ok(response) => return Ok(response),
        Err(failed) => match not_answered(failed) {
            (Some(request), error) => (request, error),
            (None, error) => {
                return Err(NotAnswered {
                    error,
                    written: true,
                    why: None,
                });
            }
        },
    };
    tracing::debug!(request_id = call.request_id, error = %first,
        "the pooled connection closed before the request was written; sending it again");
    // The closed connection's count, which `connect` pushed last: kept, it would hold a place
    // of the pair's `max_pool_connections` until this call ends.
    call.in_flight.pop();
    let mut again = match super::connect::pooled_sender(call).await {
        Ok(Some(sender)) => sender,
        // `Ok(None)` only for a tool outside the mesh, which this call is not.
        other => {
            return Err(NotAnswered {
                error: first,
                written: false,
                why: other.err(),
            });
        }
    };
    crate::metrics::resent(&call.service_name());
    again.try_send_request(request).await.map_err(|failed| {
        let (unwritten, error) = not_answered(failed);
        NotAnswered {
            error,
            written: unwritten.is_none(),
            why: None,
        }
    })
}

/// The key the service's node is given for the call's task: what a revocation of the task
/// sent there later must carry. A call of a task that cannot be given one is refused: a
/// revocation could not follow it. A dry run goes nowhere and takes none.
pub(super) fn revocation_key(call: &Call<'_>) -> Result<Option<HeaderValue>, Refused> {
    let (Some((task, facts, until)), Some(service)) = (&call.task_hops, &call.service) else {
        return Ok(None);
    };
    if call.dry_run.is_some() {
        return Ok(None);
    }
    let Reach::Mesh(peer) = &service.reach else {
        return Ok(None);
    };
    let key = call
        .outbound
        .revoker
        .hops
        .key_for(
            task,
            facts,
            (&peer.address, &service.name, &peer.spiffe_id),
            *until,
            crate::unix(call.now),
        )
        .map_err(|e| Problem::new(ProblemKind::Overloaded, e.to_string(), call.request_id))?;
    Ok(HeaderValue::from_str(&key).ok())
}

pub(super) fn bad_target(error: &dyn std::fmt::Display, request_id: &str) -> Refused {
    Problem::new(
        ProblemKind::BadRequest,
        format!("bad request target: {error}"),
        request_id,
    )
    .into()
}

pub(super) fn timed_out(service: &str, timeout: std::time::Duration, request_id: &str) -> Refused {
    Problem::new(
        ProblemKind::Timeout,
        format!(
            "{service} sent no response within {timeout:?}; retry later or raise [timeouts] \
             request"
        ),
        request_id,
    )
    .into()
}
