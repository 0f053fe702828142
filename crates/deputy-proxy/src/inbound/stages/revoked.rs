//! `revoked`: a call whose chain is of a revoked task or principal, or with a revoked agent in
//! it (the peer, the local agent, any actor of the chain), is refused; any other call is
//! registered so that a revocation while it streams cuts it.

use deputy_state::CallFacts;

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::Problem;

pub(super) fn check(call: &mut Call<'_>) -> Outcome {
    let connection = call.connection;
    let peer = connection.peer.to_string();
    let local = connection.agent.spiffe_id.to_string();
    let mut agents: Vec<&str> = vec![peer.as_str(), local.as_str()];
    let (task, principal, originator) = match &call.verified {
        Some(chain) => {
            agents.extend(chain.actors());
            (
                Some(chain.task()),
                Some(chain.principal()),
                Some(chain.originator()),
            )
        }
        None => (None, None, None),
    };
    let facts = CallFacts {
        task,
        principal,
        originator,
        agents: &agents,
    };
    let admitted = call
        .watched
        .map_or(Ok(()), |w| w.admit(&facts, crate::unix(call.now)));
    match admitted {
        Ok(()) => Ok(()),
        Err(revocation) => {
            let (kind, detail) = crate::revocation::refusal(&revocation, "inbound");
            Err(Problem::new(kind, detail, call.request_id).into())
        }
    }
}
