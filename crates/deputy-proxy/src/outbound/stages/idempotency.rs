//! `idempotency` and `remember`: writes carrying an `Idempotency-Key` (the IETF draft) are done
//! once. Per (agent, task, service, key), the first response is kept (in the state database,
//! bounded in count, size and age) and a retry of the same request is answered with it, marked
//! `Deputy-Idempotent-Replay: true`, without reaching the service, spending budget or issuing a
//! credential. A retry while the first is still in flight gets 409; the same key with another
//! request (method, path, query, content type or body) gets 422. A service configured with
//! `require_idempotency_key` refuses a write without a key (400).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Response, header};

use super::Call;
use crate::body::{Body, Metered, full, read_whole, sha256_hex};
use crate::pipeline::{Outcome, Step};
use crate::problem::{Problem, ProblemKind};
use crate::unix;

/// The request header (draft-ietf-httpapi-idempotency-key-header).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header marking a replay.
pub(crate) const REPLAY: HeaderName = HeaderName::from_static("deputy-idempotent-replay");

/// The largest request body an idempotent write may have (it is read whole to be compared), and
/// the largest response kept (a larger one is passed on and not kept: its retry is done again).
const MAX_BODY: usize = 1024 * 1024;

/// The node's idempotency: kept responses, and the keys in flight.
#[derive(Debug)]
pub(crate) struct Idempotency {
    kept: Arc<deputy_state::IdempotentResponses>,
    in_flight: Mutex<HashSet<String>>,
}

impl Idempotency {
    /// Idempotency over the responses kept in `kept`.
    pub(crate) fn new(kept: Arc<deputy_state::IdempotentResponses>) -> Self {
        Self {
            kept,
            in_flight: Mutex::default(),
        }
    }

    fn reserve(self: &Arc<Self>, scope: &str) -> Option<Reservation> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.insert(scope.to_owned()).then(|| Reservation {
            owner: self.clone(),
            scope: scope.to_owned(),
        })
    }
}

/// A key in flight; released when dropped (the call refused, its response kept or failed).
#[derive(Debug)]
pub(crate) struct Reservation {
    owner: Arc<Idempotency>,
    scope: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut in_flight = self
            .owner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        in_flight.remove(&self.scope);
    }
}

/// A first request under its key, on its way: what its response is kept under.
#[derive(Debug)]
pub(crate) struct FirstTry {
    reservation: Reservation,
    fingerprint: String,
}

/// Before anything is issued, signed or sent: replays, conflicts and missing keys.
pub(super) fn check<'a>(call: &'a mut Call<'_>) -> Step<'a> {
    let Some(idempotency) = call.outbound.idempotency.clone() else {
        return Step::Now(Ok(()));
    };
    Step::Wait(Box::pin(async move {
        let request_id = call.request_id;
        let service = call
            .service
            .clone()
            .ok_or_else(|| call.missing("idempotency", "service"))?;
        let request = call
            .request
            .take()
            .ok_or_else(|| call.missing("idempotency", "request"))?;
        if is_safe(request.method()) {
            call.request = Some(request);
            return Ok(());
        }
        let refuse = |kind, detail: String| Problem::new(kind, detail, request_id);
        let key = match request.headers().get(IDEMPOTENCY_KEY) {
            None if service.require_idempotency_key => {
                return Err(refuse(
                    ProblemKind::IdempotencyKeyRequired,
                    format!(
                        "{} requires an Idempotency-Key on {} calls: send a value unique to \
                         this write (a UUID), and the same value when you retry it",
                        service.name,
                        request.method()
                    ),
                )
                .into());
            }
            None => {
                call.request = Some(request);
                return Ok(());
            }
            Some(key) => key
                .to_str()
                .ok()
                .filter(|k| (1..=255).contains(&k.len()))
                .map(str::to_owned)
                .ok_or_else(|| {
                    refuse(
                        ProblemKind::BadRequest,
                        "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                    )
                })?,
        };
        let (parts, body) = request.into_parts();
        let body = read_whole(body, MAX_BODY).await.map_err(|e| {
            refuse(
                ProblemKind::BodyRefused,
                format!("a write with an Idempotency-Key is compared with its retries by its body, and {e}"),
            )
        })?;
        let plan = call.plan.as_ref();
        // A task the agent starts without naming it is a new task on every call: its retries
        // are scoped by its principal, not its generated id.
        let unnamed = matches!(
            plan,
            Some(crate::delegation::TaskPlan::Originate { named: false, .. })
        );
        let task = plan.and_then(|p| p.task_ref(&call.outbound.agent.spiffe_id));
        // Per task (its id, principal and originator): another task's key is another key.
        let task = task.map_or_else(
            || "-".to_owned(),
            |t| {
                let id = if unnamed { "-" } else { t.id.as_str() };
                format!("{}|{}|{}", t.originator, t.principal, id)
            },
        );
        // Hashed from length-prefixed parts: no part can pass for two.
        let scope = sha256_hex(
            [
                call.outbound.agent.name.as_str(),
                task.as_str(),
                service.name.as_str(),
                key.as_str(),
            ]
            .iter()
            .map(|part| format!("{}:{part}", part.len()))
            .collect::<String>()
            .as_bytes(),
        );
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let fingerprint = sha256_hex(
            format!(
                "{}\n{}\n{}\n{content_type}\n{}\n{}",
                parts.method,
                parts.uri.path(),
                parts.uri.query().unwrap_or_default(),
                super::approve::meaning_headers(&parts.headers),
                sha256_hex(&body)
            )
            .as_bytes(),
        );
        let now = unix(call.now);
        let read_kept = || {
            idempotency.kept.get(&scope, now).map_err(|e| {
                Box::new(refuse(
                    ProblemKind::Internal,
                    format!("the kept responses cannot be read ({e}); the write was not sent"),
                ))
            })
        };
        if let Some(dry) = call.dry_run.as_mut() {
            let in_flight = idempotency
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&scope);
            dry.idempotency = Some(match read_kept()? {
                Some((kept, _)) if kept.fingerprint == fingerprint => "replay",
                Some(_) => "reused",
                None if in_flight => "conflict",
                None => "first",
            });
            call.request = Some(http::Request::from_parts(parts, full(body)));
            return Ok(());
        }
        // Reserved before the kept responses are read: a first try that finishes between the
        // two cannot be missed, so no write is done twice.
        let Some(reservation) = idempotency.reserve(&scope) else {
            return Err(refuse(
                ProblemKind::IdempotencyConflict,
                format!(
                    "a request with Idempotency-Key {key:?} to {} is still in flight; retry once \
                     it has been answered",
                    service.name
                ),
            )
            .into());
        };
        if let Some((kept, kept_body)) = read_kept()? {
            drop(reservation);
            if kept.fingerprint != fingerprint {
                return Err(refuse(
                    ProblemKind::IdempotencyKeyReused,
                    format!(
                        "Idempotency-Key {key:?} was used for another request to {} in this \
                         task; a key names one write: use a new key for a new request",
                        service.name
                    ),
                )
                .into());
            }
            if !kept.body_kept {
                return Err(refuse(
                    ProblemKind::IdempotencyConflict,
                    format!(
                        "the write with Idempotency-Key {key:?} to {} was done (status {}), and \
                         its answer was cut or too large to keep; it is not done again: check \
                         its outcome with {}",
                        service.name, kept.status, service.name
                    ),
                )
                .into());
            }
            tracing::info!(agent = %call.outbound.agent.name, service = %service.name,
                status = kept.status, %request_id, "an idempotent retry answered with the kept response");
            let mut response = replay(&kept, kept_body);
            if let Ok(id) = HeaderValue::from_str(request_id) {
                response
                    .headers_mut()
                    .insert(crate::routing::REQUEST_ID, id);
            }
            crate::body::DecisionId::mark(
                &mut response,
                crate::body::DecisionId::of(&parts.extensions),
            );
            call.response = Some(response);
            call.answered_early = true;
            return Ok(());
        }
        call.first_try = Some(FirstTry {
            reservation,
            fingerprint,
        });
        call.request = Some(http::Request::from_parts(parts, full(body)));
        Ok(())
    }))
}

/// After `send`: the response of a first try is kept as it streams to the agent. A success, or
/// an answer a retry would get again (400, 404, 405, 410, 422), is kept whole; an answer that was
/// cut or is too large to keep is recorded as done (its retry is refused, not done again). A
/// server error, a refusal (401, 403, 409, 429) and a problem document are not kept: their retry
/// is sent again.
pub(super) fn remember(call: &mut Call<'_>) -> Outcome {
    let (Some(first), Some(idempotency)) =
        (call.first_try.take(), call.outbound.idempotency.clone())
    else {
        return Ok(());
    };
    let Some(response) = call.response.take() else {
        return Ok(());
    };
    if !worth_keeping(&response) {
        call.response = Some(response);
        return Ok(());
    }
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    // What deputyd adds to every answer (its request id, the connection's own headers) is not
    // the service's: a replay gets the retry's own.
    let mut stored = parts.headers.clone();
    crate::routing::strip_hop_by_hop(&mut stored);
    crate::routing::strip_all_deputy_headers(&mut stored);
    let headers: Vec<(String, String)> = stored
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect();
    let copy = Arc::new(Mutex::new(Some(Vec::new())));
    let capture = copy.clone();
    let captured = Metered::inspecting(
        body,
        move |data: &Bytes| {
            let mut copy = capture.lock().unwrap_or_else(|p| p.into_inner());
            let too_big = copy
                .as_ref()
                .is_some_and(|c| c.len() + data.len() > MAX_BODY);
            if too_big {
                *copy = None;
            } else if let Some(copy) = copy.as_mut() {
                copy.extend_from_slice(data);
            }
        },
        move |_, complete| {
            let FirstTry {
                reservation,
                fingerprint,
            } = first;
            let body = copy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .filter(|_| complete);
            let kept = deputy_state::Kept {
                fingerprint,
                status,
                headers,
                kept_at: unix(std::time::SystemTime::now()),
                body_kept: body.is_some(),
            };
            let keep = || {
                idempotency.kept.keep(
                    &reservation.scope,
                    &kept,
                    body.as_deref().unwrap_or_default(),
                )
            };
            // A durable commit waits on the disk: not on a worker that other calls share.
            let kept_or = if crate::may_block_in_place() {
                tokio::task::block_in_place(keep)
            } else {
                keep()
            };
            if let Err(e) = kept_or {
                tracing::warn!(error = %e, "an idempotent response could not be kept; its retry will be sent again");
            }
            drop(reservation);
        },
    );
    call.response = Some(Response::from_parts(parts, captured));
    Ok(())
}

/// Whether a retry should get this answer again.
fn worth_keeping(response: &Response<Body>) -> bool {
    let status = response.status();
    let problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    (status.is_success() || matches!(status.as_u16(), 400 | 404 | 405 | 410 | 422)) && !problem
}

fn replay(kept: &deputy_state::Kept, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() =
        http::StatusCode::from_u16(kept.status).unwrap_or(http::StatusCode::OK);
    for (name, value) in &kept.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
        .headers_mut()
        .insert(REPLAY, HeaderValue::from_static("true"));
    response
}

/// GET, HEAD, OPTIONS and TRACE change nothing: a key on them is ignored.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}
