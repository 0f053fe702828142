//! `audit`: a call begins only if its record can be written, unless the operator chose to
//! serve without the trail (`[audit] on_failure`).

use super::Call;
use crate::pipeline::Outcome;

pub(super) fn ready(call: &mut Call<'_>) -> Outcome {
    crate::audit::ready(call.inbound.audit.as_ref(), call.request_id)
}
