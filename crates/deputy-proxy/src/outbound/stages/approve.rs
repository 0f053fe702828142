//! `approve`: a call the policy allows only once a human approves it (`approval.required`) is
//! held. Without `Deputy-Approval`, a pending approval bound to exactly this call (agent,
//! service, method, path, query, a digest of its body, task and principal) is recorded and the
//! agent is told its id (403 `approval-required`); once an operator approved it, the agent's
//! retry of the identical call naming it passes, once (the approval is used, durably, before
//! the call goes on). Anything else naming it is refused (403 `approval-refused`).

use super::Call;
use crate::body::{full, read_whole, sha256_hex};
use crate::pipeline::Step;
use crate::problem::{Problem, ProblemKind};
use crate::unix;

/// The header naming the approval a retry rides on.
pub(crate) const APPROVAL: &str = "deputy-approval";

/// The largest body a call held for approval may have: it is read whole to be bound.
pub(crate) const MAX_APPROVAL_BODY: usize = 1024 * 1024;

/// What `decide` found: the policy asks for an approval, for this reason.
#[derive(Debug, Clone)]
pub(crate) struct Obligation {
    pub(crate) reason: String,
    pub(crate) decision_id: String,
    pub(crate) reasons: Vec<String>,
}

pub(super) fn approve<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    let Some(obligation) = call.approval.take() else {
        return Step::Now(Ok(()));
    };
    Step::Wait(Box::pin(async move {
        let request_id = call.request_id;
        let refuse = |kind, detail: String| {
            Problem::new(
                kind,
                format!("{detail} (decision {})", obligation.decision_id),
                request_id,
            )
            .with_decision(&obligation.decision_id, &obligation.reasons)
        };
        let Some(approvals) = call.outbound.approvals.clone() else {
            return Err(refuse(
                ProblemKind::ApprovalRequired,
                format!(
                    "this call needs a human's approval ({}), and this deputyd keeps no \
                     approvals; it was not sent",
                    obligation.reason
                ),
            )
            .into());
        };
        let request = call
            .request
            .take()
            .ok_or_else(|| call.missing("approve", "request"))?;
        let (parts, body) = request.into_parts();
        // Bound to its body: a call with another body must not ride on the approval.
        let body = read_whole(body, MAX_APPROVAL_BODY).await.map_err(|e| {
            refuse(
                ProblemKind::BodyRefused,
                format!("a call held for approval is bound to its body, read whole, and {e}"),
            )
        })?;
        let plan = call
            .plan
            .as_ref()
            .ok_or_else(|| call.missing("approve", "task plan"))?;
        // A task the agent starts without naming it is a new task on every call, so its id
        // cannot bind a retry; its principal still does.
        let unnamed = matches!(
            plan,
            crate::delegation::TaskPlan::Originate { named: false, .. }
        );
        let task = plan.task_ref(&call.outbound.agent.spiffe_id);
        let binding = deputy_state::Binding {
            agent: call.outbound.agent.name.clone(),
            service: call.service_name(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: meaning_headers(&parts.headers),
            body_sha256: sha256_hex(&body),
            task: task.as_ref().filter(|_| !unnamed).map(|t| t.id.clone()),
            principal: task.map(|t| t.principal),
        };
        let now = unix(call.now);
        let named = parts
            .headers
            .get(APPROVAL)
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        if let Some(dry) = call.dry_run.as_mut() {
            // Nothing is asked for or used: the answer says what would happen.
            let verdict = match &named {
                None => "an approval would be asked for; the call would be held".to_owned(),
                Some(id) => match approvals.check(id, &binding, now) {
                    Ok(_) => format!("approval {id} would let the call through"),
                    Err(e) => e.to_string(),
                },
            };
            dry.approval = Some(serde_json::json!({
                "required": true,
                "reason": obligation.reason,
                "approval_id": named,
                "verdict": verdict,
            }));
            call.request = Some(http::Request::from_parts(parts, full(body)));
            return Ok(());
        }
        let Some(id) = named else {
            let asked = approvals
                .request(
                    binding,
                    &body,
                    &obligation.reason,
                    request_id,
                    call.outbound.approval_ttl,
                    now,
                )
                .map_err(|e| {
                    let kind = match e {
                        deputy_state::ApprovalError::Store(_) => ProblemKind::Internal,
                        _ => ProblemKind::Overloaded,
                    };
                    tracing::warn!(error = %e, %request_id, "an approval could not be asked for");
                    refuse(
                        kind,
                        format!(
                            "this call needs a human's approval ({}), which could not be \
                             recorded: {}; it was not sent",
                            obligation.reason,
                            match e {
                                deputy_state::ApprovalError::Store(_) => {
                                    "deputyd's state database failed (see its log)".to_owned()
                                }
                                other => other.to_string(),
                            }
                        ),
                    )
                })?;
            tracing::info!(agent = %asked.binding.agent, service = %asked.binding.service,
                approval = %asked.id, reason = %asked.reason, %request_id,
                "approval asked for; the call is held");
            // Announced once, when it is new (a repeated ask gets the same pending approval).
            if asked.request_id == request_id
                && let Some(webhook) = &call.outbound.approval_webhook
            {
                webhook.announce(&asked);
            }
            call.audit_facts
                .get_or_insert_with(Default::default)
                .approval = Some(asked.id.clone());
            return Err(refuse(
                ProblemKind::ApprovalRequired,
                format!(
                    "this call needs a human's approval ({}): approval {} is pending on this \
                     node (an operator runs `deputy approvals approve {}`); once approved, \
                     send the identical call again with `Deputy-Approval: {}` before it \
                     expires",
                    obligation.reason, asked.id, asked.id, asked.id
                ),
            )
            .with_approval(&asked.id)
            .into());
        };
        // Named in its record whether it passes or not: the trail joins the call to the
        // operator's decision.
        if is_approval_id(&id) {
            call.audit_facts
                .get_or_insert_with(Default::default)
                .approval = Some(id.clone());
        }
        let used = approvals.redeem(&id, &binding, now).map_err(|e| {
            refuse(
                ProblemKind::ApprovalRefused,
                format!("{e}; the call was not sent"),
            )
            .with_approval(&id)
        })?;
        tracing::info!(agent = %used.binding.agent, service = %used.binding.service,
            approval = %used.id, approved_by = used.decided_by.as_deref().unwrap_or_default(),
            %request_id, "an approved call passes");
        call.request = Some(http::Request::from_parts(parts, full(body)));
        Ok(())
    }))
}

/// The headers that change what a body means, which an approval binds too: the same bytes
/// under another media type, encoding or method override are another call.
pub(super) fn meaning_headers(headers: &http::HeaderMap) -> String {
    const MEANING: [&str; 5] = [
        "content-type",
        "content-encoding",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    MEANING
        .iter()
        .flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .map(move |v| format!("{name}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        })
        .collect()
}

/// Whether `id` is shaped as deputyd makes approval ids (`apr_` and 32 hex digits): only such
/// an id goes into the audit record, not whatever an agent sends.
fn is_approval_id(id: &str) -> bool {
    id.strip_prefix("apr_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}
