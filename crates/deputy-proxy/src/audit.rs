//! The data path's part in the audit trail (`deputy-audit`): each call's record, written at
//! each end as the call is answered (before its answer is handed on), and the check that the
//! trail can be written before a call begins.

use std::sync::Arc;

use deputy_audit::{CallRecord, Event, OnFailure, Trail};

use crate::body::AccessRecord;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};

/// Counter: audit records that could not be written.
pub(crate) const LOST: &str = "deputy_audit_records_lost_total";

/// What a call acted under, for its record: filled in once its task is known.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub(crate) task: Option<String>,
    pub(crate) principal: Option<String>,
    pub(crate) originator: Option<String>,
    pub(crate) actors: Vec<String>,
    /// A dry run (nothing delivered or spent).
    pub(crate) dry_run: bool,
    /// An idempotent replay (answered with a kept response).
    pub(crate) replayed: bool,
    /// The approval the call asked for or went through with.
    pub(crate) approval: Option<String>,
}

/// The `type` of the problem a response refuses with, for its record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProblemType(pub(crate) &'static str);

/// A call begins only if its record can be written (or the operator chose to serve without).
pub(crate) fn ready(trail: Option<&Arc<Trail>>, request_id: &str) -> Outcome {
    match trail {
        Some(trail) if !trail.available() => Err(Problem::new(
            ProblemKind::AuditUnavailable,
            format!(
                "this deputyd cannot write its audit trail ({}), and refuses calls until it \
                 can; retry later (an operator frees the disk, or sets [audit] on_failure = \
                 \"serve\")",
                trail.dir().display()
            ),
            request_id,
        )
        .into()),
        _ => Ok(()),
    }
}

/// Writes the record of the call `access` describes, answered with `status`.
pub(crate) fn record(
    trail: &Trail,
    access: &AccessRecord,
    facts: Option<Facts>,
    answer: (u16, Option<String>, Option<&'static str>),
) {
    let (status, decision_id, problem) = answer;
    let facts = facts.unwrap_or_default();
    let record = CallRecord {
        direction: access.direction.to_owned(),
        agent: access.agent.clone(),
        peer: access.peer.clone(),
        service: access.service.clone(),
        method: access.method.to_string(),
        path: access.path.clone(),
        status,
        request_id: access.request_id.clone(),
        decision_id,
        approval: facts.approval,
        problem: problem.map(str::to_owned),
        task: facts.task,
        principal: facts.principal,
        originator: facts.originator,
        actors: facts.actors,
        dry_run: facts.dry_run,
        replayed: facts.replayed,
    };
    if let Err(e) = trail.append(Event::Call(record)) {
        metrics::counter!(LOST).increment(1);
        if trail.on_failure() == OnFailure::Serve {
            tracing::warn!(error = %e, request_id = %access.request_id,
                "a call's audit record was lost ([audit] on_failure = \"serve\")");
        }
    }
}
