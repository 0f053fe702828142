//! MCP list answers filtered by the policy: the answer to a `tools/list`, `prompts/list` or
//! `resources/list` this deputyd allowed shows only the items the policy would let the same
//! caller, for the same principal and task, use. Each item is decided in the `list` phase of the
//! call's own input, as the call that would use it.
//!
//! A JSON answer is read whole (it is one message) and refused with a problem if it cannot be
//! read; an event stream is filtered event by event as it arrives, and cut if an event cannot
//! be read. Neither is ever passed on unfiltered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deputy_policy::input::{Mcp, Phase};
use deputy_policy::mcp::{ListKind, Listed, MAX_LIST_BYTES, SseFilter, filter_message};
use deputy_policy::{Policy, PolicyInput};
use http::{HeaderValue, Response, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt as _;

use crate::body::{Body, BoxError};
use crate::problem::{Problem, ProblemKind};

/// What filtering one list answer needs: the list asked for, the policy, and the input of the
/// call that asked, turned to the `list` phase.
#[derive(Clone)]
pub(crate) struct Lister {
    kind: ListKind,
    policy: Arc<Policy>,
    input: PolicyInput,
    request_id: String,
}

impl Lister {
    /// The lister for a call decided on `input`, when it asks for a list.
    pub(crate) fn for_call(
        policy: &Arc<Policy>,
        mut input: PolicyInput,
        request_id: &str,
    ) -> Option<Self> {
        let kind = deputy_policy::mcp::list_kind(&input.request.mcp.as_ref()?.method)?;
        input.phase = Phase::List;
        Some(Self {
            kind,
            policy: policy.clone(),
            input,
            request_id: request_id.to_owned(),
        })
    }

    /// May the caller use the item `call` stands for? An item needing an approval is shown:
    /// the call can be made once approved. A policy that fails hides it.
    fn keep(&mut self, call: Mcp) -> bool {
        self.input.request.mcp = Some(call);
        let decision = self.policy.decide(&self.input).decision;
        decision.allow || decision.needs_approval()
    }

    /// The answer, filtered. Only successful answers carry a list; others pass as they are.
    pub(crate) async fn filter(mut self, response: Response<Body>) -> Response<Body> {
        if !response.status().is_success() {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let media = media_type(&parts.headers);
        let encoded = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return self.refused("it is compressed (Content-Encoding)");
        }
        match media.as_deref() {
            Some("application/json") => {
                let Ok(whole) = crate::body::read_whole(body, MAX_LIST_BYTES).await else {
                    return self.refused(&format!(
                        "it failed or is larger than {MAX_LIST_BYTES} bytes"
                    ));
                };
                let mut listed = Listed::default();
                let kind = self.kind;
                let filtered = filter_message(kind, &whole, &mut |c| self.keep(c), &mut listed);
                match filtered {
                    Ok(filtered) => {
                        self.log(listed);
                        parts.headers.remove(header::CONTENT_LENGTH);
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(filtered.len()));
                        Response::from_parts(parts, crate::body::full(filtered.into()))
                    }
                    Err(e) => self.refused(&e.0),
                }
            }
            Some("text/event-stream") => {
                parts.headers.remove(header::CONTENT_LENGTH);
                let filtering = Filtering {
                    sse: SseFilter::new(self.kind),
                    inner: Some(body),
                    lister: self,
                };
                Response::from_parts(parts, filtering.boxed_unsync())
            }
            other => self.refused(&format!(
                "it is {}, neither application/json nor text/event-stream",
                other.unwrap_or("without a Content-Type")
            )),
        }
    }

    fn refused(&self, why: &str) -> Response<Body> {
        let list = match self.kind {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
        };
        tracing::warn!(request_id = %self.request_id, list, why, "MCP list answer refused");
        crate::body::problem_response(&Problem::new(
            ProblemKind::AnswerRefused,
            format!(
                "the service's answer to {list} cannot be filtered for this caller: {why}; \
                 deputyd passes on only lists it can read (one JSON-RPC message as \
                 application/json, or text/event-stream), so fix the service's answer"
            ),
            &self.request_id,
        ))
    }

    fn log(&self, listed: Listed) {
        tracing::info!(request_id = %self.request_id, listed = listed.listed, kept = listed.kept,
            "MCP list answer filtered by policy");
    }
}

/// The media type of `headers`' Content-Type, lower-cased, without parameters.
fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// An event-stream answer, filtered event by event.
struct Filtering {
    sse: SseFilter,
    inner: Option<Body>,
    lister: Lister,
}

impl HttpBody for Filtering {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let filtered = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.sse.feed(&data, &mut |c| this.lister.keep(c)),
                    // Trailers carry no list.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.inner = None;
                    let rest = this.sse.finish(&mut |c| this.lister.keep(c));
                    this.lister.log(this.sse.listed);
                    rest
                }
            };
            match filtered {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out.into())))),
                Err(refused) => {
                    // Cut the stream: the agent never receives the unfiltered list.
                    tracing::warn!(request_id = %this.lister.request_id, reason = %refused,
                        "MCP list event stream refused; stream cut");
                    this.inner = None;
                    return Poll::Ready(Some(Err(refused.into())));
                }
            }
        }
    }
}
