//! Policy at both ends of every call: the input document built from verified facts only, the
//! MCP call read from the body while it streams, and a decision turned into a refusal.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use deputy_delegation::LinkClaims;
use deputy_policy::input::{
    Agent, ChainLink, Origin, Peer, RequestInfo, ServiceRef, Task, TimeInfo, policy_headers,
    query_params,
};
use deputy_policy::mcp::{Call, Inspector, Protocol};
use deputy_policy::{DecisionRecord, Direction, INPUT_VERSION, PolicyInput};
use http::{HeaderMap, Method, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use spiffe::SpiffeId;

use crate::body::{Body, BoxError};
use crate::config::{PolicyConfig, Reach};
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
    /// The SPIFFE ID of the agent that started the task (signed the first link).
    pub(crate) originator: String,
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
    /// How the called side's calls are read (MCP, A2A or unmarked).
    pub(crate) protocol: &'a Protocol,
}

/// The request line and headers the policy may see.
#[derive(Debug)]
pub(crate) struct RequestFacts<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    /// The JSON-RPC call read from the body.
    pub(crate) call: Option<Call>,
}

/// Builds the version-1 input document.
fn input(
    config: &PolicyConfig,
    parties: &Parties<'_>,
    task: Option<TaskFacts>,
    request: RequestFacts<'_>,
    now: SystemTime,
) -> PolicyInput {
    let facts = config.facts.current();
    let attributes = |id: &SpiffeId| {
        // Most nodes configure none: then no SPIFFE ID is written out to look one up.
        if facts.attributes.is_empty() {
            return Default::default();
        }
        facts
            .attributes
            .get(&id.to_string())
            .cloned()
            .unwrap_or_default()
    };
    let (principal, task, chain) = match task {
        Some(t) => (
            Some(t.principal.clone()),
            Some(Task {
                id: t.id,
                budget_left: t.budget_left,
                new: t.new,
                scope: t.scope,
                origin: Some(Origin {
                    agent: t.originator,
                    principal: t.principal,
                }),
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
        service: parties.service.map(|service| match &service.reach {
            Reach::Mesh(peer) => ServiceRef {
                name: service.name.clone(),
                spiffe_id: Some(peer.spiffe_id.to_string()),
                external: None,
                attributes: attributes(&peer.spiffe_id),
            },
            Reach::External(external) => ServiceRef {
                name: service.name.clone(),
                spiffe_id: None,
                external: Some(external.base.to_string()),
                attributes: Default::default(),
            },
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
            mcp: match &request.call {
                Some(Call::Mcp(mcp)) => Some(mcp.clone()),
                _ => None,
            },
            a2a: match request.call {
                Some(Call::A2a(a2a)) => Some(a2a),
                _ => None,
            },
        },
        time: TimeInfo::at(unix, facts.time_zone),
        phase: Default::default(),
    }
}

/// Judges `request` at either end: a canonical path, the MCP call read from the body, the
/// decision. Returns the request to forward (its body still inspected) and the decision, or the
/// refusal. `asked` is the request target as the caller sent it.
pub(crate) async fn judge(
    config: &PolicyConfig,
    parties: &Parties<'_>,
    task: Option<TaskFacts>,
    request: http::Request<Body>,
    asked: &Uri,
    now: SystemTime,
    request_id: &str,
) -> Result<(http::Request<Body>, DecisionRecord), Problem> {
    let (mut parts, body) = request.into_parts();
    canonical_path(asked.path())
        .map_err(|e| Problem::new(ProblemKind::BadRequest, e, request_id))?;
    readable_body(&parts.headers, parties.protocol.is_json_rpc())
        .map_err(|e| Problem::new(ProblemKind::BodyNotInspectable, e, request_id))?;
    let (call, body) = peek(config, parties.protocol, body)
        .await
        .map_err(|(kind, e)| {
            if kind == ProblemKind::Overloaded {
                crate::metrics::overloaded(parties.direction.as_str(), "max_inspected_bytes");
            }
            Problem::new(kind, e, request_id)
        })?;
    match parties.protocol {
        // An A2A agent is judged by JSON-RPC method and skill: a write that is no JSON-RPC call
        // (A2A's HTTP+JSON binding, `POST /v1/message:send`) would pass unjudged.
        Protocol::A2a
            if call.is_none()
                && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) =>
        {
            return Err(Problem::new(
                ProblemKind::BodyRefused,
                format!(
                    "a {} to an A2A service must carry a JSON-RPC call, which its policy judges \
                     by method and skill; A2A's HTTP+JSON binding is not judged, so send A2A \
                     JSON-RPC",
                    parts.method
                ),
                request_id,
            ));
        }
        // Its answers are read for lists: ask for them uncompressed.
        Protocol::Mcp(_) => {
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        _ => {}
    }
    let request_facts = RequestFacts {
        method: &parts.method,
        uri: asked,
        headers: &parts.headers,
        call,
    };
    let input = input(config, parties, task, request_facts, now);
    let record = decide(config, &input);
    deputy_policy::record::log_decision(&record, &input, request_id, config.log_inputs);
    if let Some(problem) = refusal(&record, parties.direction, request_id) {
        return Err(problem);
    }
    parts
        .extensions
        .insert(crate::body::DecisionId(record.id.clone()));
    if let Some(lister) =
        crate::listing::Lister::for_call(&config.policy, input, request_id, parties.protocol)
    {
        parts.extensions.insert(lister);
    }
    Ok((http::Request::from_parts(parts, body), record))
}

/// Asks the policy. An evaluation may run up to the configured time limit. While the policy
/// has been slow lately it runs with the worker's other tasks moved to another thread; else on
/// the worker, as a fast decision costs less than that move (which wakes threads: on the data
/// path benchmark it was most of the CPU policy added).
fn decide(config: &PolicyConfig, input: &PolicyInput) -> DecisionRecord {
    if crate::may_block_in_place() && config.policy.runs_slow() {
        tokio::task::block_in_place(|| decide_timed(&config.policy, input))
    } else {
        decide_timed(&config.policy, input)
    }
}

/// Decides, and reports the policy slow when the decision used more than
/// [`SLOW_DECISION`](deputy_policy::SLOW_DECISION) of this thread's CPU, or waited far longer
/// than that (the wasm engine waits for a free instance, or for a builtin on a thread of its
/// own, without using CPU; a timeout marks the policy slow by itself).
fn decide_timed(policy: &deputy_policy::Policy, input: &PolicyInput) -> DecisionRecord {
    let cpu = || nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok();
    let before = cpu();
    let record = policy.decide(input);
    let used_cpu = matches!((before, cpu()), (Some(before), Some(after))
        if std::time::Duration::from(after - before) > deputy_policy::SLOW_DECISION);
    if used_cpu || record.took > WAITED_TOO_LONG {
        policy.mark_slow();
    }
    record
}

/// A decision that took this long, CPU or not, held its worker too long: a core is rarely
/// that long in coming, so it waited on the policy.
const WAITED_TOO_LONG: std::time::Duration = std::time::Duration::from_millis(20);

/// The refusal a decision calls for, if any. A decision that needs an approval is refused at
/// the receiving end only: the calling end holds the call until an operator approves it (its
/// `approve` stage), while the receiving end has no way to ask the caller's operator.
fn refusal(record: &DecisionRecord, direction: Direction, request_id: &str) -> Option<Problem> {
    let (kind, what) = if record.decision.needs_approval() {
        if direction == Direction::Outbound {
            return None;
        }
        (
            ProblemKind::ApprovalRequired,
            "the receiving end's policy asks for an approval, which is asked for where a call \
             starts: make the rule apply to outbound calls (input.direction == \"outbound\") so \
             the caller's deputyd holds the call for its operator",
        )
    } else if record.decision.allow {
        return None;
    } else {
        (ProblemKind::PolicyDenied, "the policy denied this call")
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
/// Each frame's bytes are held against the node's bound ([`crate::HeldBytes`]) as they arrive;
/// past it the call is refused 503 `overloaded` (and what it held returned).
async fn peek(
    config: &PolicyConfig,
    protocol: &Protocol,
    mut body: Body,
) -> Result<(Option<Call>, Body), (ProblemKind, String)> {
    let refused = |e: String| (ProblemKind::BodyRefused, e);
    let mut held_bytes = crate::held_bytes::Held::default();
    let mut inspector = Inspector::for_protocol(protocol);
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
            Ok(Some(Err(e))) => return Err(refused(format!("the request body failed: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    size += data.len();
                    config
                        .held_bytes
                        .hold(&mut held_bytes, data.len())
                        .map_err(|e| (ProblemKind::Overloaded, e))?;
                    inspector.feed(data).map_err(|e| refused(e.to_string()))?;
                }
                held.push_back(frame);
            }
        }
    }
    if ended {
        inspector.finish().map_err(|e| refused(e.to_string()))?;
    }
    let call = inspector.decide();
    let rest = Inspecting {
        reservation: (!held.is_empty()).then_some(held_bytes),
        held,
        inner: (!ended).then_some(body),
        inspector,
    };
    Ok((call, rest.boxed_unsync()))
}

/// Refuses a path the server could route differently from the one the policy judges: dot
/// segments, empty segments, backslashes, and percent-encodings that servers decode before
/// routing (unreserved characters, `/` and `\`). The policy then sees the path the server acts on.
fn canonical_path(path: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "the request path {path:?} {why}; send it in canonical form, so that the path the \
             policy judges is the path the service acts on"
        ))
    };
    if path.contains('\\') {
        return refuse("holds a backslash");
    }
    if path.split('/').skip(1).any(|s| s == "." || s == "..") {
        return refuse("holds a dot segment");
    }
    if path.contains("//") {
        return refuse("holds an empty segment (`//`)");
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            None => return refuse("holds a malformed percent-encoding"),
            Some(b) if b.is_ascii_alphanumeric() || b"-._~/\\".contains(&b) => {
                return refuse("percent-encodes a character that needs no encoding");
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Refuses a body a JSON server would read differently from the bytes deputyd inspects: a
/// compressed one, or one declared in a charset other than UTF-8 (servers decode by the
/// declared charset; MCP SDKs and body parsers do). Bodies declared as something other than
/// JSON are left alone, except on the way to an MCP server (`mcp`): its calls are judged by
/// tool, and a server may decompress, or parse as JSON-RPC, whatever it is sent, so any
/// encoding but identity and any declared type but JSON would hide the call from the policy.
fn readable_body(headers: &HeaderMap, mcp: bool) -> Result<(), String> {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let content_type = types.next();
    if types.next().is_some() {
        return Err("the request has more than one Content-Type; send one".into());
    }
    let content_type = match content_type.map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => Some(text.to_ascii_lowercase()),
        Some(Err(_)) => return Err("the Content-Type is not visible ASCII".into()),
    };
    let media = content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or_default().trim());
    let json = media.is_none_or(|m| m == "application/json" || m.ends_with("+json"));
    if !json && !mcp {
        return Ok(());
    }
    let encoding = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|e| e.to_str().unwrap_or("?").trim())
        .find(|e| !e.eq_ignore_ascii_case("identity"));
    let what = if mcp {
        "a body sent to an MCP service (whose calls are judged by tool)"
    } else {
        "a JSON body"
    };
    if let Some(encoding) = encoding {
        return Err(format!(
            "{what} with Content-Encoding {encoding:?} cannot be inspected for the policy; send \
             it uncompressed"
        ));
    }
    if !json {
        return Err(format!(
            "{what} declared as {} could carry a JSON-RPC call the policy would not see; send \
             the call as application/json",
            media.unwrap_or_default()
        ));
    }
    // Exactly one way to read the parameters: unreadable ones, a charset other than UTF-8, or
    // several charsets (servers differ on which wins) are refused.
    let params = content_type
        .as_deref()
        .and_then(|t| t.find(';').map(|i| &t[i..]))
        .unwrap_or_default();
    let params = crate::media_type::parameters(params)
        .map_err(|e| format!("{what} with Content-Type parameters deputyd cannot read: {e}"))?;
    let charsets: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name == "charset")
        .map(|(_, value)| value.as_str())
        .collect();
    match charsets.as_slice() {
        [] => {}
        [one] if one.eq_ignore_ascii_case("utf-8") => {}
        _ => {
            return Err(format!(
                "a JSON body in charset {charsets:?} is refused; Deputy reads JSON as UTF-8, so \
                 send one charset=utf-8 (or none)"
            ));
        }
    }
    Ok(())
}

/// A body whose first frames were read for the decision, inspected to its end.
struct Inspecting {
    held: VecDeque<Frame<Bytes>>,
    /// The node-wide reservation for `held`, returned once they are passed on.
    reservation: Option<crate::held_bytes::Held>,
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
        let this = &mut *self;
        if let Some(frame) = this.held.pop_front() {
            if this.held.is_empty() {
                this.reservation = None;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
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
        // Not the inner body's answer: a sender that trusts it stops polling after the last
        // frame, and the inspector would never hear the end (an unfinished object, a short
        // head). The end is the poll that returns `None`.
        self.held.is_empty() && self.inner.is_none()
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

#[cfg(test)]
mod tests {
    use super::readable_body;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_canonical_paths_are_judged() {
        for ok in [
            "/",
            "/customers/c-1/orders",
            "/a%20b",
            "/q%3F",
            "/tickets/9",
        ] {
            assert!(super::canonical_path(ok).is_ok(), "{ok}");
        }
        for refused in [
            "/%70ayments/refund",
            "/customers/%2e%2e/admin",
            "/a%2Fb",
            "/a/../payments",
            "/./payments",
            "//payments",
            "/a\\b",
            "/bad%zz",
            "/trailing%2",
        ] {
            assert!(super::canonical_path(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn json_bodies_must_be_plain_utf8_and_other_bodies_are_left_alone() {
        for ok in [
            &[][..],
            &[("content-type", "application/json")],
            &[("content-type", "application/json; charset=UTF-8")],
            &[
                ("content-type", "application/json"),
                ("content-encoding", "identity"),
            ],
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", "gzip"),
            ],
            &[("content-type", "text/plain; charset=latin1")],
        ] {
            assert!(readable_body(&headers(ok), false).is_ok(), "{ok:?}");
        }
        for refused in [
            &[("content-encoding", "gzip")][..],
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            &[
                ("content-type", "application/vnd.api+json"),
                ("content-encoding", "deflate"),
            ],
            &[("content-type", "application/json; charset=utf-7")],
            &[("content-type", "application/json; charset=\"utf-16\"")],
            &[
                ("content-type", "text/plain"),
                ("content-type", "application/json"),
            ],
        ] {
            assert!(
                readable_body(&headers(refused), false).is_err(),
                "{refused:?}"
            );
        }
        // The charset written so that servers read it differently from a naive split.
        for content_type in [
            "application/json; charset =utf-7",
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; a=\"x;charset=utf-8\"; charset=utf-7",
            "application/json; charset=\"utf-7\"",
        ] {
            let error = readable_body(&headers(&[("content-type", content_type)]), true)
                .expect_err(content_type);
            assert!(
                error.contains("charset") || error.contains("cannot read"),
                "{content_type}: {error}"
            );
        }
        for content_type in [
            "application/json; charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json;charset=utf-8",
        ] {
            assert!(
                readable_body(&headers(&[("content-type", content_type)]), true).is_ok(),
                "{content_type}"
            );
        }
    }

    #[test]
    fn bodies_for_an_mcp_service_must_be_plain_json_whatever_they_are_declared_as() {
        for ok in [
            &[][..],
            &[("content-type", "application/json")],
            &[
                ("content-type", "application/json"),
                ("content-encoding", "identity"),
            ],
        ] {
            assert!(readable_body(&headers(ok), true).is_ok(), "{ok:?}");
        }
        for (refused, says) in [
            (
                &[("content-type", "text/plain"), ("content-encoding", "gzip")][..],
                "Content-Encoding \"gzip\"",
            ),
            (
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-encoding", "br"),
                ],
                "\"br\"",
            ),
            (&[("content-type", "text/plain")], "declared as text/plain"),
            (
                &[("content-type", "application/x-www-form-urlencoded")],
                "application/json",
            ),
        ] {
            let error = readable_body(&headers(refused), true).expect_err("refused");
            assert!(error.contains(says), "{refused:?}: {error}");
        }
    }
}
