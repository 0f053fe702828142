//! `send` to a tool outside the mesh: HTTPS from deputyd itself, under the base URL's path, with
//! the task's id in the configured header and no chain (the tool could not verify one).

use http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};

use super::Call;
use super::send::{bad_target, timed_out};
use crate::body::{Body, stream};
use crate::config::External;
use crate::external::{failure, request_uri};
use crate::pipeline::Refused;
use crate::problem::{Problem, ProblemKind};

/// RFC 9110's `Authentication-Info`: may carry a next credential.
const AUTHENTICATION_INFO: HeaderName = HeaderName::from_static("authentication-info");

pub(super) async fn send(
    call: &mut Call<'_>,
    name: &str,
    external: &External,
    mut request: Request<Body>,
) -> Result<Response<Body>, Refused> {
    let request_id = call.request_id;
    // `sign` counted the call against its task's budget; a call refused here never left.
    let spent_under = call.spent_under.take();
    let refund = |refused: Refused| {
        if let Some(context) = &spent_under {
            context.refund();
        }
        refused
    };
    if request.method() == Method::CONNECT {
        // A tunnel would carry what no policy saw.
        return Err(refund(
            Problem::new(
                ProblemKind::BadRequest,
                format!("CONNECT is refused: {name} is called with requests deputyd can judge"),
                request_id,
            )
            .into(),
        ));
    }
    let Some(client) = call.outbound.externals.get(name) else {
        return Err(refund(call.missing("send", "external client")));
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = request_uri(&external.base, path).map_err(|e| refund(bad_target(&e, request_id)))?;
    *request.uri_mut() = uri;
    // ALPN settles HTTP/2 or HTTP/1.1 with the tool; the client speaks either.
    *request.version_mut() = Version::HTTP_11;
    // The header is deputyd's: whatever the agent wrote there is dropped, and it carries the id
    // of the task the call belongs to (as its originator named it, or generated).
    let headers = request.headers_mut();
    headers.remove(&external.task_header);
    if let Some(task) = call
        .task
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(external.task_header.clone(), task);
    }

    let timeout = call.outbound.timeouts.request;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(mut response)) => {
            // A session the tool opens with the injected credential is deputyd's to hold,
            // never the agent's: a cookie would let the agent act without deputyd.
            for name in [header::SET_COOKIE, AUTHENTICATION_INFO] {
                response.headers_mut().remove(name);
            }
            Ok(response.map(stream))
        }
        Ok(Err(e)) => {
            // No connection, no request written: that call did not happen.
            if e.is_connect()
                && let Some(context) = &spent_under
            {
                context.refund();
            }
            let (kind, detail) = failure(name, &external.base, &e);
            Err(Problem::new(kind, detail, request_id).into())
        }
        Err(_) => Err(timed_out(name, timeout, request_id)),
    }
}
