//! `deliver`: the call, as plain HTTP to the local agent's upstream; its answer for the peer.

use super::Call;
use crate::body::{DecisionId, problem_response, stream};
use crate::pipeline::Step;
use crate::problem::{Problem, ProblemKind};
use crate::routing::strip_hop_by_hop;

pub(super) fn deliver<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    Step::Wait(Box::pin(async move {
        let mut request = call
            .request
            .take()
            .ok_or_else(|| call.missing("deliver", "request"))?;
        let (inbound, agent) = (call.inbound, &call.connection.agent);
        let decision_id = DecisionId::of(request.extensions());
        // Taken, not cloned: it holds the call's whole policy input.
        let lister = request.extensions_mut().remove::<crate::listing::Lister>();
        if call.dry_run {
            let chain = call.verified.as_ref().map(|v| {
                serde_json::json!({
                    "task": v.task(),
                    "principal": v.principal(),
                    "originator": v.originator(),
                    "links": v.links.len(),
                })
            });
            let report = serde_json::json!({
                "dry_run": true,
                "delivered": false,
                "agent": agent.name,
                "decision_id": decision_id,
                "chain": chain,
            });
            let mut response = http::Response::new(crate::body::full(report.to_string().into()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            DecisionId::mark(&mut response, decision_id);
            call.response = Some(response);
            return Ok(());
        }
        let timeout = inbound.timeouts.request;
        let problem = |kind, detail| problem_response(&Problem::new(kind, detail, call.request_id));
        let mut response =
            match tokio::time::timeout(timeout, inbound.upstreams.request(request)).await {
                Ok(Ok(response)) => {
                    let mut response = response.map(stream);
                    strip_hop_by_hop(response.headers_mut());
                    // What the caller hears from deputyd (a problem's source) comes from
                    // deputyd only: the agent cannot pass its answer off as a refusal.
                    crate::routing::strip_all_deputy_headers(response.headers_mut());
                    match lister {
                        Some(lister) => lister.filter(response).await,
                        None => response,
                    }
                }
                Ok(Err(e)) => problem(
                    ProblemKind::UpstreamUnavailable,
                    format!(
                        "agent {} did not answer at its upstream: {e}; is it running?",
                        agent.name
                    ),
                ),
                Err(_) => problem(
                    ProblemKind::Timeout,
                    format!("agent {} sent no response within {timeout:?}", agent.name),
                ),
            };
        // The policy decided this call even when its agent did not answer: the access record
        // names the decision.
        DecisionId::mark(&mut response, decision_id);
        call.response = Some(response);
        Ok(())
    }))
}
