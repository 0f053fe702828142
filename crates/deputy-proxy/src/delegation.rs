//! Delegation chains on the data path.
//!
//! Outbound, an agent that names a principal (`Deputy-Principal`, with `Deputy-Scope` and
//! optionally `Deputy-Task`) starts a chain, if its `originate` patterns allow that principal;
//! the first link is signed with the agent's SVID and delegates to the called service. Inbound,
//! a peer's chain is verified hop by hop and bound to the mTLS peer and the local agent; the
//! agent receives the verified facts, never the raw chain.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deputy_delegation::{ChainError, ChainVerifier, Grant, LinkSigner, SignError, originate};
use deputy_identity::{TlsMaterial, TrustAnchors};
use http::{HeaderMap, HeaderName, HeaderValue};
use spiffe::SpiffeId;

use crate::config::{LocalAgent, Service};
use crate::problem::ProblemKind;

/// Lifetime of a link this node starts (capped later links' lifetimes).
const ORIGIN_TTL: Duration = Duration::from_secs(600);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The agent's link signer, built once per SVID (parsing the leaf and loading the key are not
/// per-request work).
#[derive(Debug, Default)]
pub(crate) struct SignerCache(std::sync::Mutex<Option<(String, Arc<LinkSigner>)>>);

impl SignerCache {
    fn for_material(&self, material: &TlsMaterial) -> Result<Arc<LinkSigner>, SignError> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((serial, signer)) = cached.as_ref()
            && *serial == material.serial
        {
            return Ok(signer.clone());
        }
        let signer = Arc::new(LinkSigner::new(
            &material.signing.chain_der,
            &material.signing.key_pkcs8,
        )?);
        *cached = Some((material.serial.clone(), signer.clone()));
        Ok(signer)
    }
}

/// The chain to send with an outbound call, if the agent starts one.
pub(crate) fn outbound_chain(
    agent: &LocalAgent,
    signers: &SignerCache,
    material: &TlsMaterial,
    service: &Service,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Option<String>, (ProblemKind, String)> {
    if headers.contains_key("deputy-context") {
        return Err((
            ProblemKind::BadRequest,
            "Deputy-Context handles are not issued by this deputyd yet; start a task with \
             Deputy-Principal and Deputy-Scope instead"
                .into(),
        ));
    }
    let Some(principal) = header(headers, "deputy-principal") else {
        return Ok(None);
    };
    if !agent.may_originate(principal) {
        return Err((
            ProblemKind::OriginationRefused,
            format!(
                "agent {} may not start tasks for {principal:?} (its originate patterns: {:?}); \
                 add a matching pattern to the agent's `originate` in deputyd's config",
                agent.name, agent.originate
            ),
        ));
    }
    let scopes: Vec<String> = header(headers, "deputy-scope")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if scopes.is_empty() {
        return Err((
            ProblemKind::BadRequest,
            "a task needs scopes: send Deputy-Scope, such as `tickets:read, users:read`".into(),
        ));
    }
    let task = header(headers, "deputy-task")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let signer = signers
        .for_material(material)
        .map_err(|e| (ProblemKind::NoIdentity, e.to_string()))?;
    let grant = Grant {
        delegate: service.spiffe_id.clone(),
        scopes: Some(scopes),
        budget_calls: None,
        ttl: ORIGIN_TTL,
    };
    originate(&signer, principal, &task, &grant, now)
        .map(Some)
        .map_err(|e| (ProblemKind::BadRequest, e.to_string()))
}

/// Verifies a peer's chain and returns the headers that state its facts to the local agent.
pub(crate) fn inbound_facts(
    verifier: &ChainVerifier,
    anchors: &Arc<TrustAnchors>,
    chain: &str,
    peer: &SpiffeId,
    local: &SpiffeId,
    now: SystemTime,
) -> Result<Vec<(HeaderName, HeaderValue)>, (ProblemKind, String)> {
    let verified = verifier
        .verify(chain, anchors, peer, local, now)
        .map_err(|e| {
            let kind = if matches!(e, ChainError::HeaderTooLarge { .. }) {
                ProblemKind::ChainTooLarge
            } else {
                ProblemKind::ChainRejected
            };
            (kind, format!("{e} [rule {}]", e.code()))
        })?;
    let facts = [
        ("deputy-principal", verified.principal().to_owned()),
        ("deputy-task", verified.task().to_owned()),
        ("deputy-scope", verified.last().scope.join(", ")),
        ("deputy-chain-actors", verified.actors().join(", ")),
    ];
    facts
        .into_iter()
        .map(|(name, value)| {
            HeaderValue::from_str(&value)
                .map(|v| (HeaderName::from_static(name), v))
                .map_err(|_| {
                    (
                        ProblemKind::ChainRejected,
                        format!("{name} is not a valid header value"),
                    )
                })
        })
        .collect()
}
