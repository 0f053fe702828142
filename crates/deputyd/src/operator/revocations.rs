//! Revocations through the operator socket.
//!
//! - `GET /v1/revocations`: those in force.
//! - `POST /v1/revocations`: `{"task" | "agent" | "principal": "...", "reason": "...",
//!   "for_seconds": N}`. A task's bound defaults to when its chains known here expire; an
//!   agent's or a principal's must be given (at most a day).

use axum::Json;
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deputy_state::{RevocationError, Subject};
use serde::Deserialize;

use super::{Caller, OperatorState, error, operator};

pub(super) async fn list(
    State(state): State<OperatorState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Response {
    if let Err(refusal) = operator(&state, caller) {
        return refusal.into_response();
    }
    let now = crate::daemon::unix_now();
    Json(serde_json::json!({ "revocations": state.revoker.list(now) })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeRequest {
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    principal: Option<String>,
    reason: String,
    #[serde(default)]
    for_seconds: Option<u64>,
}

impl RevokeRequest {
    /// The one subject the request names, checked.
    fn subject(&self) -> Result<Subject, String> {
        match (&self.task, &self.agent, &self.principal) {
            (Some(task), None, None) => Ok(Subject::Task(task.clone())),
            (None, Some(agent), None) => spiffe::SpiffeId::new(agent)
                .map(|id| Subject::Agent(id.to_string()))
                .map_err(|e| format!("agent {agent:?} is not a SPIFFE ID: {e}")),
            (None, None, Some(principal)) => Ok(Subject::Principal(principal.clone())),
            _ => Err("name exactly one of task, agent or principal".into()),
        }
    }
}

pub(super) async fn revoke(
    State(state): State<OperatorState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let by = match operator(&state, caller) {
        Ok(by) => by,
        Err(refusal) => return refusal.into_response(),
    };
    let Json(request) = match request {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let subject = match request.subject() {
        Ok(subject) => subject,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = crate::daemon::unix_now();
    let until = match (
        request.for_seconds,
        state.revoker.default_until(&subject, now),
    ) {
        (Some(seconds), _) => now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX)),
        (None, Some(until)) => until,
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "say how long the {} stays revoked (for_seconds; `deputy revoke --for 1h`)",
                    subject.kind()
                ),
            );
        }
    };
    let outcome = state
        .revoker
        .revoke_and_relay(
            subject,
            &request.reason,
            &by,
            until,
            deputy_proxy::revocation::Asked::ByOperator,
        )
        .await;
    match outcome {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e @ RevocationError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ RevocationError::Full(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
