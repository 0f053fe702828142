//! `sign`: the chain the call carries, signed with the agent's SVID (a budgeted call spends its
//! budget here).

use super::Call;
use crate::delegation;
use crate::pipeline::Outcome;
use crate::problem::Problem;

pub(super) fn sign(call: &mut Call<'_>) -> Outcome {
    let plan = call
        .plan
        .take()
        .ok_or_else(|| call.missing("sign", "task plan"))?;
    // A dry run spends nothing, so nothing may be refunded for it later.
    let spent_under = plan.context().cloned().filter(|_| call.dry_run.is_none());
    call.task = plan.task().map(str::to_owned);
    let narrowed = call.narrowed.take();
    let chain = delegation::sign(&call.delegation("sign")?, plan, narrowed)
        .map_err(|(kind, detail)| Problem::new(kind, detail, call.request_id))?;
    call.chain = chain;
    call.spent_under = spent_under;
    Ok(())
}
