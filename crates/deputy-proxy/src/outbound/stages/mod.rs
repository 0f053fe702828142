//! The stages of an outbound call, in order: each its own file. A new capability is a new
//! file here and a line in [`stages`].

mod approve;
mod attest;
mod audit;
mod connect;
mod decide;
mod dry_run;
mod idempotency;
mod identity;
mod inject;
mod limits;
mod plan;
mod revoked;
mod route;
mod send;
mod send_external;
mod sign;
mod task_secrets;

pub(crate) use approve::Obligation;
pub(crate) use dry_run::DryRun;
pub(crate) use idempotency::FirstTry;
pub(crate) use idempotency::Idempotency;

use super::call::Call;
use crate::pipeline::Stage;

/// The stages every outbound call passes, in order.
pub(crate) fn stages<'a>() -> [Stage<Call<'a>>; 16] {
    [
        // Attested first: a caller that is not the agent's is told that, whatever the limits.
        Stage::Now("attest", attest::check),
        // Nothing happens that is not recorded (unless the operator chose otherwise).
        Stage::Now("audit", audit::ready),
        Stage::Now("limits", limits::check),
        Stage::Now("route", route::resolve),
        Stage::Now("identity", identity::take),
        Stage::Now("plan", plan::plan_task),
        // Once the task is known, before anything is decided, held, issued or spent.
        Stage::Now("revoked", revoked::check),
        Stage::Later("decide", decide::decide),
        // A retry of a write already done is answered with its first response here: nothing
        // after this (an approval, credentials, budget, the service) sees it.
        Stage::Later("idempotency", idempotency::check),
        // Held for a human when the policy asks for one; before anything is issued or spent.
        Stage::Later("approve", approve::approve),
        // A task's own credentials, issued on its first call that needs them.
        Stage::Later("task-secrets", task_secrets::obtain),
        // After the decision (the policy never sees a credential), before the connection (a
        // call that cannot carry its credential goes nowhere).
        Stage::Now("inject", inject::inject),
        // The connection before signing: a call that cannot leave the node must not spend its
        // budget.
        Stage::Later("connect", connect::connect),
        Stage::Now("sign", sign::sign),
        Stage::Later("send", send::send),
        Stage::Now("remember", idempotency::remember),
    ]
}
