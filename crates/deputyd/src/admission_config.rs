//! Inbound admission without `[policy]`: the `[inbound] allow_peers` list and the
//! `[[originate]]` rules, validated into [`WithoutPolicy`]. With `[policy]` these keys are
//! refused: the policy decides those questions, and two sources of truth would disagree.

use deputy_identity::parse_spiffe_id;
use deputy_proxy::WithoutPolicy;
use serde::Deserialize;
use spiffe::TrustDomain;

/// Without `[policy]`: an agent of another node that may start tasks, and for whom.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOriginate {
    spiffe_id: String,
    principals: Vec<String>,
}

/// A peer pattern names one trust domain: an exact SPIFFE ID, or a path prefix ending in `/*`
/// (a bare `*`, or a prefix that stops inside a trust domain name such as
/// `spiffe://example.org*`, would match other trust domains).
fn check_peer_pattern(pattern: &str) -> Result<(), String> {
    let Some(rest) = pattern.strip_prefix("spiffe://") else {
        return Err("does not start with spiffe://".into());
    };
    match rest.strip_suffix("/*") {
        Some(prefix) if prefix.contains('*') => {
            Err("has a * that is not a whole last path segment".into())
        }
        Some(prefix) if prefix.contains('/') => parse_spiffe_id(&format!("spiffe://{prefix}"))
            .map(drop)
            .map_err(|e| e.to_string()),
        Some(domain) => TrustDomain::new(domain)
            .map(drop)
            .map_err(|e| format!("names no valid trust domain ({e})")),
        None if rest.contains('*') => Err("has a * that is not a whole last path segment".into()),
        None => parse_spiffe_id(pattern)
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// The rules inbound calls are admitted by without `[policy]`; with one, their keys are refused
/// (the policy decides those questions, and two sources of truth would disagree).
pub(crate) fn without_policy(
    allow_peers: Vec<String>,
    originate: &[RawOriginate],
    local: &[deputy_proxy::LocalAgent],
    policy_set: bool,
    problems: &mut Vec<String>,
) -> WithoutPolicy {
    let pattern_problem = |what: &str, pattern: &str| {
        (pattern.is_empty() || pattern.chars().any(char::is_whitespace))
            .then(|| format!("{what} pattern {pattern:?} must be a value or a prefix ending in *"))
    };
    for pattern in &allow_peers {
        if let Err(e) = check_peer_pattern(pattern) {
            problems.push(format!(
                "inbound.allow_peers: {pattern:?} {e}; write a SPIFFE ID \
                 (spiffe://example.org/agent/NAME), or a path prefix ending in /* within one \
                 trust domain (spiffe://example.org/agent/* or spiffe://example.org/*)"
            ));
        }
    }
    let mut rules: Vec<(String, Vec<String>)> = local
        .iter()
        .filter(|a| !a.originate.is_empty())
        .map(|a| (a.spiffe_id.to_string(), a.originate.clone()))
        .collect();
    for (i, rule) in originate.iter().enumerate() {
        let at = format!("originate[{i}] ({:?})", rule.spiffe_id);
        match parse_spiffe_id(&rule.spiffe_id) {
            Ok(id) if local.iter().any(|a| a.spiffe_id == id) => problems.push(format!(
                "{at}: {id} is an agent of this node; list its principals in its [[agent]] \
                 `originate` instead"
            )),
            Ok(id) if rules.iter().any(|(known, _)| *known == id.to_string()) => {
                problems.push(format!("{at}: another [[originate]] names {id}"));
            }
            Ok(id) => rules.push((id.to_string(), rule.principals.clone())),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
        if rule.principals.is_empty() {
            problems.push(format!(
                "{at}: principals is empty; list the principals it may start tasks for, such as \
                 user:*"
            ));
        }
        for pattern in &rule.principals {
            problems.extend(pattern_problem(&at, pattern));
        }
    }
    if policy_set {
        let moved = "which peers may call and which agents may start tasks for whom is the \
                     policy's decision (data.services and data.originate in the shipped policy)";
        for agent in local.iter().filter(|a| !a.originate.is_empty()) {
            problems.push(format!(
                "agent {}: `originate` does not apply when [policy] is set: {moved}; move the \
                 patterns there and remove `originate`",
                agent.name
            ));
        }
        if !originate.is_empty() {
            problems.push(format!(
                "[[originate]] does not apply when [policy] is set: {moved}; move it there"
            ));
        }
        if !allow_peers.is_empty() {
            problems.push(format!(
                "inbound.allow_peers does not apply when [policy] is set: {moved}; remove it"
            ));
        }
    }
    WithoutPolicy {
        allow_peers,
        originate: rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_patterns_stay_within_one_trust_domain() {
        for ok in [
            "spiffe://example.org/agent/alpha",
            "spiffe://example.org/agent/*",
            "spiffe://example.org/*",
        ] {
            assert_eq!(check_peer_pattern(ok), Ok(()), "{ok}");
        }
        for (refused, says) in [
            ("*", "does not start with spiffe://"),
            ("spiffe://*", "not a whole last path segment"),
            ("spiffe:///*", "names no valid trust domain"),
            ("spiffe://example.org*", "not a whole last path segment"),
            ("spiffe://Example.org/agent/*", "upper-case"),
            (
                "spiffe://example.org/agent*",
                "not a whole last path segment",
            ),
            ("example.org/agent/*", "does not start with spiffe://"),
            (
                "spiffe://example.org/a/*/b",
                "not a whole last path segment",
            ),
        ] {
            let error = check_peer_pattern(refused).expect_err(refused);
            assert!(error.contains(says), "{refused}: {error}");
        }
    }
}
