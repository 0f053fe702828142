//! `target`: where the call is delivered: the local agent's upstream, with the request's path.

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::routing::upstream_uri;

pub(super) fn resolve(call: &mut Call<'_>) -> Outcome {
    let agent = &call.connection.agent;
    let request_id = call.request_id;
    let Some(upstream) = &agent.upstream else {
        return Err(Problem::new(
            ProblemKind::UpstreamUnavailable,
            format!(
                "agent {} serves no inbound calls (it has no upstream)",
                agent.name
            ),
            request_id,
        )
        .into());
    };
    let request = call.request_mut("target")?;
    let uri = upstream_uri(upstream, request.uri()).map_err(|e| {
        Problem::new(
            ProblemKind::BadRequest,
            format!("bad request target: {e}"),
            request_id,
        )
    })?;
    call.asked = Some(std::mem::replace(request.uri_mut(), uri));
    Ok(())
}
