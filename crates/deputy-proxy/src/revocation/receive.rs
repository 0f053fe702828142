//! Taking a revocation from another node, on the inbound listener ([`PATH`]): accepted only
//! when it is signed by the node's own SVID (a SPIFFE ID under `/deputyd/`), sent over mTLS
//! with that same SVID, fresh, and carries the key this node received the task with, so only a
//! node that extended the task here can revoke it here. Then it is applied and sent on, like
//! an operator's.

use std::time::SystemTime;

use deputy_state::Subject;

use super::TaskKey;
use super::cascade::Asked;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::cascade::{Claims, MAX_BYTES, PATH, TYP};
use crate::body::Body;
use crate::inbound::{Connection, Inbound};

/// How far a revocation's `iat` may be from this node's clock.
const FRESH_WITHIN: i64 = 60;
/// Longest a revocation from another node is kept.
const MAX_RELAYED_SECONDS: i64 = 3600;
/// The path of a deputyd's own SPIFFE ID (as `spire/register-deputyd.sh` registers it).
const NODE_PATH: &str = "/deputyd/";

/// Answers a revocation `request` from the peer of `connection`.
pub(crate) async fn receive(
    inbound: &Inbound,
    connection: &Connection,
    request: Request<Incoming>,
) -> Response<Body> {
    let peer = connection.peer.to_string();
    match accept(inbound, connection, request).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err((status, why)) => {
            tracing::warn!(%peer, agent = %connection.agent.name, why = ?why,
                "refused a revocation from another node");
            if let Some(trail) = &inbound.revoker.trail
                && let Err(e) = trail.append(deputy_audit::Event::RevocationRefused {
                    peer: peer.clone(),
                    status: status.as_u16(),
                    // Bounded: it may quote what the peer sent.
                    why: why.chars().take(256).collect(),
                })
            {
                tracing::error!(error = %e, %peer,
                    "a refused revocation's audit record could not be written");
            }
            json(status, &serde_json::json!({ "error": why }))
        }
    }
}

async fn accept(
    inbound: &Inbound,
    connection: &Connection,
    request: Request<Incoming>,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let forbidden = |why: String| (StatusCode::FORBIDDEN, why);
    if request.method() != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} takes a POSTed revocation"),
        ));
    }
    let peer = &connection.peer;
    if !peer.path().starts_with(NODE_PATH) {
        return Err(forbidden(format!(
            "revocations are sent by deputyd nodes over mTLS with their own SVID (a SPIFFE ID \
             under {NODE_PATH}); {peer} is not one"
        )));
    }
    let body = crate::body::read_whole(crate::body::stream(request.into_body()), MAX_BYTES)
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let compact = std::str::from_utf8(&body)
        .map_err(|_| (StatusCode::BAD_REQUEST, "the body is not UTF-8".to_owned()))?
        .trim();
    let now = SystemTime::now();
    let signed =
        deputy_delegation::verify_signed::<Claims>(compact, TYP, &inbound.anchors.current(), now)
            .map_err(|e| forbidden(format!("the revocation does not verify: {e}")))?;
    let claims = signed.claims;
    if signed.signer != *peer || claims.iss != peer.to_string() {
        return Err(forbidden(format!(
            "the revocation is signed by {} (iss {}) but sent by {peer}; a node sends only its \
             own revocations",
            signed.signer, claims.iss
        )));
    }
    let now = crate::unix(now);
    if claims.iat.abs_diff(now) > FRESH_WITHIN.unsigned_abs() {
        return Err(forbidden(format!(
            "the revocation was signed at {} and this node's clock says {now}; it must be \
             sent within {FRESH_WITHIN} s (check the clocks)",
            claims.iat
        )));
    }
    let revoker = &inbound.revoker;
    let Ok(place) = revoker.relays.clone().try_acquire_owned() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is applying and sending on as many revocations as it takes at once; \
             retry shortly"
                .to_owned(),
        ));
    };
    let task = TaskKey::new(&claims.task, &claims.principal, &claims.originator);
    let Some(chains_until) = revoker.hops.arrived_with_key(&task, &claims.key, now) else {
        return Err(forbidden(format!(
            "task {:?} (started by {:?} for {:?}) did not arrive here with the key this \
             revocation carries: a node may revoke a task here only if it extended that task \
             to this node (an operator of this node can revoke anything)",
            claims.task, claims.originator, claims.principal
        )));
    };
    // A peer's revocation lasts as long as a chain of the task could still arrive here (the
    // latest known here, or one this task's origin could still sign), an hour at most: what a
    // peer sends cannot hold places in this node's records for long.
    let origin_could_sign = now
        .saturating_add(i64::try_from(crate::delegation::ORIGIN_TTL.as_secs()).unwrap_or(i64::MAX));
    let until = claims
        .until
        .min(
            chains_until
                .max(origin_could_sign)
                .saturating_add(super::CLOCK_SKEW),
        )
        .min(now.saturating_add(MAX_RELAYED_SECONDS));
    // Who revoked first, bounded so that the node that relayed it is always named.
    let first: String = claims.by.chars().take(120).collect();
    let by = format!("relayed by {}, for {first}", claims.iss);
    // A round is sent on once per task (a cycle, A -> B -> A, ends here); the same round for
    // another task (an agent's revocation covering several) still goes on.
    let round = format!(
        "{}\0{}\0{}\0{}",
        claims.round, task.id, task.principal, task.originator
    );
    let outcome = revoker
        .revoke_and_relay(
            Subject::ExactTask {
                id: task.id,
                principal: task.principal,
                originator: task.originator,
            },
            &claims.reason,
            &by,
            until,
            Asked::ByNode {
                round,
                place: std::sync::Arc::new(place),
            },
        )
        .await
        .map_err(|e| (StatusCode::CONFLICT, e.to_string()))?;
    Ok(outcome.summary())
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(crate::body::full(value.to_string().into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
