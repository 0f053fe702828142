//! `revoked`: a call under a revoked task or principal, or with a revoked agent in it (the
//! caller, the service, any actor of the chain it continues), is refused; any other call is
//! registered so that a revocation while it streams cuts it. A call of a task keeps what a
//! revocation of it follows (`connect` gives the next node its key).

use std::sync::Arc;

use super::Call;
use crate::config::Reach;
use crate::delegation::TaskPlan;
use crate::pipeline::Outcome;
use crate::problem::Problem;
use crate::revocation::{Acting, TaskFacts, TaskKey};

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let plan = call
        .plan
        .as_ref()
        .ok_or_else(|| call.missing("revoked", "task plan"))?;
    let Some(watched) = call.watched else {
        return Ok(());
    };
    let caller = &call.outbound.agent_id;
    let mut acting = Acting::default();
    acting.agents.push(caller.clone());
    if let Some(Reach::Mesh(peer)) = call.service.as_ref().map(|s| &s.reach) {
        acting.agents.push(peer.id.clone());
    }
    match plan {
        TaskPlan::None => {}
        TaskPlan::Originate { principal, .. } => {
            acting.principal = Some(principal.clone());
            acting.originator = Some(caller.to_string());
        }
        TaskPlan::Continue { context, .. } => {
            let chain = &context.chain;
            acting
                .agents
                .extend(chain.actors().into_iter().map(Arc::from));
            acting.principal = Some(chain.principal().to_owned());
            acting.originator = Some(chain.originator().to_owned());
        }
    }
    acting.task = plan.task().map(str::to_owned);
    if call.outbound.audit.is_some() && (acting.task.is_some() || call.dry_run.is_some()) {
        call.audit_facts = Some(crate::audit::Facts {
            task: acting.task.clone(),
            principal: acting.principal.clone(),
            originator: acting.originator.clone(),
            // The chain as it goes out: the one it continues (ending with this agent), or this
            // agent starting one; then the service it delegates to.
            actors: match plan {
                TaskPlan::Continue { context, .. } => context
                    .chain
                    .actors()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                _ => vec![caller.to_string()],
            }
            .into_iter()
            .chain(
                call.service
                    .as_ref()
                    .and_then(|s| s.spiffe_id())
                    .map(ToString::to_string),
            )
            .collect(),
            dry_run: call.dry_run.is_some(),
            replayed: false,
            approval: None,
        });
    }
    // What a revocation of the task follows from here: its exact name and agents.
    let hops = match (&acting.task, &acting.principal, &acting.originator) {
        (Some(id), Some(principal), Some(originator)) => plan.expires_at(call.now).map(|until| {
            let facts = TaskFacts {
                agents: acting.agents.iter().map(|a| a.to_string()).collect(),
            };
            (
                TaskKey::new(id, principal, originator),
                facts,
                crate::unix(until),
            )
        }),
        _ => None,
    };
    match watched.admit(acting, crate::unix(call.now)) {
        Ok(()) => {
            call.task_hops = hops;
            Ok(())
        }
        Err(revocation) => {
            let (kind, detail) = crate::revocation::refusal(&revocation, "outbound");
            Err(Problem::new(kind, detail, call.request_id).into())
        }
    }
}
