//! `inject`: headers with the agent's credentials (`Authorization: Bearer {{ secret.crm.token }}`),
//! added after the policy allowed the call so that neither the agent nor the decision record
//! ever holds them. A credential deputyd does not hold now refuses the call (503
//! `secret-unavailable`): a call is never sent without the credential it is configured to carry.

use http::HeaderValue;

use super::Call;
use crate::pipeline::Outcome;
use crate::problem::{Problem, ProblemKind};

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
    for injection in agent.inject.iter().filter(|i| i.service == service.name) {
        let value = injection
            .value
            .render(&call.outbound.credentials, &agent.name)
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
