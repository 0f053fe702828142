//! `plan`: the task the call carries: one the agent starts (`Deputy-Principal`), the one it
//! continues (`Deputy-Context`), or none. Nothing is signed or spent yet.

use super::Call;
use crate::delegation;
use crate::pipeline::Outcome;
use crate::problem::Problem;

pub(super) fn plan_task(call: &mut Call<'_>) -> Outcome {
    let request = call
        .request
        .as_ref()
        .ok_or_else(|| call.missing("plan", "request"))?;
    let plan = delegation::plan(&call.delegation("plan")?, request.headers())
        .map_err(|(kind, detail)| Problem::new(kind, detail, call.request_id))?;
    if let Some(task) = plan.task() {
        call.caller.handle.saw_task(task);
    }
    if super::dry_run::asked(request.headers(), call.request_id)? {
        call.dry_run = Some(super::DryRun::default());
    }
    call.plan = Some(plan);
    Ok(())
}
