//! `deliver`: the call, as plain HTTP to the local agent's upstream; its answer for the peer.

use super::Call;
use crate::body::{DecisionId, problem_response, stream};
use crate::pipeline::Waiting;
use crate::problem::{Problem, ProblemKind};
use crate::routing::strip_hop_by_hop;

pub(super) fn deliver<'a>(call: &'a mut Call<'_>) -> Waiting<'a> {
    Box::pin(async move {
        let request = call
            .request
            .take()
            .ok_or_else(|| call.missing("deliver", "request"))?;
        let (inbound, agent) = (call.inbound, &call.connection.agent);
        let decision_id = DecisionId::of(request.extensions());
        let timeout = inbound.timeouts.request;
        let problem = |kind, detail| problem_response(&Problem::new(kind, detail, call.request_id));
        let mut response =
            match tokio::time::timeout(timeout, inbound.upstreams.request(request)).await {
                Ok(Ok(response)) => {
                    let mut response = response.map(stream);
                    strip_hop_by_hop(response.headers_mut());
                    response
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
    })
}
