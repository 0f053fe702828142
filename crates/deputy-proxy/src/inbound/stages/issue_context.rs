//! `issue-context`: the verified chain kept as a context of the agent; the agent receives its
//! facts (principal, task, scope, actors, budget) and the handle to continue it, never the
//! chain itself.

use super::Call;
use crate::delegation::inbound_facts;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::revocation::{TaskFacts, TaskKey};

pub(super) fn issue(call: &mut Call<'_>) -> Outcome {
    if call.dry_run {
        // No context for a call that is not delivered; `deliver` reports the chain's facts.
        return Ok(());
    }
    let Some(verified) = call.verified.take() else {
        return Ok(());
    };
    let task = TaskKey::new(verified.task(), verified.principal(), verified.originator());
    let exp = verified.last().exp;
    let mut agents = vec![
        call.connection.peer.to_string(),
        call.connection.agent.spiffe_id.to_string(),
    ];
    agents.extend(verified.actors().into_iter().map(str::to_owned));
    let facts = inbound_facts(
        &call.inbound.contexts,
        &call.connection.agent.name,
        verified,
        call.now,
    )
    .map_err(|refusal| call.chain_refused(refusal))?;
    // Allowed: the key the calling node sent with the task is kept, so that a revocation of
    // the task from that node is accepted here. A key that cannot be kept refuses the call: a
    // revocation from that node could not be taken.
    if let Some(key) = &call.revocation_key
        && !call.inbound.revoker.hops.arrived_with(
            &task,
            &TaskFacts { agents },
            key,
            exp,
            crate::unix(call.now),
        )
    {
        return Err(Problem::new(
            ProblemKind::Overloaded,
            "this task already arrived here from as many nodes as a revocation of it can come \
             from; start another task",
            call.request_id,
        )
        .into());
    }
    call.request_mut("issue-context")?
        .headers_mut()
        .extend(facts.into_iter().map(|(k, v)| (Some(k), v)));
    Ok(())
}
