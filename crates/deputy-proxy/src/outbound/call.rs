//! The context of one outbound call, filled in by the stages in turn.

use std::sync::Arc;
use std::time::SystemTime;

use deputy_identity::TlsMaterial;
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;

use super::{Caller, Outbound};
use crate::body::Body;
use crate::config::Service;
use crate::connections::InFlight;
use crate::context::Context;
use crate::delegation::{OutboundCall, TaskPlan};
use crate::pipeline::{Refused, out_of_order};

/// One call from a local agent, as the stages see and leave it.
pub(crate) struct Call<'a> {
    /// The agent's listener.
    pub(crate) outbound: &'a Outbound,
    /// The agent process on the connection.
    pub(crate) caller: &'a Caller,
    /// The call's id at both ends.
    pub(crate) request_id: &'a str,
    /// When the call arrived, for every check of time along it.
    pub(crate) now: SystemTime,
    /// The request, until `send` sends it.
    pub(crate) request: Option<Request<Body>>,
    /// `route`: the service called.
    pub(crate) service: Option<Arc<Service>>,
    /// `identity`: the agent's SVID the call goes out with.
    pub(crate) material: Option<Arc<TlsMaterial>>,
    /// `plan`: the task the call carries, if any.
    pub(crate) plan: Option<TaskPlan>,
    /// `decide`: the policy's narrower scope for the next link.
    pub(crate) narrowed: Option<Vec<String>>,
    /// `plan`: the agent asked for a dry run (`Deputy-Dry-Run: true`); what the stages found.
    pub(crate) dry_run: Option<super::stages::DryRun>,
    /// A stage answered the call itself (`response` holds a replay): the stages after it do
    /// not run.
    pub(crate) answered_early: bool,
    /// `idempotency`: the first try of a write under its key, whose response `remember` keeps.
    pub(crate) first_try: Option<super::stages::FirstTry>,
    /// `decide`: the policy asks for a human's approval first.
    pub(crate) approval: Option<super::stages::Obligation>,
    /// `task-secrets`: the task's own credentials the injected headers read, by secret.
    pub(crate) task_credentials: Vec<(String, Arc<deputy_secrets::Credential>)>,
    /// `revoked`: what the call acts under, for its audit record.
    pub(crate) audit_facts: Option<crate::audit::Facts>,
    /// The call as the revoker watches it (`revoked` says what it acts under).
    pub(crate) watched: Option<&'a crate::revocation::Watched>,
    /// `revoked`: the call's task, what it is and until when, for the key `send` gives the
    /// next node.
    pub(crate) task_hops: Option<(
        crate::revocation::TaskKey,
        crate::revocation::TaskFacts,
        i64,
    )>,
    /// `connect`: the key the service's node is given for the call's task.
    pub(crate) revocation_key: Option<http::HeaderValue>,
    /// `connect`: the pooled connection's sender.
    pub(crate) sender: Option<SendRequest<Body>>,
    /// `sign`: the chain to send, and the received context its budget was spent under.
    pub(crate) chain: Option<String>,
    pub(crate) spent_under: Option<Arc<Context>>,
    /// `sign`: the id of the task the call belongs to, if any.
    pub(crate) task: Option<String>,
    /// The call counted on its connections until its response ends.
    pub(crate) in_flight: Vec<InFlight>,
    /// `send`: the answer for the agent.
    pub(crate) response: Option<Response<Body>>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        outbound: &'a Outbound,
        caller: &'a Caller,
        request_id: &'a str,
        request: Request<Body>,
        in_flight: InFlight,
        watched: Option<&'a crate::revocation::Watched>,
    ) -> Self {
        Self {
            outbound,
            caller,
            request_id,
            now: SystemTime::now(),
            request: Some(request),
            service: None,
            material: None,
            plan: None,
            narrowed: None,
            approval: None,
            dry_run: None,
            answered_early: false,
            first_try: None,
            task_credentials: Vec::new(),
            watched,
            audit_facts: None,
            task_hops: None,
            revocation_key: None,
            sender: None,
            chain: None,
            spent_under: None,
            task: None,
            in_flight: vec![in_flight],
            response: None,
        }
    }

    /// The service's name for the log and metrics: `-` until routed.
    pub(crate) fn service_name(&self) -> String {
        self.service
            .as_ref()
            .map_or_else(|| "-".to_owned(), |s| s.name.clone())
    }

    /// What `stage` finds missing, refused as a stage order bug.
    pub(crate) fn missing(&self, stage: &str, what: &str) -> Refused {
        out_of_order(stage, what, self.request_id)
    }

    /// The call as the delegation code sees it; needs `route` and `identity`.
    pub(crate) fn delegation(&self, stage: &str) -> Result<OutboundCall<'_>, Refused> {
        let service = self
            .service
            .as_ref()
            .ok_or_else(|| self.missing(stage, "service"))?;
        let material = self
            .material
            .as_deref()
            .ok_or_else(|| self.missing(stage, "SVID"))?;
        Ok(OutboundCall {
            agent: &self.outbound.agent,
            signers: &self.outbound.signers,
            links: &self.outbound.links,
            contexts: &self.outbound.contexts,
            material,
            service,
            now: self.now,
            origination_by_policy: self.outbound.policy.is_some(),
            dry_run: self.dry_run.is_some(),
        })
    }
}
