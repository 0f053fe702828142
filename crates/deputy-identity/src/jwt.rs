//! JWT-SVIDs for the agents deputyd fronts, and the trust domain's JWT keys as a JWKS document.
//!
//! deputyd logs in to Vault as each agent with that agent's JWT-SVID, fetched through the
//! Delegated Identity API under the agent's selectors (so the agent never holds it). Vault
//! checks the token's signature against a JWKS URL; [`run_jwks`] keeps the document behind that
//! URL current from the Delegated Identity API's JWT bundle stream, so a rotated key reaches
//! Vault without anyone editing its config.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use spiffe::TrustDomain;
use spire_api::{DelegateAttestationRequest, DelegatedIdentityClient};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::manager::AgentIdentity;

/// Fetches a JWT-SVID for `agent`, for `audience`, through the Delegated Identity API at
/// `endpoint`. Refuses a token whose subject is not the agent's configured SPIFFE ID (a selector
/// that matched the wrong registration entry must not hand Vault another agent's identity).
pub async fn fetch_agent_jwt_svid(
    endpoint: &str,
    agent: &AgentIdentity,
    audience: &str,
) -> Result<String, String> {
    let client = DelegatedIdentityClient::connect_to(endpoint)
        .await
        .map_err(|e| {
            format!(
                "delegated identity API {endpoint}: cannot connect ({e}); is the SPIRE agent \
                 (or deputy issuer) running with its admin socket there?"
            )
        })?;
    let selectors = agent.selectors.iter().map(Into::into).collect();
    let request = DelegateAttestationRequest::for_selectors(selectors)
        .map_err(|e| format!("agent {} has no usable selectors: {e}", agent.name))?;
    let svids = client
        .fetch_jwt_svids(&[audience], request)
        .await
        .map_err(|e| {
            format!(
                "delegated identity API {endpoint}: no JWT-SVID for agent {} ({e}); check that \
                 its registration entry exists",
                agent.name
            )
        })?;
    let svid = svids
        .into_iter()
        .find(|svid| svid.spiffe_id() == &agent.spiffe_id)
        .ok_or_else(|| {
            format!(
                "delegated identity API {endpoint}: no JWT-SVID for agent {} carries its \
                 configured SPIFFE ID {}",
                agent.name, agent.spiffe_id
            )
        })?;
    Ok(svid.token().to_owned())
}

/// The JWT keys of one trust domain as a JWKS document (`{"keys":[...]}`), as Vault's
/// `jwks_url` expects; `None` until the first bundle arrives.
pub type Jwks = watch::Receiver<Option<Arc<String>>>;

/// Follows the JWT bundles of the Delegated Identity API at `endpoint`, publishing the keys of
/// `trust_domain` on `jwks`, reconnecting with backoff, until `cancel`.
pub async fn run_jwks(
    endpoint: String,
    trust_domain: TrustDomain,
    jwks: watch::Sender<Option<Arc<String>>>,
    backoff: (Duration, Duration),
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(backoff.0, backoff.1);
    loop {
        let error = tokio::select! {
            () = cancel.cancelled() => return,
            error = stream_jwks(&endpoint, &trust_domain, &jwks, &mut backoff) => error,
        };
        crate::metrics::source_error("delegated_identity_api");
        // The last keys stay published: a key does not stop being valid because the stream
        // that announced it broke.
        tracing::warn!(%error, "JWT bundle stream failed; the JWKS served stays as it was");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn stream_jwks(
    endpoint: &str,
    trust_domain: &TrustDomain,
    jwks: &watch::Sender<Option<Arc<String>>>,
    backoff: &mut Backoff,
) -> String {
    let client = match DelegatedIdentityClient::connect_to(endpoint).await {
        Ok(client) => client,
        Err(e) => return format!("delegated identity API {endpoint}: cannot connect ({e})"),
    };
    let mut stream = match client.stream_jwt_bundles().await {
        Ok(stream) => stream,
        Err(e) => return format!("delegated identity API {endpoint}: {e}"),
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(set) => {
                backoff.reset();
                let Some(bundle) = set.get(trust_domain) else {
                    tracing::warn!(%trust_domain, "the JWT bundles hold no keys of this trust domain");
                    continue;
                };
                let keys: Vec<&[u8]> = bundle.jwt_authorities().map(|a| a.jwk_json()).collect();
                match jwks_document(&keys) {
                    Ok(document) => {
                        tracing::info!(%trust_domain, keys = keys.len(), "JWT keys updated");
                        jwks.send_replace(Some(Arc::new(document)));
                    }
                    Err(e) => tracing::warn!(error = %e, "a JWT key is not JSON; keys kept"),
                }
            }
            Err(e) => return format!("delegated identity API {endpoint}: {e}"),
        }
    }
    format!("delegated identity API {endpoint}: the stream ended")
}

/// `{"keys":[...]}` from each key's JWK JSON.
fn jwks_document(keys: &[&[u8]]) -> Result<String, serde_json::Error> {
    let keys = keys
        .iter()
        .map(|k| serde_json::from_slice::<serde_json::Value>(k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({ "keys": keys }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_document_lists_every_key() {
        let a = br#"{"kty":"EC","kid":"a","crv":"P-256","x":"x","y":"y"}"#;
        let b = br#"{"kty":"EC","kid":"b","crv":"P-256","x":"x","y":"y"}"#;
        let doc: serde_json::Value =
            serde_json::from_str(&jwks_document(&[a, b]).expect("json")).expect("parse");
        let kids: Vec<&str> = doc["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid"))
            .collect();
        assert_eq!(kids, ["a", "b"]);
        assert!(jwks_document(&[b"not json"]).is_err());
    }
}
