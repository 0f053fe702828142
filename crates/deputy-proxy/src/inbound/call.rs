//! The context of one inbound call, filled in by the stages in turn.

use std::time::SystemTime;

use deputy_delegation::VerifiedChain;
use http::{Request, Response, Uri};

use super::{Connection, Inbound};
use crate::body::Body;
use crate::connections::InFlight;
use crate::pipeline::{Refused, out_of_order};
use crate::problem::Problem;

/// One call from a peer deputyd, as the stages see and leave it.
pub(crate) struct Call<'a> {
    /// The inbound listener.
    pub(crate) inbound: &'a Inbound,
    /// The peer's connection (its verified SPIFFE ID, the local agent its SNI named).
    pub(crate) connection: &'a Connection,
    /// The call's id at both ends.
    pub(crate) request_id: &'a str,
    /// When the call arrived, for every check of time along it.
    pub(crate) now: SystemTime,
    /// The request, until `deliver` sends it to the agent.
    pub(crate) request: Option<Request<Body>>,
    /// `target`: the request target as the peer sent it (the request now names the upstream).
    pub(crate) asked: Option<Uri>,
    /// `peer`: the `Deputy-Delegation` header the peer sent, before the peer's headers were
    /// dropped (`Err`: not visible ASCII).
    pub(crate) chain: Option<Result<String, ()>>,
    /// `peer`: the calling deputyd asked for a dry run: everything but delivery (no context is
    /// issued, the agent is not called).
    pub(crate) dry_run: bool,
    /// `peer`: the key the calling node gave this one for the call's task, if it sent one.
    pub(crate) revocation_key: Option<String>,
    /// `verify-chain`: the verified chain, if the peer sent one.
    pub(crate) verified: Option<VerifiedChain>,
    /// `revoked`: what the call acts under, for its audit record.
    pub(crate) audit_facts: Option<crate::audit::Facts>,
    /// The call as the revoker watches it (`revoked` says what it acts under).
    pub(crate) watched: Option<&'a crate::revocation::Watched>,
    /// The call counted on its connection until its response ends.
    pub(crate) in_flight: Option<InFlight>,
    /// `deliver`: the agent's answer.
    pub(crate) response: Option<Response<Body>>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        inbound: &'a Inbound,
        connection: &'a Connection,
        request_id: &'a str,
        request: Request<Body>,
        in_flight: InFlight,
        watched: Option<&'a crate::revocation::Watched>,
    ) -> Self {
        Self {
            inbound,
            connection,
            request_id,
            now: SystemTime::now(),
            request: Some(request),
            asked: None,
            chain: None,
            dry_run: false,
            revocation_key: None,
            verified: None,
            watched,
            audit_facts: None,
            in_flight: Some(in_flight),
            response: None,
        }
    }

    /// What `stage` finds missing, refused as a stage order bug.
    pub(crate) fn missing(&self, stage: &str, what: &str) -> Refused {
        out_of_order(stage, what, self.request_id)
    }

    /// The request, or the refusal of a stage that ran before it was there.
    pub(crate) fn request_mut(&mut self, stage: &str) -> Result<&mut Request<Body>, Refused> {
        let missing = self.missing(stage, "request");
        self.request.as_mut().ok_or(missing)
    }

    /// A refusal of the peer's chain, logged: the detail quotes a principal and task the peer
    /// signed, so it is Debug-formatted (it could hold line breaks).
    pub(crate) fn chain_refused(&self, (kind, detail): crate::delegation::Refusal) -> Refused {
        let connection = self.connection;
        tracing::warn!(agent = %connection.agent.name, peer = %connection.peer, ?detail,
            "delegation chain refused");
        Problem::new(kind, detail, self.request_id).into()
    }
}
