//! `route`: the service the request names (its Host or absolute URI).

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::Problem;

pub(super) fn resolve(call: &mut Call<'_>) -> Outcome {
    let request = call
        .request
        .as_ref()
        .ok_or_else(|| call.missing("route", "request"))?;
    let service = call
        .outbound
        .routes
        .target_of(request)
        .map_err(|(kind, detail)| Problem::new(kind, detail, call.request_id))?;
    call.service = Some(service);
    Ok(())
}
