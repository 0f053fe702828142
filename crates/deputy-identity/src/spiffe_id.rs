//! SPIFFE ID validation with errors that say how to fix the ID.
//!
//! The grammar itself is the `spiffe` crate's (the SPIFFE-ID specification); this module only
//! adds the explanation an operator needs when a config file or entries file holds a bad ID.

use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// A string that is not a valid workload SPIFFE ID.
#[derive(Debug, thiserror::Error)]
#[error("invalid SPIFFE ID {id:?}: {reason}")]
pub struct InvalidSpiffeId {
    /// The rejected input, as written.
    pub id: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// Parses a workload SPIFFE ID (`spiffe://trust-domain/path`), refusing everything the SPIFFE-ID
/// specification refuses, and also an ID without a path: a workload identity always has one.
pub fn parse_spiffe_id(id: &str) -> Result<SpiffeId, InvalidSpiffeId> {
    let invalid = |reason: String| InvalidSpiffeId {
        id: id.to_owned(),
        reason,
    };
    if let Some(query_at) = id.find(['?', '#']) {
        return Err(invalid(format!(
            "a SPIFFE ID has no query or fragment; remove everything from {:?}",
            &id[query_at..]
        )));
    }
    // The `spiffe` crate lower-cases trust domains; the specification says they are lower case,
    // so an upper-case one is a mistake worth reporting rather than silently rewriting.
    if let Some(rest) = id.strip_prefix("spiffe://") {
        let td = rest.split('/').next().unwrap_or_default();
        if td.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(upper_case(td)));
        }
    }
    let parsed = SpiffeId::new(id).map_err(|e| invalid(explain(&e, id)))?;
    if parsed.path().is_empty() {
        return Err(invalid(
            "a workload SPIFFE ID needs a path after the trust domain, \
             for example spiffe://example.org/agent/triage"
                .to_owned(),
        ));
    }
    Ok(parsed)
}

/// Parses a trust domain name (`example.org`), with the same explanations.
pub fn parse_trust_domain(name: &str) -> Result<TrustDomain, InvalidSpiffeId> {
    if name.contains("://") {
        return Err(InvalidSpiffeId {
            id: name.to_owned(),
            reason: "give the trust domain as a bare name such as example.org, not a URI".into(),
        });
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(InvalidSpiffeId {
            id: name.to_owned(),
            reason: upper_case(name),
        });
    }
    TrustDomain::new(name).map_err(|e| InvalidSpiffeId {
        id: name.to_owned(),
        reason: explain(&e, name),
    })
}

fn upper_case(td: &str) -> String {
    format!(
        "the trust domain {td:?} has upper-case letters; trust domains are lower case (use {:?})",
        td.to_ascii_lowercase()
    )
}

fn explain(error: &SpiffeIdError, id: &str) -> String {
    match error {
        SpiffeIdError::Empty => "the ID is empty".into(),
        SpiffeIdError::WrongScheme => {
            "a SPIFFE ID starts with the lower-case scheme spiffe://".into()
        }
        SpiffeIdError::MissingTrustDomain => {
            "the trust domain is missing: write spiffe://example.org/path".into()
        }
        SpiffeIdError::BadTrustDomainChar => {
            let td = id
                .strip_prefix("spiffe://")
                .unwrap_or(id)
                .split('/')
                .next()
                .unwrap_or_default();
            format!(
                "the trust domain {td:?} may only hold lower-case letters, digits, '.', '-' and '_'"
            )
        }
        SpiffeIdError::EmptySegment => {
            "the path has an empty segment ('//'); remove the extra slash".into()
        }
        SpiffeIdError::TrailingSlash => "the path ends with '/'; remove the trailing slash".into(),
        SpiffeIdError::DotSegment => {
            "the path has a '.' or '..' segment; SPIFFE IDs are never relative".into()
        }
        SpiffeIdError::BadPathSegmentChar => {
            "the path may only hold letters, digits, '.', '-', '_' and '/' separators".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_workload_id() {
        let id = parse_spiffe_id("spiffe://example.org/agent/triage").expect("valid");
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/agent/triage");
    }

    #[test]
    fn refuses_each_kind_of_bad_id_with_its_own_reason() {
        let cases = [
            ("spiffe://Example.org/a", "upper-case"),
            ("spiffe://example.org/a/", "trailing slash"),
            ("spiffe://example.org/a?x=1", "query"),
            ("spiffe://example.org/a/../b", "'..'"),
            ("spiffe://example.org/./b", "'.'"),
            ("https://example.org/a", "scheme"),
            ("spiffe://example.org", "needs a path"),
            ("spiffe://example.org//a", "empty segment"),
            ("spiffe:///a", "trust domain is missing"),
            ("", "empty"),
        ];
        for (input, expected) in cases {
            let err = parse_spiffe_id(input).expect_err(input);
            let message = err.to_string();
            assert!(
                message.contains(expected),
                "{input:?}: {message:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn trust_domains_are_bare_lower_case_names() {
        assert!(parse_trust_domain("example.org").is_ok());
        assert!(parse_trust_domain("Example.org").is_err());
        assert!(parse_trust_domain("spiffe://example.org").is_err());
    }
}
