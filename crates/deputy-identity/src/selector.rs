//! Workload selectors (`unix:uid:1001`, `systemd:id:triage.service`), written as SPIRE writes
//! them: the first `:` separates the selector type from its value.

use std::fmt;
use std::str::FromStr;

/// A selector: a fact an attestor established about a workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// The attestor that produces it: `unix`, `systemd`, `k8s`, ...
    pub kind: String,
    /// The fact, for example `uid:1001`.
    pub value: String,
}

/// A selector that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid selector {0:?}: write TYPE:VALUE, for example unix:uid:1001 or systemd:id:triage.service"
)]
pub struct SelectorError(pub String);

impl Selector {
    /// Builds a selector from its two parts.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((kind, value))
                if !kind.is_empty()
                    && !value.is_empty()
                    && kind
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    && !value.chars().any(char::is_whitespace) =>
            {
                Ok(Self::new(kind, value))
            }
            _ => Err(SelectorError(s.to_owned())),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl From<&Selector> for spire_api::selectors::Selector {
    fn from(s: &Selector) -> Self {
        Self::Generic((s.kind.clone(), s.value.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_colon_separates_type_and_value() {
        let s: Selector = "unix:uid:1001".parse().expect("valid");
        assert_eq!(s.kind, "unix");
        assert_eq!(s.value, "uid:1001");
        assert_eq!(s.to_string(), "unix:uid:1001");
    }

    #[test]
    fn refuses_selectors_without_type_or_value() {
        for bad in ["", "unix", "unix:", ":uid:1", "un ix:uid:1", "unix:uid 1"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?}");
        }
    }
}
