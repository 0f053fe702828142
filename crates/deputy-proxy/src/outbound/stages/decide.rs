//! `decide`: the policy's decision, when one is configured: may this agent make this call? Its
//! narrower scope, if any, is kept for the next link.

use deputy_policy::Direction;

use super::Call;
use crate::authz;
use crate::pipeline::Waiting;

pub(super) fn decide<'a>(call: &'a mut Call<'_>) -> Waiting<'a> {
    Box::pin(async move {
        let Some(policy) = &call.outbound.policy else {
            return Ok(());
        };
        let request = call
            .request
            .take()
            .ok_or_else(|| call.missing("decide", "request"))?;
        let delegation = call.delegation("decide")?;
        let task = call
            .plan
            .as_ref()
            .ok_or_else(|| call.missing("decide", "task plan"))?
            .facts(&delegation.agent.spiffe_id);
        let asked = request.uri().clone();
        let parties = authz::Parties {
            direction: Direction::Outbound,
            agent: (&delegation.agent.name, &delegation.agent.spiffe_id),
            peer: None,
            service: Some(delegation.service),
            mcp: delegation.service.mcp,
        };
        let (request, record) = authz::judge(
            policy,
            &parties,
            task,
            request,
            &asked,
            call.now,
            call.request_id,
        )
        .await?;
        call.request = Some(request);
        call.narrowed = record.decision.scope;
        Ok(())
    })
}
