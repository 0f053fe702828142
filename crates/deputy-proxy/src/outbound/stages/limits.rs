//! `limits`: a connection over its listener's limit, or one carrying `max_streams` requests
//! already, is answered 503 `overloaded`.

use super::Call;
use crate::connections::over_limit;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let outbound = call.outbound;
    let Some((limit, detail)) = over_limit(
        &call.caller.slot,
        &outbound.slots,
        &call.in_flight[0],
        outbound.limits.max_streams,
        || format!("agent {}'s outbound listener", outbound.agent.name),
    ) else {
        return Ok(());
    };
    crate::metrics::overloaded("outbound", limit);
    Err(Problem::new(ProblemKind::Overloaded, detail, call.request_id).into())
}
