//! MCP list answers filtered by the policy: a list in an answer (tools, prompts, resources,
//! resource templates) shows only the items the policy would let the same caller, for the same
//! principal and task, use. Each item is decided in the `list` phase of the call's own input, as
//! the call that would use it.
//!
//! Every answer of a service marked MCP is read, whatever request it answers: a client takes an
//! answer by its JSON-RPC id, on whatever stream it comes (a GET's, a replay after
//! `Last-Event-ID`, another request's), so a list is found by what a message holds. A JSON answer
//! is read whole and refused with a problem if it cannot be read; an event stream is filtered
//! event by event as it arrives, and cut if an event cannot be read. Neither is ever passed on
//! unfiltered. For a service not marked MCP, the answer to a list request is read the same way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deputy_policy::input::{Mcp, Phase};
use deputy_policy::mcp::{
    Listed, MAX_LIST_BYTES, Protocol, SseFilter, cannot_hold_a_list, filter_message, list_kind,
};
use deputy_policy::{Policy, PolicyInput};
use http::{HeaderValue, Response, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt as _;

use crate::body::{Body, BoxError};
use crate::problem::{Problem, ProblemKind};

/// What reading one call's answers needs: the policy, and the input of the call, turned to the
/// `list` phase.
#[derive(Clone)]
pub(crate) struct Lister {
    /// The call asked for a list: its answer must be one deputyd can read.
    asked_list: bool,
    /// The call was a HEAD: its answer has no body.
    bodiless: bool,
    policy: Arc<Policy>,
    input: PolicyInput,
    request_id: String,
}

impl Lister {
    /// The lister for a call decided on `input` to a service speaking `protocol`, when its
    /// answer is to be read: every call of an MCP service, and a list request of any other.
    pub(crate) fn for_call(
        policy: &Arc<Policy>,
        mut input: PolicyInput,
        request_id: &str,
        protocol: &Protocol,
    ) -> Option<Self> {
        let asked_list = input
            .request
            .mcp
            .as_ref()
            .is_some_and(|mcp| list_kind(&mcp.method).is_some());
        if !asked_list && !matches!(protocol, Protocol::Mcp(_)) {
            return None;
        }
        input.phase = Phase::List;
        Some(Self {
            asked_list,
            bodiless: input.request.method == "HEAD",
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

    /// The answer, every list in it filtered; refused when it cannot be read.
    pub(crate) async fn filter(mut self, response: Response<Body>) -> Response<Body> {
        let status = response.status();
        if self.bodiless || matches!(status.as_u16(), 101..=199 | 204 | 304) {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let encoded = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return self.refused("it is compressed (Content-Encoding)");
        }
        // Clients choose how to read an answer loosely (a type that starts with, or holds, the
        // one they look for), so the choice here is as loose, and the type passed on is the
        // bare one read: a charset (or `charset*`) cannot make the client decode otherwise.
        let media = media_type(&parts.headers);
        if media.contains("event-stream") {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            let filtering = Filtering {
                sse: SseFilter::new(),
                inner: Some(body),
                lister: self,
            };
            return Response::from_parts(parts, filtering.boxed_unsync());
        }
        let json = media.contains("json");
        if self.asked_list && status.is_success() && !json {
            return self.refused(&format!(
                "it is {}, neither application/json nor text/event-stream",
                described(&media)
            ));
        }
        let Ok(whole) = crate::body::read_whole(body, MAX_LIST_BYTES).await else {
            return self.refused(&format!(
                "it failed or is larger than {MAX_LIST_BYTES} bytes"
            ));
        };
        let mut listed = Listed::default();
        let filtered = if json {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            filter_message(&whole, &mut |c| self.keep(c), &mut listed)
        } else if cannot_hold_a_list(&whole) {
            Ok(std::borrow::Cow::Borrowed(&whole[..]))
        } else {
            // A client may read any answer as JSON or events; one that could carry a list in a
            // type deputyd does not read is refused.
            return self.refused(&format!(
                "it is {}, and could carry a list deputyd does not read there",
                described(&media)
            ));
        };
        let filtered = match filtered {
            // Most answers hold no list: passed on as they came, without a copy.
            Ok(std::borrow::Cow::Borrowed(_)) => whole.clone(),
            Ok(std::borrow::Cow::Owned(filtered)) => filtered.into(),
            Err(e) => return self.refused(&e.0),
        };
        self.log(listed);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(filtered.len()));
        Response::from_parts(parts, crate::body::full(filtered))
    }

    fn refused(&self, why: &str) -> Response<Body> {
        tracing::warn!(request_id = %self.request_id, why, "MCP answer refused");
        crate::body::problem_response(&Problem::new(
            ProblemKind::AnswerRefused,
            format!(
                "the MCP service's answer cannot be read to filter the lists in it for this \
                 caller: {why}; deputyd passes on only answers it can read (JSON-RPC as \
                 application/json or text/event-stream, UTF-8, uncompressed), so fix the \
                 service's answer"
            ),
            &self.request_id,
        ))
    }

    fn log(&self, listed: Listed) {
        if listed.listed > 0 {
            tracing::info!(request_id = %self.request_id, listed = listed.listed,
                kept = listed.kept, "MCP list answer filtered by policy");
        }
    }
}

/// The media type of `headers`' Content-Types, lower-cased, without parameters (empty when
/// there is none; all of them, joined, when there are several).
/// An answer's media type as a refusal names it.
fn described(media: &str) -> &str {
    if media.is_empty() {
        "without a Content-Type"
    } else {
        media
    }
}

fn media_type(headers: &http::HeaderMap) -> String {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .map(|value| {
            let text = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            text.split(';').next().unwrap_or_default().trim().to_owned()
        })
        .collect::<Vec<_>>()
        .join(",")
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
