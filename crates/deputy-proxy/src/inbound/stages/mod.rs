//! The stages of an inbound call, in order: each its own file. A new capability is a new file
//! here and a line in [`stages`].

mod audit;
mod decide;
mod deliver;
mod issue_context;
mod limits;
mod peer;
mod revoked;
mod target;
mod verify_chain;

use super::call::Call;
use crate::pipeline::Stage;

/// The stages every inbound call passes, in order.
pub(crate) fn stages<'a>() -> [Stage<Call<'a>>; 9] {
    [
        Stage::Now("limits", limits::check),
        // Nothing happens that is not recorded (unless the operator chose otherwise).
        Stage::Now("audit", audit::ready),
        Stage::Now("target", target::resolve),
        Stage::Now("peer", peer::admit),
        Stage::Now("verify-chain", verify_chain::verify),
        // Once the chain is known, before the policy is asked or a context issued.
        Stage::Now("revoked", revoked::check),
        Stage::Later("decide", decide::decide),
        Stage::Now("issue-context", issue_context::issue),
        Stage::Later("deliver", deliver::deliver),
    ]
}
