//! `verify-chain`: the peer's delegation chain, verified hop by hop and bound to the mTLS peer
//! and the local agent. Without a policy, its first link must be one the operator allows.

use super::Call;
use crate::delegation::verify_inbound;
use crate::pipeline::Outcome;
use crate::problem::ProblemKind;

pub(super) fn verify(call: &mut Call<'_>) -> Outcome {
    let (inbound, connection) = (call.inbound, call.connection);
    let chain = match call.chain.take() {
        None => return Ok(()),
        Some(Err(())) => {
            return Err(call.chain_refused((
                ProblemKind::ChainRejected,
                "the Deputy-Delegation header is not visible ASCII".to_owned(),
            )));
        }
        Some(Ok(chain)) => chain,
    };
    let verified = verify_inbound(
        &inbound.chains,
        &inbound.anchors,
        &connection.agent.spiffe_id,
        &chain,
        &connection.peer,
        call.now,
    )
    .map_err(|refusal| call.chain_refused(refusal))?;
    connection.handle.saw_task(verified.task());
    if inbound.policy.is_none() {
        inbound
            .without_policy
            .check_origin(&verified)
            .map_err(|refusal| call.chain_refused(refusal))?;
    }
    call.verified = Some(verified);
    Ok(())
}
