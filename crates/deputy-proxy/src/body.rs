//! The body type of the data path, and the meter that counts what crosses it.
//!
//! Bodies stream: nothing here buffers one whole. A [`Metered`] body counts bytes as frames pass
//! and runs a completion hook once the body ends (or is dropped unfinished), which is where the
//! access log line and the byte metrics are written.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};

/// Why a body stopped: the peer's stream failed, or deputyd cut it (a body the policy
/// inspection refused after the decision).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: streamed from the peer, or a problem document.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `body` read whole, at most `limit` bytes (its trailers are not kept). For the few calls that
/// must be bound to their body (an approval, an idempotency key), never for streaming ones.
pub(crate) async fn read_whole(mut body: Body, limit: usize) -> Result<Bytes, String> {
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > limit {
                return Err(format!("the body is over {limit} bytes"));
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok(whole.freeze())
}

/// SHA-256 of `bytes`, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A streamed body, passed on as it arrives, without `Deputy-*` trailers.
pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming
        .map_frame(without_deputy_trailers)
        .map_err(Into::into)
        .boxed_unsync()
}

/// Trailers are headers too: what a peer or an agent sends in them must not pass for a fact
/// deputyd vouches for (deputyd itself never sends trailers).
fn without_deputy_trailers(mut frame: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(trailers) = frame.trailers_mut() {
        crate::routing::strip_all_deputy_headers(trailers);
    }
    frame
}

/// A problem as an HTTP response with this body type, carrying its decision id (if a policy
/// decision refused the call) for the access line.
pub fn problem_response(problem: &crate::problem::Problem) -> http::Response<Body> {
    let mut response = problem.to_response().map(full);
    response
        .extensions_mut()
        .insert(crate::audit::ProblemType(problem.type_uri));
    DecisionId::mark(&mut response, problem.decision_id.clone());
    response
}

/// The id of the decision a request or response was judged by, for its access line.
#[derive(Debug, Clone)]
pub(crate) struct DecisionId(pub(crate) String);

impl DecisionId {
    /// The decision id a request or response carries.
    pub(crate) fn of(extensions: &http::Extensions) -> Option<String> {
        extensions.get::<Self>().map(|d| d.0.clone())
    }

    /// Marks `response` with `id`, if there is one.
    pub(crate) fn mark<B>(response: &mut http::Response<B>, id: Option<String>) {
        if let Some(id) = id {
            response.extensions_mut().insert(Self(id));
        }
    }
}

type Finish = Box<dyn FnOnce(u64, bool) + Send>;
type Inspect = Box<dyn FnMut(&Bytes) + Send>;

/// Counts the bytes of a body as they stream; calls `finish(bytes, complete)` once.
pub struct Metered {
    inner: Body,
    bytes: u64,
    counter: Option<Arc<AtomicU64>>,
    inspect: Option<Inspect>,
    finish: Option<Finish>,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Metered {
    /// Meters a streamed body, adding to `counter` as bytes pass.
    pub fn counting(incoming: hyper::body::Incoming, counter: Arc<AtomicU64>) -> Body {
        Self {
            inner: stream(incoming),
            bytes: 0,
            counter: Some(counter),
            inspect: None,
            finish: None,
        }
        .boxed_unsync()
    }

    /// Meters `inner` and calls `finish(bytes, complete)` when it ends or is dropped.
    pub fn finishing(inner: Body, finish: impl FnOnce(u64, bool) + Send + 'static) -> Body {
        Self {
            inner,
            bytes: 0,
            counter: None,
            inspect: None,
            finish: Some(Box::new(finish)),
        }
        .boxed_unsync()
    }

    /// As [`Metered::finishing`], showing each data frame to `inspect` as it passes.
    pub(crate) fn inspecting(
        inner: Body,
        inspect: impl FnMut(&Bytes) + Send + 'static,
        finish: impl FnOnce(u64, bool) + Send + 'static,
    ) -> Body {
        Self {
            inner,
            bytes: 0,
            counter: None,
            inspect: Some(Box::new(inspect)),
            finish: Some(Box::new(finish)),
        }
        .boxed_unsync()
    }

    fn done(&mut self, complete: bool) {
        if let Some(finish) = self.finish.take() {
            finish(self.bytes, complete);
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    self.bytes += len;
                    if let Some(counter) = &self.counter {
                        counter.fetch_add(len, Ordering::Relaxed);
                    }
                    if let Some(inspect) = self.inspect.as_mut() {
                        inspect(data);
                    }
                }
            }
            Poll::Ready(None) => self.done(true),
            Poll::Ready(Some(Err(_))) => self.done(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // A body dropped before its end: the peer went away mid-stream.
        let complete = self.inner.is_end_stream();
        self.done(complete);
    }
}

/// What the access record takes from a request as it arrives, before any stage sees it.
#[derive(Debug)]
pub(crate) struct Arrival {
    started: std::time::Instant,
    method: http::Method,
    path: String,
    request_bytes: Arc<AtomicU64>,
}

impl Arrival {
    /// Notes the request's arrival, and counts its body's bytes from here on.
    pub(crate) fn of(request: http::Request<hyper::body::Incoming>) -> (Self, http::Request<Body>) {
        let request_bytes = Arc::new(AtomicU64::new(0));
        let arrival = Self {
            started: std::time::Instant::now(),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            request_bytes: request_bytes.clone(),
        };
        (
            arrival,
            request.map(|b| Metered::counting(b, request_bytes)),
        )
    }

    /// The access record of the call that arrived: `direction` and the parties named, the
    /// requests in flight it holds until its answer ends.
    pub(crate) fn record(
        self,
        direction: &'static str,
        (agent, peer, service): (String, String, String),
        request_id: String,
        in_flight: Vec<crate::connections::InFlight>,
    ) -> AccessRecord {
        AccessRecord {
            direction,
            agent,
            peer,
            service,
            method: self.method,
            path: self.path,
            started: self.started,
            request_id,
            request_bytes: self.request_bytes,
            in_flight,
            audit: None,
        }
    }
}

/// Everything the access log says about one request, written when its response body ends.
#[derive(Debug)]
pub struct AccessRecord {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The local agent.
    pub agent: String,
    /// The other end: the verified caller (inbound) or `-` (outbound).
    pub peer: String,
    /// The service (outbound) or the local agent (inbound).
    pub service: String,
    /// Method.
    pub method: http::Method,
    /// Path, without the query (which may carry secrets).
    pub path: String,
    /// When the request arrived.
    pub started: std::time::Instant,
    /// The request's id, the same at both ends and for the agent (`Deputy-Request-Id`).
    pub request_id: String,
    /// Request body bytes received so far.
    pub request_bytes: Arc<AtomicU64>,
    /// The request counted in flight on its connections (the agent's or peer's, and the pooled
    /// one it went out on) until its response ends.
    pub in_flight: Vec<crate::connections::InFlight>,
    /// The trail the call's record goes to, and what the call acted under.
    audit: Option<(Arc<deputy_audit::Trail>, Option<crate::audit::Facts>)>,
}

impl AccessRecord {
    /// Has the call's record written to `trail` when it is answered, with `facts`.
    pub(crate) fn audited(
        mut self,
        trail: Option<&Arc<deputy_audit::Trail>>,
        facts: Option<crate::audit::Facts>,
    ) -> Self {
        self.audit = trail.map(|t| (t.clone(), facts));
        self
    }

    /// Counts the answer in the request metrics and wraps its body so that the access line (with
    /// the status and the decision this end made) and byte metrics are written when it ends.
    pub fn answer(mut self, response: http::Response<Body>) -> http::Response<Body> {
        let status = response.status().as_u16();
        crate::metrics::request_done(
            self.direction,
            &self.service,
            status,
            self.started.elapsed(),
        );
        let decision_id = DecisionId::of(response.extensions());
        // Recorded before the answer is handed on: a call whose answer was sent is in the trail.
        if let Some((trail, facts)) = self.audit.take() {
            let problem = response
                .extensions()
                .get::<crate::audit::ProblemType>()
                .map(|p| p.0);
            crate::audit::record(&trail, &self, facts, (status, decision_id.clone(), problem));
        }
        response.map(|body| self.log_at_end(body, status, decision_id))
    }

    fn log_at_end(self, body: Body, status: u16, decision_id: Option<String>) -> Body {
        Metered::finishing(body, move |response_bytes, complete| {
            drop(self.in_flight);
            let request_bytes = self.request_bytes.load(Ordering::Relaxed);
            crate::metrics::bytes(self.direction, &self.service, request_bytes, response_bytes);
            tracing::info!(
                target: "deputy::access",
                direction = self.direction,
                agent = %self.agent,
                peer = %self.peer,
                service = %self.service,
                method = %self.method,
                path = %self.path,
                status,
                request_bytes,
                response_bytes,
                complete,
                duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
                request_id = %self.request_id,
                decision_id = decision_id.as_deref(),
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deputy_trailers_are_dropped_and_others_kept() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("deputy-principal", "user:mallory".parse().expect("value"));
        trailers.insert("grpc-status", "0".parse().expect("value"));
        let frame = without_deputy_trailers(Frame::trailers(trailers));
        let trailers = frame.into_trailers().expect("still trailers");
        assert!(trailers.get("deputy-principal").is_none());
        assert_eq!(trailers["grpc-status"], "0");
        let data = without_deputy_trailers(Frame::data(Bytes::from_static(b"x")));
        assert_eq!(data.into_data().expect("data"), Bytes::from_static(b"x"));
    }
}
