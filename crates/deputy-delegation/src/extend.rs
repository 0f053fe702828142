//! Starting and extending chains. Extension only narrows: scopes within the parent's, expiry
//! no later, budget no larger than what remains. A request to widen is refused, never
//! silently trimmed, so the caller learns its request was out of bounds.

use std::time::{Duration, SystemTime};

use spiffe::SpiffeId;

use crate::link::{Budget, LinkClaims, LinkSigner, SignError, link_hash};
use crate::scope::{check_syntax, first_uncovered};
use crate::verify::{VerifiedChain, unix};

/// What a delegator grants its delegate.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who may act next.
    pub delegate: SpiffeId,
    /// The scopes granted; `None` passes the parent's on unchanged.
    pub scopes: Option<Vec<String>>,
    /// Calls the delegate may make; `None` passes on what remains of the parent's.
    pub budget_calls: Option<u64>,
    /// How long the link lives (capped by the parent's expiry).
    pub ttl: Duration,
}

/// A grant that cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtendError {
    /// The signer is not the agent the chain delegates to.
    #[error("{signer} cannot extend a chain that delegates to {delegate}")]
    NotTheDelegate {
        /// The signer.
        signer: String,
        /// The chain's delegate.
        delegate: String,
    },
    /// A requested scope is not covered by the parent's.
    #[error(
        "scope escalation: {scope} is not within the scopes this agent was granted ({granted})"
    )]
    ScopeEscalation {
        /// The scope asked for.
        scope: String,
        /// What the parent grants.
        granted: String,
    },
    /// A scope is not well formed.
    #[error("{0}")]
    InvalidScope(String),
    /// No scope at all.
    #[error("a link needs at least one scope")]
    NoScope,
    /// More calls asked for than remain.
    #[error(
        "budget escalation: {requested} calls asked for, {remaining} remain of the parent's budget"
    )]
    BudgetEscalation {
        /// Asked for.
        requested: u64,
        /// Remaining.
        remaining: u64,
    },
    /// The parent link has expired.
    #[error("the parent link has expired: start a new task")]
    ParentExpired,
    /// The delegate already signed a link of this chain.
    #[error("{0} already acts in this chain; delegating back to it would make a cycle")]
    Cycle(String),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Starts a chain: `signer` acts for `principal` in `task` and delegates to `grant.delegate`.
pub fn originate(
    signer: &LinkSigner,
    principal: &str,
    task: &str,
    grant: &Grant,
    now: SystemTime,
) -> Result<String, ExtendError> {
    let scopes = grant.scopes.clone().unwrap_or_default();
    check_scopes(&scopes)?;
    if &grant.delegate == signer.spiffe_id() {
        return Err(ExtendError::Cycle(grant.delegate.to_string()));
    }
    let iat = unix(now);
    let claims = LinkClaims {
        iss: signer.spiffe_id().to_string(),
        aud: grant.delegate.to_string(),
        sub: principal.to_owned(),
        task: task.to_owned(),
        scope: scopes,
        budget: grant.budget_calls.map(|calls| Budget { calls }),
        iat,
        exp: iat.saturating_add(seconds(grant.ttl)),
        jti: uuid::Uuid::now_v7().to_string(),
        prev: None,
    };
    Ok(signer.sign(&claims)?)
}

/// Extends `parent` (received by `signer`) with a link to `grant.delegate`. `remaining_calls` is
/// what is left of the parent's budget, as the caller has counted it. Returns the new header
/// value.
pub fn extend(
    parent: &VerifiedChain,
    signer: &LinkSigner,
    grant: &Grant,
    remaining_calls: Option<u64>,
    now: SystemTime,
) -> Result<String, ExtendError> {
    let last = parent.last();
    if last.aud != signer.spiffe_id().to_string() {
        return Err(ExtendError::NotTheDelegate {
            signer: signer.spiffe_id().to_string(),
            delegate: last.aud.clone(),
        });
    }
    let scopes = grant.scopes.clone().unwrap_or_else(|| last.scope.clone());
    check_scopes(&scopes)?;
    if let Some(scope) = first_uncovered(&last.scope, &scopes) {
        return Err(ExtendError::ScopeEscalation {
            scope: scope.to_owned(),
            granted: last.scope.join(", "),
        });
    }
    let delegate = grant.delegate.to_string();
    if parent.links.iter().any(|l| l.iss == delegate) || delegate == last.aud {
        return Err(ExtendError::Cycle(delegate));
    }
    let iat = unix(now);
    if last.exp <= iat {
        return Err(ExtendError::ParentExpired);
    }
    let exp = iat.saturating_add(seconds(grant.ttl)).min(last.exp);
    let budget = match (last.budget, grant.budget_calls) {
        (None, requested) => requested.map(|calls| Budget { calls }),
        (Some(limit), requested) => {
            let remaining = remaining_calls.unwrap_or(limit.calls).min(limit.calls);
            let calls = requested.unwrap_or(remaining);
            if calls > remaining {
                return Err(ExtendError::BudgetEscalation {
                    requested: calls,
                    remaining,
                });
            }
            Some(Budget { calls })
        }
    };
    let claims = LinkClaims {
        iss: signer.spiffe_id().to_string(),
        aud: delegate,
        sub: last.sub.clone(),
        task: last.task.clone(),
        scope: scopes,
        budget,
        iat,
        exp,
        jti: uuid::Uuid::now_v7().to_string(),
        prev: Some(link_hash(&parent.compact[parent.compact.len() - 1])),
    };
    let link = signer.sign(&claims)?;
    Ok(format!("{}, {link}", parent.header_value()))
}

fn check_scopes(scopes: &[String]) -> Result<(), ExtendError> {
    if scopes.is_empty() {
        return Err(ExtendError::NoScope);
    }
    scopes
        .iter()
        .try_for_each(|s| check_syntax(s).map_err(ExtendError::InvalidScope))
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}
