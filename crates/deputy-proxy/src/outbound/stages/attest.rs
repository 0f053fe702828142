//! `attest`: the process on the connection is one of the agent's (its uid, attested once per
//! connection when it was accepted).

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    match &call.caller.admitted {
        Ok(_) => Ok(()),
        Err(reason) => Err(Problem::new(
            ProblemKind::CallerNotAttested,
            reason.clone(),
            call.request_id,
        )
        .into()),
    }
}
