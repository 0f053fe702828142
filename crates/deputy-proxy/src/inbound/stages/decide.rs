//! `decide`: the policy's decision, when one is configured: may this peer make this request of
//! this agent, in this task?

use deputy_policy::Direction;

use super::Call;
use crate::authz;
use crate::delegation::inbound_task;
use crate::pipeline::Step;

pub(super) fn decide<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    let (inbound, connection) = (call.inbound, call.connection);
    let Some(policy) = &inbound.policy else {
        return Step::Now(Ok(()));
    };
    Step::Wait(Box::pin(async move {
        let request = call
            .request
            .take()
            .ok_or_else(|| call.missing("decide", "request"))?;
        let asked = call
            .asked
            .as_ref()
            .ok_or_else(|| call.missing("decide", "request target"))?;
        let agent = &connection.agent;
        let parties = authz::Parties {
            direction: Direction::Inbound,
            agent: (&agent.name, &agent.spiffe_id),
            peer: Some(&connection.peer),
            service: None,
            protocol: &agent.protocol,
        };
        let task = call
            .verified
            .as_ref()
            .map(|v| inbound_task(&inbound.contexts, v));
        let judged = authz::judge(
            policy,
            &parties,
            task,
            request,
            asked,
            call.now,
            call.request_id,
        )
        .await;
        match judged {
            Ok((request, _)) => {
                call.request = Some(request);
                Ok(())
            }
            Err(problem) => {
                if let Some(decision_id) = &problem.decision_id {
                    tracing::info!(agent = %agent.name, peer = %connection.peer, %decision_id,
                        "inbound call denied by policy");
                }
                Err(problem.into())
            }
        }
    }))
}
