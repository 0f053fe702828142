//! `limits`: a connection over the listener's limit, or one carrying `max_streams` requests
//! already, is answered 503 `overloaded`.

use super::Call;
use crate::connections::over_limit;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let in_flight = call
        .in_flight
        .as_ref()
        .ok_or_else(|| call.missing("limits", "request count"))?;
    let Some((limit, detail)) = over_limit(
        &call.connection.slot,
        &call.inbound.slots,
        in_flight,
        call.inbound.limits.max_streams,
        || "the inbound listener".to_owned(),
    ) else {
        return Ok(());
    };
    crate::metrics::overloaded("inbound", limit);
    Err(Problem::new(ProblemKind::Overloaded, detail, call.request_id).into())
}
