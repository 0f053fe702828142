//! `revoked`: a call under a revoked task or principal, or with a revoked agent in it (the
//! caller, the service, any actor of the chain it continues), is refused; any other call is
//! registered so that a revocation while it streams cuts it. A call of a task keeps what a
//! revocation of it follows (`send` gives the next node its key).

use deputy_state::CallFacts;

use super::Call;
use crate::config::Reach;
use crate::delegation::TaskPlan;
use crate::pipeline::Outcome;
use crate::problem::Problem;
use crate::revocation::{TaskFacts, TaskKey};

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let plan = call
        .plan
        .as_ref()
        .ok_or_else(|| call.missing("revoked", "task plan"))?;
    let caller = call.outbound.agent.spiffe_id.to_string();
    let target = call.service.as_ref().and_then(|s| match &s.reach {
        Reach::Mesh(peer) => Some(peer.spiffe_id.to_string()),
        Reach::External(_) => None,
    });
    let mut agents: Vec<&str> = vec![caller.as_str()];
    agents.extend(target.as_deref());
    let (principal, originator) = match plan {
        TaskPlan::None => (None, None),
        TaskPlan::Originate { principal, .. } => (Some(principal.as_str()), Some(caller.as_str())),
        TaskPlan::Continue { context, .. } => {
            agents.extend(context.chain.actors());
            (
                Some(context.chain.principal()),
                Some(context.chain.originator()),
            )
        }
    };
    let facts = CallFacts {
        task: plan.task(),
        principal,
        originator,
        agents: &agents,
    };
    let admitted = call
        .watched
        .map_or(Ok(()), |w| w.admit(&facts, crate::unix(call.now)));
    match admitted {
        Ok(()) => {
            if let (Some(id), Some(principal), Some(originator), Some(until)) = (
                plan.task(),
                principal,
                originator,
                plan.expires_at(call.now),
            ) {
                let task = TaskKey::new(id, principal, originator);
                let facts = TaskFacts {
                    agents: agents.iter().map(|a| (*a).to_owned()).collect(),
                };
                call.task_hops = Some((task, facts, crate::unix(until)));
            }
            Ok(())
        }
        Err(revocation) => {
            let (kind, detail) = crate::revocation::refusal(&revocation, "outbound");
            Err(Problem::new(kind, detail, call.request_id).into())
        }
    }
}
