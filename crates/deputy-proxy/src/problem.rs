//! RFC 9457 problem details: every refusal on the data path, in a form an agent can act on.
//!
//! The `type` of each problem is a stable URN; agents branch on it. `detail` says what was
//! wrong and what to do; `request_id` ties it to deputyd's access log.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// The media type of problem responses.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Which deputyd refused a call, on a problem an agent receives: `this-node` (the agent's own
/// deputyd) or `service-node` (the deputyd in front of the service it called). A response
/// without it came from the service itself, which could write any body: an SDK raises deputyd's
/// problems only when this header is there (no agent or service can set it: deputyd removes
/// every `Deputy-*` header an agent answers with).
pub const SOURCE: &str = "deputy-problem-source";
/// [`SOURCE`] on a problem of the agent's own deputyd.
pub const FROM_THIS_NODE: &str = "this-node";
/// [`SOURCE`] on a problem of the service's deputyd, as the caller's deputyd hands it on.
pub const FROM_SERVICE_NODE: &str = "service-node";

/// Every kind of refusal the data path can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// No configured service matches the request's Host or absolute URI.
    UnknownService,
    /// The request names no target at all.
    MissingTarget,
    /// The caller of an outbound listener could not be attested, or is not allowed.
    CallerNotAttested,
    /// The calling agent has no valid SVID right now.
    NoIdentity,
    /// The server presented an SVID other than the service's.
    PeerIdentityMismatch,
    /// The server's certificate is not a valid SVID of a trusted trust domain.
    PeerNotTrusted,
    /// The service's deputyd could not be reached or the TLS handshake failed.
    UpstreamUnavailable,
    /// The service did not answer within the request timeout.
    Timeout,
    /// The request is malformed.
    BadRequest,
    /// The delegation chain a peer sent does not verify.
    ChainRejected,
    /// The delegation header is larger than the configured limit.
    ChainTooLarge,
    /// The agent may not start a task for this principal.
    OriginationRefused,
    /// A `Deputy-Context` handle that is unknown, expired, or another agent's.
    ContextRefused,
    /// A requested scope lies outside the scopes the agent was granted.
    ScopeEscalation,
    /// A requested budget is larger than what remains of the agent's.
    BudgetEscalation,
    /// The agent has made every call its link's budget allows.
    BudgetExhausted,
    /// The chain cannot be extended to this service (a cycle, for instance).
    ExtensionRefused,
    /// The policy denied the call.
    PolicyDenied,
    /// The policy allows the call only once a human approves it.
    ApprovalRequired,
    /// The service requires an `Idempotency-Key` on writes, and the call has none.
    IdempotencyKeyRequired,
    /// A request with the same `Idempotency-Key` is still in flight.
    IdempotencyConflict,
    /// The `Idempotency-Key` was used for another request.
    IdempotencyKeyReused,
    /// The task, an agent taking part, or the principal was revoked.
    Revoked,
    /// The audit trail cannot be written, and the operator chose to refuse calls then.
    AuditUnavailable,
    /// The approval the call names does not let it through (pending, denied, used, expired, or
    /// for another call).
    ApprovalRefused,
    /// The request body is refused (a JSON-RPC body Deputy cannot judge safely).
    BodyRefused,
    /// The service's answer to an MCP list cannot be read as the protocol says, so it cannot
    /// be filtered; it is refused rather than passed on whole.
    AnswerRefused,
    /// The request body is in an encoding or media type deputyd cannot inspect for the policy.
    BodyNotInspectable,
    /// Without a policy, the peer is not among those the operator allowed.
    PeerNotAllowed,
    /// deputyd holds its bound of something it may not drop (budget counts), or cannot record
    /// what a call must leave behind: the call is refused, not made uncounted.
    Overloaded,
    /// The call is configured to carry a credential deputyd does not hold now (Vault has not
    /// issued it, or it expired): the call is refused, never sent without it.
    SecretUnavailable,
    /// deputyd found itself in a state it should never be in; the call is refused.
    Internal,
}

impl ProblemKind {
    /// The stable `type` URI.
    pub fn type_uri(self) -> &'static str {
        match self {
            Self::UnknownService => "urn:deputy:problem:unknown-service",
            Self::MissingTarget => "urn:deputy:problem:missing-target",
            Self::CallerNotAttested => "urn:deputy:problem:caller-not-attested",
            Self::NoIdentity => "urn:deputy:problem:no-identity",
            Self::PeerIdentityMismatch => "urn:deputy:problem:peer-identity-mismatch",
            Self::PeerNotTrusted => "urn:deputy:problem:peer-not-trusted",
            Self::UpstreamUnavailable => "urn:deputy:problem:upstream-unavailable",
            Self::Timeout => "urn:deputy:problem:timeout",
            Self::BadRequest => "urn:deputy:problem:bad-request",
            Self::ChainRejected => "urn:deputy:problem:chain-rejected",
            Self::ChainTooLarge => "urn:deputy:problem:chain-too-large",
            Self::OriginationRefused => "urn:deputy:problem:origination-refused",
            Self::ContextRefused => "urn:deputy:problem:context-refused",
            Self::ScopeEscalation => "urn:deputy:problem:scope-escalation",
            Self::BudgetEscalation => "urn:deputy:problem:budget-escalation",
            Self::BudgetExhausted => "urn:deputy:problem:budget-exhausted",
            Self::ExtensionRefused => "urn:deputy:problem:extension-refused",
            Self::PolicyDenied => "urn:deputy:problem:policy-denied",
            Self::ApprovalRequired => "urn:deputy:problem:approval-required",
            Self::Revoked => "urn:deputy:problem:revoked",
            Self::AuditUnavailable => "urn:deputy:problem:audit-unavailable",
            Self::ApprovalRefused => "urn:deputy:problem:approval-refused",
            Self::IdempotencyKeyRequired => "urn:deputy:problem:idempotency-key-required",
            Self::IdempotencyConflict => "urn:deputy:problem:idempotency-conflict",
            Self::IdempotencyKeyReused => "urn:deputy:problem:idempotency-key-reused",
            Self::BodyRefused => "urn:deputy:problem:body-refused",
            Self::AnswerRefused => "urn:deputy:problem:answer-refused",
            Self::BodyNotInspectable => "urn:deputy:problem:body-not-inspectable",
            Self::PeerNotAllowed => "urn:deputy:problem:peer-not-allowed",
            Self::Overloaded => "urn:deputy:problem:overloaded",
            Self::SecretUnavailable => "urn:deputy:problem:secret-unavailable",
            Self::Internal => "urn:deputy:problem:internal",
        }
    }

    /// A short, fixed summary.
    pub fn title(self) -> &'static str {
        match self {
            Self::UnknownService => "Unknown service",
            Self::MissingTarget => "No target service",
            Self::CallerNotAttested => "Caller not attested",
            Self::NoIdentity => "No identity available",
            Self::PeerIdentityMismatch => "Peer identity mismatch",
            Self::PeerNotTrusted => "Peer not trusted",
            Self::UpstreamUnavailable => "Upstream unavailable",
            Self::Timeout => "Upstream timed out",
            Self::BadRequest => "Bad request",
            Self::ChainRejected => "Delegation chain rejected",
            Self::ChainTooLarge => "Delegation chain too large",
            Self::OriginationRefused => "Origination refused",
            Self::ContextRefused => "Context refused",
            Self::ScopeEscalation => "Scope escalation",
            Self::BudgetEscalation => "Budget escalation",
            Self::BudgetExhausted => "Budget exhausted",
            Self::ExtensionRefused => "Delegation refused",
            Self::PolicyDenied => "Denied by policy",
            Self::ApprovalRequired => "Approval required",
            Self::Revoked => "Revoked",
            Self::AuditUnavailable => "Audit trail unavailable",
            Self::ApprovalRefused => "Approval refused",
            Self::IdempotencyKeyRequired => "Idempotency key required",
            Self::IdempotencyConflict => "Request in flight",
            Self::IdempotencyKeyReused => "Idempotency key reused",
            Self::BodyRefused => "Request body refused",
            Self::AnswerRefused => "Answer refused",
            Self::BodyNotInspectable => "Request body cannot be inspected",
            Self::PeerNotAllowed => "Peer not allowed",
            Self::Overloaded => "Overloaded",
            Self::SecretUnavailable => "Credential unavailable",
            Self::Internal => "Internal error",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::UnknownService => StatusCode::NOT_FOUND,
            Self::MissingTarget
            | Self::BadRequest
            | Self::BodyRefused
            | Self::IdempotencyKeyRequired => StatusCode::BAD_REQUEST,
            Self::IdempotencyConflict => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::CallerNotAttested
            | Self::ChainRejected
            | Self::OriginationRefused
            | Self::ContextRefused
            | Self::ScopeEscalation
            | Self::BudgetEscalation
            | Self::ExtensionRefused
            | Self::PolicyDenied
            | Self::PeerNotAllowed
            | Self::ApprovalRequired
            | Self::Revoked
            | Self::ApprovalRefused => StatusCode::FORBIDDEN,
            Self::BodyNotInspectable => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BudgetExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::ChainTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoIdentity
            | Self::Overloaded
            | Self::SecretUnavailable
            | Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PeerIdentityMismatch
            | Self::PeerNotTrusted
            | Self::UpstreamUnavailable
            | Self::AnswerRefused => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One problem, ready to send.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Stable type URI.
    #[serde(rename = "type")]
    pub type_uri: &'static str,
    /// Short summary.
    pub title: &'static str,
    /// HTTP status, repeated in the body.
    pub status: u16,
    /// What was wrong and what to do.
    pub detail: String,
    /// deputyd's id of the request.
    pub request_id: String,
    /// The policy decision's id (in the decision log), when a policy refused the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// The policy's reasons, when a policy refused the call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The approval the call waits for, or named: the agent retries with `Deputy-Approval` and
    /// this id once an operator approved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip)]
    kind: ProblemKind,
}

impl Problem {
    /// A problem of `kind` for request `request_id`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>, request_id: &str) -> Self {
        Self {
            type_uri: kind.type_uri(),
            title: kind.title(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            request_id: request_id.to_owned(),
            decision_id: None,
            reasons: Vec::new(),
            approval_id: None,
            kind,
        }
    }

    /// Names the approval the call waits for.
    pub fn with_approval(mut self, id: &str) -> Self {
        self.approval_id = Some(id.to_owned());
        self
    }

    /// Names the policy decision behind the refusal, with its reasons.
    pub fn with_decision(mut self, decision_id: &str, reasons: &[String]) -> Self {
        self.decision_id = Some(decision_id.to_owned());
        self.reasons = reasons.to_vec();
        self
    }

    /// Its kind.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The HTTP response carrying it.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.kind.status();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
            .headers_mut()
            .insert(SOURCE, HeaderValue::from_static(FROM_THIS_NODE));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_rfc9457_json_with_the_request_id() {
        let problem = Problem::new(
            ProblemKind::UnknownService,
            "no service named billing2; known: billing",
            "req-1",
        );
        let response = problem.to_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["type"], "urn:deputy:problem:unknown-service");
        assert_eq!(body["status"], 404);
        assert_eq!(body["request_id"], "req-1");
        assert!(
            body["detail"]
                .as_str()
                .expect("detail")
                .contains("known: billing")
        );
    }
}
