//! `send`: the request, rewritten for the service's deputyd (its chain and request id added,
//! the agent's own Deputy-* headers dropped), sent; the answer cleaned for the agent.

use http::{HeaderValue, Uri, Version, header};

use super::Call;
use crate::body::{DecisionId, stream};
use crate::pipeline::Waiting;
use crate::problem::{Problem, ProblemKind};
use crate::routing::{DELEGATION, REQUEST_ID, strip_all_deputy_headers, strip_hop_by_hop};

pub(super) fn send<'a>(call: &'a mut Call<'_>) -> Waiting<'a> {
    Box::pin(async move {
        let request_id = call.request_id;
        let mut request = call
            .request
            .take()
            .ok_or_else(|| call.missing("send", "request"))?;
        let mut sender = call
            .sender
            .take()
            .ok_or_else(|| call.missing("send", "connection"))?;
        let service = call.service_name();
        let decision_id = DecisionId::of(request.extensions());
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri: Uri = format!("https://{service}{path}").parse().map_err(|e| {
            Problem::new(
                ProblemKind::BadRequest,
                format!("bad request target: {e}"),
                request_id,
            )
        })?;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        // The agent's own Deputy-* headers were requests to this deputyd, not facts for the peer.
        strip_all_deputy_headers(headers);
        if let Some(chain) = call
            .chain
            .take()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(DELEGATION, chain);
        }
        // The join key of both ends' logs: the receiving deputyd takes it as its request's id.
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, id);
        }

        let timeout = call.outbound.timeouts.request;
        let spent_under = call.spent_under.take();
        let sent = tokio::time::timeout(timeout, sender.try_send_request(request))
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
        let mut response = match sent {
            Ok(Ok(response)) => response.map(stream),
            Ok(Err(e)) => {
                return Err(Problem::new(
                    ProblemKind::UpstreamUnavailable,
                    format!("{service} did not answer: {e}"),
                    request_id,
                )
                .into());
            }
            Err(_) => {
                return Err(Problem::new(
                    ProblemKind::Timeout,
                    format!(
                        "{service} sent no response within {timeout:?}; retry later or raise \
                         [timeouts] request"
                    ),
                    request_id,
                )
                .into());
            }
        };
        strip_hop_by_hop(response.headers_mut());
        // What the agent hears from deputyd about its call comes from this deputyd only: a
        // peer (or the agent behind it) must not hand it a context handle or forged facts.
        strip_all_deputy_headers(response.headers_mut());
        if let Ok(id) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        DecisionId::mark(&mut response, decision_id);
        call.response = Some(response);
        Ok(())
    })
}
