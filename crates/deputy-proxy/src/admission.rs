//! Inbound admission without a policy: a pure decision over the operator's explicit rules.
//!
//! With no `[policy]`, deputyd does not serve any authenticated peer by default (that would make
//! every agent in the trust domain a caller of every other): it serves only peers the operator
//! named in `allow_peers`, and a chain only if its first link was signed by an agent this node
//! knows may start tasks for that principal (`originate` rules), so that an agent holding an SVID
//! cannot sign a first link for anyone it likes and have it accepted where it arrives.

use deputy_delegation::VerifiedChain;
use spiffe::SpiffeId;

use crate::delegation::Refusal;
use crate::problem::ProblemKind;

/// An exact value, or a prefix ending in `*` (`user:*`, `spiffe://example.org/agent/*`).
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

/// The rules inbound calls are admitted by when no policy is configured.
#[derive(Debug, Clone, Default)]
pub struct WithoutPolicy {
    /// Patterns of peer SPIFFE IDs whose calls are served. Empty: no peer is.
    pub allow_peers: Vec<String>,
    /// Which agents may start tasks for which principals: the originator's SPIFFE ID and its
    /// principal patterns (this node's agents' `originate`, and the configured `[[originate]]`).
    pub originate: Vec<(String, Vec<String>)>,
}

impl WithoutPolicy {
    /// Refuses a peer no `allow_peers` pattern names.
    pub(crate) fn check_peer(&self, peer: &SpiffeId) -> Result<(), Refusal> {
        let peer = peer.to_string();
        if self.allow_peers.iter().any(|p| pattern_matches(p, &peer)) {
            return Ok(());
        }
        Err((
            ProblemKind::PeerNotAllowed,
            format!(
                "this node has no [policy], and without one it serves only the peers listed in \
                 [inbound] allow_peers, which does not name {peer}; configure [policy] (the \
                 shipped policy is in policies/authz) or add a pattern matching {peer} to \
                 allow_peers in the receiving deputyd's config"
            ),
        ))
    }

    /// Refuses a chain whose first link was signed by an agent not known to be allowed to start
    /// tasks for its principal.
    pub(crate) fn check_origin(&self, chain: &VerifiedChain) -> Result<(), Refusal> {
        let (originator, principal) = (chain.originator(), chain.principal());
        let Some((_, patterns)) = self.originate.iter().find(|(id, _)| id == originator) else {
            return Err((
                ProblemKind::OriginationRefused,
                format!(
                    "the task was started by {originator} for {principal:?}, and this node knows \
                     no originate rules for {originator}; add [[originate]] spiffe_id = \
                     \"{originator}\" with the principals it may start tasks for to the \
                     receiving deputyd's config (or configure [policy])"
                ),
            ));
        };
        if patterns.iter().any(|p| pattern_matches(p, principal)) {
            return Ok(());
        }
        Err((
            ProblemKind::OriginationRefused,
            format!(
                "the task was started by {originator} for {principal:?}, which its originate \
                 rules on this node do not allow ({patterns:?}): the first link was signed for a \
                 principal that agent may not serve"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> WithoutPolicy {
        WithoutPolicy {
            allow_peers: vec![
                "spiffe://example.org/agent/*".into(),
                "spiffe://partner.org/agent/x".into(),
            ],
            originate: vec![(
                "spiffe://example.org/agent/alpha".into(),
                vec!["user:*".into()],
            )],
        }
    }

    #[test]
    fn only_listed_peers_are_served() {
        let rules = rules();
        for ok in [
            "spiffe://example.org/agent/alpha",
            "spiffe://partner.org/agent/x",
        ] {
            assert!(rules.check_peer(&ok.parse().expect("id")).is_ok(), "{ok}");
        }
        for refused in [
            "spiffe://example.org/deputyd/node1",
            "spiffe://partner.org/agent/xy",
        ] {
            let (kind, detail) = rules
                .check_peer(&refused.parse().expect("id"))
                .expect_err(refused);
            assert_eq!(kind, ProblemKind::PeerNotAllowed);
            assert!(detail.contains("allow_peers"), "{detail}");
        }
        let (_, detail) = WithoutPolicy::default()
            .check_peer(&"spiffe://example.org/agent/alpha".parse().expect("id"))
            .expect_err("no peer is allowed by default");
        assert!(detail.contains("configure [policy]"), "{detail}");
    }

    #[test]
    fn patterns_are_exact_or_prefixes() {
        assert!(pattern_matches("user:*", "user:alice"));
        assert!(pattern_matches("user:alice", "user:alice"));
        assert!(!pattern_matches("user:alice", "user:alice2"));
        assert!(!pattern_matches("user:*", "service:batch"));
    }
}
