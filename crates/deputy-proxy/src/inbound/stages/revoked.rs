//! `revoked`: a call whose chain is of a revoked task or principal, or with a revoked agent in
//! it (the peer, the local agent, any actor of the chain), is refused; any other call is
//! registered so that a revocation while it streams cuts it.

use std::sync::Arc;

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::Problem;
use crate::revocation::Acting;

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let Some(watched) = call.watched else {
        return Ok(());
    };
    let connection = call.connection;
    let mut acting = Acting::default();
    acting.agents.push(connection.peer_id.clone());
    acting.agents.push(connection.agent.id.clone());
    if let Some(chain) = &call.verified {
        acting
            .agents
            .extend(chain.actors().into_iter().map(Arc::from));
        acting.task = Some(chain.task().to_owned());
        acting.principal = Some(chain.principal().to_owned());
        acting.originator = Some(chain.originator().to_owned());
        if call.inbound.audit.is_some() {
            call.audit_facts = Some(crate::audit::Facts {
                task: acting.task.clone(),
                principal: acting.principal.clone(),
                originator: acting.originator.clone(),
                actors: chain.actors().into_iter().map(str::to_owned).collect(),
                dry_run: call.dry_run,
                replayed: false,
                approval: None,
            });
        }
    }
    match watched.admit(acting, crate::unix(call.now)) {
        Ok(()) => Ok(()),
        Err(revocation) => {
            let (kind, detail) = crate::revocation::refusal(&revocation, "inbound");
            Err(Problem::new(kind, detail, call.request_id).into())
        }
    }
}
