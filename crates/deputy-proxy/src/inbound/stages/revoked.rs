//! `revoked`: a call whose chain is of a revoked task or principal, or with a revoked agent in
//! it (the peer, the local agent, any actor of the chain), is refused; any other call is
//! registered so that a revocation while it streams cuts it. The key the calling node sent with
//! the task is kept: a revocation of the task from that node must carry it.

use deputy_state::CallFacts;

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::Problem;
use crate::revocation::TaskFacts;

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let connection = call.connection;
    let peer = connection.peer.to_string();
    let local = connection.agent.spiffe_id.to_string();
    let mut agents: Vec<&str> = vec![peer.as_str(), local.as_str()];
    let (task, principal) = match &call.verified {
        Some(chain) => {
            agents.extend(chain.actors());
            (Some(chain.task()), Some(chain.principal()))
        }
        None => (None, None),
    };
    let facts = CallFacts {
        task,
        principal,
        agents: &agents,
    };
    let admitted = call
        .watched
        .map_or(Ok(()), |w| w.admit(&facts, crate::unix(call.now)));
    match admitted {
        Ok(()) => {
            if let (Some(chain), Some(key)) = (&call.verified, &call.revocation_key) {
                let facts = TaskFacts {
                    principal: chain.principal().to_owned(),
                    agents: agents.iter().map(|a| (*a).to_owned()).collect(),
                };
                call.inbound.revoker.hops.arrived_with(
                    chain.task(),
                    &facts,
                    key,
                    chain.last().exp,
                    crate::unix(call.now),
                );
            }
            Ok(())
        }
        Err(revocation) => {
            let (kind, detail) = crate::revocation::refusal(&revocation, "inbound");
            Err(Problem::new(kind, detail, call.request_id).into())
        }
    }
}
