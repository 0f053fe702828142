//! Dry runs (`Deputy-Dry-Run: true`): the call passes every stage up to delivery at both ends
//! (attestation, route, task, the policy at both ends, approval, idempotency, credentials, the
//! chain and its budget) and is not delivered: nothing is spent, recorded, issued or sent to an
//! agent or tool. The answer says what would have happened. Each stage that would change
//! something notes here what it found instead.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::{Body, full};
use crate::problem::{Problem, ProblemKind};

/// The request header asking for a dry run, and the one the receiving deputyd is told with.
pub(crate) const DRY_RUN: &str = "deputy-dry-run";

/// What the stages of a dry run found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct DryRun {
    /// The approval the policy asks for, and whether the named one would let the call through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) approval: Option<serde_json::Value>,
    /// What the `Idempotency-Key` would do: `first`, `replay`, `conflict` or `reused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idempotency: Option<&'static str>,
    /// The credentials that would be injected, and whether deputyd holds them now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) credentials: Vec<serde_json::Value>,
}

/// Whether the agent asked for a dry run; anything but `true` or `false` is refused.
pub(crate) fn asked(headers: &HeaderMap, request_id: &str) -> Result<bool, Box<Problem>> {
    match headers.get(DRY_RUN).map(HeaderValue::as_bytes) {
        None | Some(b"false") => Ok(false),
        Some(b"true") => Ok(true),
        Some(_) => Err(Problem::new(
            ProblemKind::BadRequest,
            "Deputy-Dry-Run must be `true` or `false`",
            request_id,
        )
        .into()),
    }
}

/// The answer of a dry run that passed this end: what this end found, and what the far end said
/// (its answer to the dry run, or `None` for a tool outside the mesh, which is not called).
pub(crate) fn answer(
    found: &DryRun,
    service: &str,
    decision_id: Option<String>,
    far_end: Option<(StatusCode, serde_json::Value)>,
) -> Response<Body> {
    // What this end found decides first, in the order of the stages: the real call would stop
    // here.
    let held = found
        .approval
        .as_ref()
        .and_then(|a| a["verdict"].as_str())
        .filter(|v| !v.contains("would let the call through"));
    let missing_credential = found
        .credentials
        .iter()
        .any(|c| c["available"] == serde_json::Value::Bool(false));
    let here = match (found.idempotency, held) {
        (Some("replay"), _) => Some("would be answered with the kept response".to_owned()),
        (Some("conflict"), _) => Some("would be refused: the same key is in flight".to_owned()),
        (Some("reused"), _) => {
            Some("would be refused: the key was used for another request".to_owned())
        }
        (_, Some(verdict)) => Some(format!("would be held here: {verdict}")),
        _ if missing_credential => {
            Some("would be refused: a credential it must carry is not available".to_owned())
        }
        _ => None,
    };
    let (status, outcome, far) = match (here, far_end) {
        (Some(here), far) => (
            StatusCode::OK,
            here,
            far.map_or(serde_json::Value::Null, |(_, far)| far),
        ),
        (None, None) => (
            StatusCode::OK,
            format!("would be sent to {service}"),
            serde_json::Value::Null,
        ),
        (None, Some((status, far))) if status.is_success() => (
            StatusCode::OK,
            format!("would be delivered to {service}"),
            far,
        ),
        (None, Some((status, far))) => (
            status,
            format!("would be refused by {service}'s deputyd"),
            far,
        ),
    };
    let report = serde_json::json!({
        "dry_run": true,
        "delivered": false,
        "outcome": outcome,
        "outbound": {
            "decision_id": decision_id,
            "approval": found.approval,
            "idempotency": found.idempotency,
            "credentials": found.credentials,
        },
        "inbound": far,
    });
    let mut response = Response::new(full(report.to_string().into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
