//! `inject`: headers with the agent's credentials (`Authorization: Bearer {{ secret.crm.token }}`),
//! added after the policy allowed the call so that neither the agent nor the decision record
//! ever holds them. A credential deputyd does not hold now refuses the call (503
//! `secret-unavailable`): a call is never sent without the credential it is configured to carry.

use http::HeaderValue;

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::routing::strip_hop_by_hop;

pub(super) fn inject(call: &mut Call<'_>) -> Outcome {
    let agent = &call.outbound.agent;
    if agent.inject.is_empty() {
        return Ok(());
    }
    let service = call
        .service
        .as_ref()
        .ok_or_else(|| call.missing("inject", "service"))?;
    let request = call
        .request
        .as_mut()
        .ok_or_else(|| out_of_order(call.request_id))?;
    let mut injections = agent
        .inject
        .iter()
        .filter(|i| i.service == service.name)
        .peekable();
    if injections.peek().is_none() {
        return Ok(());
    }
    // TRACE would echo the credential back to the agent.
    if request.method() == http::Method::TRACE {
        return Err(Problem::new(
            ProblemKind::BadRequest,
            format!(
                "TRACE is refused on calls to {}: they carry a credential the agent may not see",
                service.name
            ),
            call.request_id,
        )
        .into());
    }
    if let Some(dry) = call.dry_run.as_mut() {
        // Not added (nothing leaves deputyd on a dry run): whether each could be.
        let tasks = call.outbound.task_secrets.as_ref();
        for injection in injections {
            let per_task = injection
                .value
                .secrets()
                .any(|s| tasks.is_some_and(|t| t.is_per_task(&agent.name, s)));
            if per_task {
                continue;
            }
            let available = injection
                .value
                .render(&call.outbound.credentials, &agent.name)
                .is_ok();
            dry.credentials.push(serde_json::json!({
                "header": injection.header.as_str(),
                "available": available,
            }));
        }
        return Ok(());
    }
    // The connection's own headers go now, not at send: `Connection: authorization` from the
    // agent must not take the injected header with it.
    strip_hop_by_hop(request.headers_mut());
    for injection in injections {
        let store = &call.outbound.credentials;
        let task_credentials = &call.task_credentials;
        let value = injection
            .value
            .render_with(|secret| {
                task_credentials
                    .iter()
                    .find(|(name, _)| name == secret)
                    .map(|(_, credential)| credential.clone())
                    .or_else(|| store.get(&agent.name, secret))
            })
            .map_err(|e| {
                Problem::new(
                    ProblemKind::SecretUnavailable,
                    format!(
                        "the call to {} must carry {} and {e}; it was not sent. deputyd obtains \
                         it from Vault: see the agent's secrets on /status for why, and retry \
                         once it is available",
                        service.name, injection.header
                    ),
                    call.request_id,
                )
            })?;
        let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
            Problem::new(
                ProblemKind::SecretUnavailable,
                format!(
                    "the credential for {} on calls to {} is not a valid header value; check \
                     what the secret holds in Vault",
                    injection.header, service.name
                ),
                call.request_id,
            )
        })?;
        // Never indexed by HPACK: the value is not kept in a compression table.
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(injection.header.clone(), value);
    }
    Ok(())
}

fn out_of_order(request_id: &str) -> Box<Problem> {
    crate::pipeline::out_of_order("inject", "request", request_id)
}
