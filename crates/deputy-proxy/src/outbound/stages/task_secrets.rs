//! `task-secrets`: the task's own credentials for the headers `inject` adds, when the agent's
//! secret is issued per task (`per_task = true`): issued on the task's first such call (a Vault
//! login of the task's own), reused by its later calls, revoked when the task's chain expires.
//! A call that belongs to no task cannot carry one, and is refused.

use super::Call;
use crate::pipeline::Step;
use crate::problem::{Problem, ProblemKind};

pub(super) fn obtain<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    let outbound = call.outbound;
    let Some(tasks) = &outbound.task_secrets else {
        return Step::Now(Ok(()));
    };
    Step::Wait(Box::pin(async move {
        let agent = &call.outbound.agent;
        let service = call
            .service
            .as_ref()
            .ok_or_else(|| call.missing("task-secrets", "service"))?;
        let mut wanted: Vec<&str> = agent
            .inject
            .iter()
            .filter(|i| i.service == service.name)
            .flat_map(|i| i.value.secrets())
            .filter(|secret| tasks.is_per_task(&agent.name, secret))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let plan = call
            .plan
            .as_ref()
            .ok_or_else(|| call.missing("task-secrets", "task plan"))?;
        let agent_id = &agent.spiffe_id;
        let (Some(task), Some(until)) = (plan.task_ref(agent_id), plan.expires_at(call.now)) else {
            return Err(Problem::new(
                ProblemKind::SecretUnavailable,
                format!(
                    "calls to {} carry a credential issued per task ({}), and this call belongs \
                     to no task; start one (Deputy-Principal) or continue one (Deputy-Context)",
                    service.name,
                    wanted.join(", ")
                ),
                call.request_id,
            )
            .into());
        };
        // A call its budget no longer allows is refused at `sign`; it must not make the task a
        // credential first.
        if plan.context().is_some_and(|c| c.remaining() == Some(0)) {
            return Err(Problem::new(
                ProblemKind::BudgetExhausted,
                format!(
                    "agent {} has made all the calls its delegation allows in task {:?}; the \
                     delegator must grant a new budget",
                    agent.name, task.id
                ),
                call.request_id,
            )
            .into());
        }
        if let Some(dry) = call.dry_run.as_mut() {
            dry.credentials.extend(wanted.iter().map(|secret| {
                serde_json::json!({
                    "secret": secret,
                    "per_task": true,
                    "verdict": "issued for the task by the real call",
                })
            }));
            return Ok(());
        }
        let mut obtained = Vec::with_capacity(wanted.len());
        for secret in wanted {
            let credential = tasks
                .credential(&agent.name, &task, secret, until)
                .await
                .map_err(|e| {
                    Problem::new(
                        ProblemKind::SecretUnavailable,
                        format!(
                            "the call to {} needs secret {secret:?} for task {:?}, which \
                             deputyd could not obtain: {e}; it was not sent",
                            service.name, task.id
                        ),
                        call.request_id,
                    )
                })?;
            obtained.push((secret.to_owned(), credential));
        }
        call.task_credentials = obtained;
        Ok(())
    }))
}
