//! `identity`: the agent's current SVID, which the call goes out with.

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};

pub(super) fn take(call: &mut Call<'_>) -> Outcome {
    let Some(material) = call.outbound.material.borrow().clone() else {
        return Err(Problem::new(
            ProblemKind::NoIdentity,
            format!(
                "agent {} has no valid SVID right now; see deputyd's /status for why",
                call.outbound.agent.name
            ),
            call.request_id,
        )
        .into());
    };
    call.material = Some(material);
    Ok(())
}
