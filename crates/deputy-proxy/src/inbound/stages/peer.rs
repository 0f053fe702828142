//! `peer`: nothing a peer says about the call reaches the agent unverified: its Deputy-* and
//! hop-by-hop headers are dropped (the chain kept aside for `verify-chain`), the verified peer
//! and the call's id are stated. Without a policy, the peer must be one the operator allowed.

use http::{HeaderValue, Version, header};

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::Problem;
use crate::routing::{DELEGATION, PEER_ID, REQUEST_ID, strip_all_deputy_headers, strip_hop_by_hop};

pub(super) fn admit(call: &mut Call<'_>) -> Outcome {
    let (inbound, connection, request_id) = (call.inbound, call.connection, call.request_id);
    let request = call.request_mut("peer")?;
    *request.version_mut() = Version::HTTP_11;
    let chain = request
        .headers()
        .get(DELEGATION)
        .map(|v| v.to_str().map(str::to_owned).map_err(drop));
    // A dry run only takes effects away (nothing is delivered or issued), so the peer may ask.
    let dry_run = request
        .headers()
        .get("deputy-dry-run")
        .is_some_and(|v| v.as_bytes() == b"true");
    let revocation_key = request
        .headers()
        .get(crate::revocation::REVOCATION_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    strip_all_deputy_headers(headers);
    headers.remove(header::HOST);
    if let Ok(value) = HeaderValue::from_str(&connection.peer.to_string()) {
        headers.insert(PEER_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    call.chain = chain;
    call.dry_run = dry_run;
    call.revocation_key = revocation_key;
    if inbound.policy.is_none() {
        inbound
            .without_policy
            .check_peer(&connection.peer)
            .map_err(|(kind, detail)| {
                tracing::warn!(agent = %connection.agent.name, peer = %connection.peer,
                    "inbound call refused: peer not allowed");
                Problem::new(kind, detail, request_id)
            })?;
    }
    Ok(())
}
