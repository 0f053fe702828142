//! `decide`: the policy's decision, when one is configured: may this agent make this call? Its
//! narrower scope, if any, is kept for the next link. Without a policy, the service's deputyd
//! decides, or for a tool outside the mesh, its `callers`.

use deputy_policy::Direction;

use super::Call;
use crate::authz;
use crate::config::Reach;
use crate::pipeline::{Outcome, Step};
use crate::problem::{Problem, ProblemKind};

pub(super) fn decide<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    let outbound = call.outbound;
    let Some(policy) = &outbound.policy else {
        return Step::Now(without_policy(call));
    };
    Step::Wait(Box::pin(async move {
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
            protocol: &delegation.service.protocol,
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
        if record.decision.needs_approval() {
            let reason = record
                .decision
                .approval
                .as_ref()
                .map(|a| a.reason.clone())
                .unwrap_or_default();
            call.approval = Some(super::Obligation {
                reasons: vec![format!("approval required: {reason}")],
                reason,
                decision_id: record.id.clone(),
            });
        }
        call.narrowed = record.decision.scope;
        Ok(())
    }))
}

/// Nothing at the other end of a call to a tool outside the mesh checks it: its `callers` are
/// who may make it.
fn without_policy(call: &Call<'_>) -> Outcome {
    let service = call
        .service
        .as_ref()
        .ok_or_else(|| call.missing("decide", "service"))?;
    let Reach::External(external) = &service.reach else {
        return Ok(());
    };
    let agent = &call.outbound.agent.name;
    if external.callers.iter().any(|c| c == agent) {
        return Ok(());
    }
    Err(Problem::new(
        ProblemKind::PeerNotAllowed,
        format!(
            "agent {agent} may not call {}: it is not among that external service's callers \
             ({:?}); add it to `callers` in deputyd's [[external]]",
            service.name, external.callers
        ),
        call.request_id,
    )
    .into())
}
