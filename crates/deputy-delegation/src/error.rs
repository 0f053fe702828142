//! Every way a chain can fail, each with its own stable code: an agent or operator reading a
//! refusal learns which rule was broken.

/// A chain that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The header exceeds the configured size.
    #[error("the delegation header is {size} bytes, over the limit of {limit}")]
    HeaderTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// More links than the configured depth.
    #[error("the chain has {depth} links, over the limit of {limit}")]
    TooDeep {
        /// Its depth.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// A link is not a well-formed compact JWS with the expected header and claims.
    #[error("link {index} is malformed: {reason}")]
    Malformed {
        /// Position in the chain, 0 for the first link.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The `x5c` chain is not a valid X.509-SVID of a trusted trust domain.
    #[error("link {index}: its x5c certificate chain is not trusted: {reason}")]
    UntrustedSigner {
        /// Position.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The `x5c` leaf names another SPIFFE ID than `iss`.
    #[error("link {index} claims iss {iss} but is signed by the SVID of {signer}")]
    IssuerMismatch {
        /// Position.
        index: usize,
        /// The claimed issuer.
        iss: String,
        /// The SVID's SPIFFE ID.
        signer: String,
    },
    /// The signature does not verify with the `x5c` leaf's key.
    #[error(
        "link {index}: the signature does not verify with its x5c leaf's key (tampered, or signed by another key)"
    )]
    BadSignature {
        /// Position.
        index: usize,
    },
    /// `prev` does not hash the previous link (links swapped, removed or inserted).
    #[error("link {index}: prev does not match the hash of link {}", index.wrapping_sub(1))]
    BrokenPrev {
        /// Position.
        index: usize,
    },
    /// A link's `aud` is not the next link's `iss`.
    #[error("link {index} is issued by {iss}, but the link before it delegated to {expected}")]
    AudienceMismatch {
        /// Position.
        index: usize,
        /// The `iss` found.
        iss: String,
        /// The previous link's `aud`.
        expected: String,
    },
    /// `sub` differs from the first link's.
    #[error("link {index} changes the principal from {expected} to {found}")]
    PrincipalChanged {
        /// Position.
        index: usize,
        /// The first link's principal.
        expected: String,
        /// This link's.
        found: String,
    },
    /// `task` differs from the first link's.
    #[error("link {index} changes the task from {expected} to {found}")]
    TaskChanged {
        /// Position.
        index: usize,
        /// The first link's task.
        expected: String,
        /// This link's.
        found: String,
    },
    /// A scope of a link is not covered by the previous link's scopes.
    #[error("link {index} widens the scope: {scope} is not covered by the link before it")]
    ScopeEscalation {
        /// Position.
        index: usize,
        /// The uncovered scope.
        scope: String,
    },
    /// `exp` grows along the chain.
    #[error("link {index} expires later than the link before it")]
    ExpiryWidened {
        /// Position.
        index: usize,
    },
    /// `budget` grows (or appears after being limited) along the chain.
    #[error("link {index} grants a larger budget than the link before it")]
    BudgetWidened {
        /// Position.
        index: usize,
    },
    /// A link has expired.
    #[error(
        "link {index} expired {seconds_ago}s ago by the verifying node's clock: start a new task \
         or ask the caller for a fresh chain (if the link was just made, the clocks of the node \
         that signed it and the verifying node differ: compare `now` in their /status)"
    )]
    Expired {
        /// Position.
        index: usize,
        /// How long ago.
        seconds_ago: i64,
    },
    /// A link is issued in the future (beyond the skew tolerance).
    #[error(
        "link {index} is issued {seconds_ahead}s in the future by the verifying node's clock: \
         the clocks of the node that signed it and the verifying node differ by more than the \
         clock skew allowed; compare `now` in their /status and check their time \
         synchronization"
    )]
    IssuedInFuture {
        /// Position.
        index: usize,
        /// How far ahead.
        seconds_ahead: i64,
    },
    /// A SPIFFE ID signs twice.
    #[error("link {index}: {iss} already signed an earlier link (a delegation cycle)")]
    Cycle {
        /// Position.
        index: usize,
        /// The repeated issuer.
        iss: String,
    },
    /// The last link is not issued by the mTLS peer: a captured chain replayed by another agent.
    #[error("the chain's last link is issued by {iss}, but the caller is {peer}")]
    PeerMismatch {
        /// The last link's issuer.
        iss: String,
        /// The authenticated peer.
        peer: String,
    },
    /// The last link delegates to another agent than the one being called.
    #[error("the chain delegates to {aud}, not to {local}, the agent being called")]
    NotForThisAgent {
        /// The last link's audience.
        aud: String,
        /// The local agent.
        local: String,
    },
}

impl ChainError {
    /// A stable, machine-readable code for the rule that failed.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HeaderTooLarge { .. } => "header_too_large",
            Self::TooDeep { .. } => "too_deep",
            Self::Malformed { .. } => "malformed",
            Self::UntrustedSigner { .. } => "untrusted_signer",
            Self::IssuerMismatch { .. } => "issuer_mismatch",
            Self::BadSignature { .. } => "bad_signature",
            Self::BrokenPrev { .. } => "broken_prev",
            Self::AudienceMismatch { .. } => "audience_mismatch",
            Self::PrincipalChanged { .. } => "principal_changed",
            Self::TaskChanged { .. } => "task_changed",
            Self::ScopeEscalation { .. } => "scope_escalation",
            Self::ExpiryWidened { .. } => "expiry_widened",
            Self::BudgetWidened { .. } => "budget_widened",
            Self::Expired { .. } => "expired",
            Self::IssuedInFuture { .. } => "issued_in_future",
            Self::Cycle { .. } => "cycle",
            Self::PeerMismatch { .. } => "peer_mismatch",
            Self::NotForThisAgent { .. } => "not_for_this_agent",
        }
    }
}
