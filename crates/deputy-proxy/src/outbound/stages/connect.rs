//! `connect`: a pooled mTLS connection to the service's deputyd, made with the agent's SVID
//! (a tool outside the mesh is connected to by `send`).

use hyper::client::conn::http2::SendRequest;

use super::Call;
use crate::body::Body;
use crate::config::Reach;
use crate::pipeline::{Refused, Step};
use crate::pool::Target;
use crate::problem::Problem;

pub(super) fn connect<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    Step::Wait(Box::pin(async move {
        // A tool outside the mesh is reached at `send`, by its own pooled HTTPS client.
        let Some(sender) = pooled_sender(call).await? else {
            return Ok(());
        };
        call.sender = Some(sender);
        // Before `sign` spends anything: a call that cannot be followed is refused unspent.
        call.revocation_key = super::send::revocation_key(call)?;
        Ok(())
    }))
}

/// A sender on a pooled connection to the call's mesh service (`None`: the service is a tool
/// outside the mesh), the call counted in flight on that connection.
pub(super) async fn pooled_sender(
    call: &mut Call<'_>,
) -> Result<Option<SendRequest<Body>>, Refused> {
    let service = call
        .service
        .as_ref()
        .ok_or_else(|| call.missing("connect", "service"))?;
    let Reach::Mesh(peer) = &service.reach else {
        return Ok(None);
    };
    let target = Target {
        name: &service.name,
        peer,
    };
    let material = call
        .material
        .as_ref()
        .ok_or_else(|| call.missing("connect", "SVID"))?;
    let (sender, in_flight) = call
        .outbound
        .pool
        .sender(&call.outbound.agent.name, &target, material)
        .await
        .map_err(|e| Problem::new(e.kind, e.detail, call.request_id))?;
    if let Some(task) = call.plan.as_ref().and_then(|p| p.task()) {
        in_flight.saw_task(task);
    }
    call.in_flight.push(in_flight);
    Ok(Some(sender))
}
