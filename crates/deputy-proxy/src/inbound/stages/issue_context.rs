//! `issue-context`: the verified chain kept as a context of the agent; the agent receives its
//! facts (principal, task, scope, actors, budget) and the handle to continue it, never the
//! chain itself.

use super::Call;
use crate::delegation::inbound_facts;
use crate::pipeline::Outcome;

pub(super) fn issue(call: &mut Call<'_>) -> Outcome {
    if call.dry_run {
        // No context for a call that is not delivered; `deliver` reports the chain's facts.
        return Ok(());
    }
    let Some(verified) = call.verified.take() else {
        return Ok(());
    };
    let facts = inbound_facts(
        &call.inbound.contexts,
        &call.connection.agent.name,
        verified,
        call.now,
    )
    .map_err(|refusal| call.chain_refused(refusal))?;
    call.request_mut("issue-context")?
        .headers_mut()
        .extend(facts.into_iter().map(|(k, v)| (Some(k), v)));
    Ok(())
}
