//! Inbound: a peer's chain verified hop by hop and bound to the mTLS peer and the local agent;
//! the agent receives the verified facts and a handle, never the raw chain.

use std::time::SystemTime;

use deputy_delegation::{ChainError, ChainVerifier, VerifiedChain};
use http::{HeaderName, HeaderValue};
use spiffe::SpiffeId;

use super::{CONTEXT, Refusal, unix};
use crate::authz::TaskFacts;
use crate::context::ContextStore;
use crate::problem::ProblemKind;
use crate::tls::Anchors;

/// Verifies a peer's chain for `agent` (its SPIFFE ID): hop by hop, bound to the mTLS peer and the agent.
pub(crate) fn verify_inbound(
    chains: &ChainVerifier,
    anchors: &Anchors,
    agent: &SpiffeId,
    chain: &str,
    peer: &SpiffeId,
    now: SystemTime,
) -> Result<VerifiedChain, Refusal> {
    chains
        .verify(chain, &anchors.current(), peer, agent, now)
        .map_err(|e| {
            let kind = if matches!(e, ChainError::HeaderTooLarge { .. }) {
                ProblemKind::ChainTooLarge
            } else {
                ProblemKind::ChainRejected
            };
            (kind, format!("{e} [rule {}]", e.code()))
        })
}

/// The task of a verified inbound chain, as the policy sees it: `budget_left` is what is left
/// under the received link (the link may have been received, and spent on, before).
pub(crate) fn inbound_task(contexts: &ContextStore, verified: &VerifiedChain) -> TaskFacts {
    TaskFacts {
        principal: verified.principal().to_owned(),
        id: verified.task().to_owned(),
        new: false,
        scope: verified.last().scope.clone(),
        budget_left: contexts.remaining_for(verified),
        chain: crate::authz::chain_of(&verified.links),
        originator: verified.originator().to_owned(),
    }
}

/// Keeps a verified chain as a context of `agent`, and returns the headers that state its facts
/// to the agent (with the context's handle).
pub(crate) fn inbound_facts(
    contexts: &ContextStore,
    agent: &str,
    verified: VerifiedChain,
    now: SystemTime,
) -> Result<Vec<(HeaderName, HeaderValue)>, Refusal> {
    let mut facts = vec![
        ("deputy-principal", verified.principal().to_owned()),
        ("deputy-task", verified.task().to_owned()),
        ("deputy-scope", verified.last().scope.join(", ")),
        ("deputy-chain-actors", verified.actors().join(", ")),
    ];
    let (handle, context) = contexts.issue(agent, verified, unix(now))?;
    facts.push((CONTEXT, handle));
    if let Some(remaining) = context.remaining() {
        facts.push(("deputy-budget", remaining.to_string()));
    }
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
