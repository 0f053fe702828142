//! Policy at both ends of every call: the input document built from verified facts only, the
//! MCP call read from the body while it streams, and a decision turned into a refusal.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use deputy_delegation::LinkClaims;
use deputy_policy::input::{
    Agent, ChainLink, Mcp, Peer, RequestInfo, ServiceRef, Task, TimeInfo, policy_headers,
    query_params,
};
use deputy_policy::mcp::Inspector;
use deputy_policy::{DecisionRecord, Direction, INPUT_VERSION, PolicyInput};
use http::{HeaderMap, Method, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use spiffe::SpiffeId;

use crate::body::{Body, BoxError};
use crate::config::PolicyConfig;
use crate::problem::{Problem, ProblemKind};

/// The task a call belongs to, as the policy sees it.
#[derive(Debug, Clone)]
pub(crate) struct TaskFacts {
    pub(crate) principal: String,
    pub(crate) id: String,
    /// The call starts the task.
    pub(crate) new: bool,
    /// The scopes the call carries (requested, for a new link).
    pub(crate) scope: Vec<String>,
    pub(crate) budget_left: Option<u64>,
    pub(crate) chain: Vec<ChainLink>,
}

/// A link's claims as the policy sees them.
pub(crate) fn chain_of(links: &[LinkClaims]) -> Vec<ChainLink> {
    links
        .iter()
        .map(|l| ChainLink {
            iss: l.iss.clone(),
            aud: l.aud.clone(),
            scope: l.scope.clone(),
            iat: l.iat,
            exp: l.exp,
        })
        .collect()
}

/// Who is calling whom, as the policy sees it.
#[derive(Debug)]
pub(crate) struct Parties<'a> {
    pub(crate) direction: Direction,
    /// The local agent (name, SPIFFE ID).
    pub(crate) agent: (&'a str, &'a SpiffeId),
    /// The mTLS peer (inbound).
    pub(crate) peer: Option<&'a SpiffeId>,
    /// The called service (outbound).
    pub(crate) service: Option<&'a crate::config::Service>,
}

/// The request line and headers the policy may see.
#[derive(Debug)]
pub(crate) struct RequestFacts<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) mcp: Option<Mcp>,
}

/// Builds the version-1 input document.
pub(crate) fn input(
    config: &PolicyConfig,
    parties: &Parties<'_>,
    task: Option<TaskFacts>,
    request: RequestFacts<'_>,
    now: SystemTime,
) -> PolicyInput {
    let attributes = |id: &SpiffeId| {
        config
            .attributes
            .get(&id.to_string())
            .cloned()
            .unwrap_or_default()
    };
    let (principal, task, chain) = match task {
        Some(t) => (
            Some(t.principal),
            Some(Task {
                id: t.id,
                budget_left: t.budget_left,
                new: t.new,
                scope: t.scope,
            }),
            t.chain,
        ),
        None => (None, None, Vec::new()),
    };
    let unix = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    PolicyInput {
        version: INPUT_VERSION,
        direction: parties.direction,
        agent: Agent {
            spiffe_id: parties.agent.1.to_string(),
            name: parties.agent.0.to_owned(),
            attributes: attributes(parties.agent.1),
        },
        peer: parties.peer.map(|peer| Peer {
            spiffe_id: peer.to_string(),
            trust_domain: peer.trust_domain().to_string(),
            attributes: attributes(peer),
        }),
        service: parties.service.map(|service| ServiceRef {
            name: service.name.clone(),
            spiffe_id: service.spiffe_id.to_string(),
            attributes: attributes(&service.spiffe_id),
        }),
        principal,
        task,
        chain,
        request: RequestInfo {
            method: request.method.to_string(),
            path: request.uri.path().to_owned(),
            query: query_params(request.uri.query()),
            headers: policy_headers(
                request
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
            ),
            mcp: request.mcp,
        },
        time: TimeInfo::at(unix, config.time_zone),
    }
}

/// The refusal a decision calls for, if any.
pub(crate) fn refusal(record: &DecisionRecord, request_id: &str) -> Option<Problem> {
    if record.decision.allow {
        return None;
    }
    let (kind, what) = match &record.decision.approval {
        Some(approval) if approval.required => (
            ProblemKind::ApprovalRequired,
            "this call needs a human's approval first, which this deputyd cannot ask for yet",
        ),
        _ => (ProblemKind::PolicyDenied, "the policy denied this call"),
    };
    let detail = format!(
        "{what}: {} (decision {}, policy revision {})",
        record.decision.reasons.join("; "),
        record.id,
        record.revision
    );
    Some(Problem::new(kind, detail, request_id).with_decision(&record.id, &record.decision.reasons))
}

/// Reads the start of `body` until the MCP call in it is known (or it is not JSON-RPC), the
/// body ends, `peek_bytes` have arrived or `peek_wait` has passed; returns what was read as the
/// policy's `mcp`, and the body to forward (what was read, then the rest, still inspected).
pub(crate) async fn peek(
    config: &PolicyConfig,
    mut body: Body,
) -> Result<(Option<Mcp>, Body), String> {
    let mut inspector = Inspector::new();
    let mut held = VecDeque::new();
    let mut size = 0usize;
    let mut ended = body.is_end_stream();
    let deadline = tokio::time::Instant::now() + config.peek_wait;
    while !ended
        && size < config.peek_bytes
        && inspector.seen() == deputy_policy::mcp::Seen::NeedMore
    {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            // Waited long enough: decide on what has arrived.
            Err(_) => break,
            Ok(None) => ended = true,
            Ok(Some(Err(e))) => return Err(format!("the request body failed: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    size += data.len();
                    inspector.feed(data).map_err(|e| e.to_string())?;
                }
                held.push_back(frame);
            }
        }
    }
    if ended {
        inspector.finish().map_err(|e| e.to_string())?;
    }
    let mcp = inspector.decide();
    let rest = Inspecting {
        held,
        inner: (!ended).then_some(body),
        inspector,
    };
    Ok((mcp, rest.boxed_unsync()))
}

/// A body whose first frames were read for the decision, inspected to its end.
struct Inspecting {
    held: VecDeque<Frame<Bytes>>,
    inner: Option<Body>,
    inspector: Inspector,
}

impl HttpBody for Inspecting {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.held.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let refused = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .data_ref()
                .and_then(|data| this.inspector.feed(data).err()),
            Poll::Ready(None) => {
                this.inner = None;
                this.inspector.finish().err()
            }
            _ => None,
        };
        if let Some(refused) = refused {
            // Cut the stream: the server never receives a complete body to act on.
            tracing::warn!(reason = %refused, "request body refused after the policy decision; stream aborted");
            this.inner = None;
            return Poll::Ready(Some(Err(refused.into())));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .held
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let inner = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
