//! Credential values, which never print.
//!
//! A value is held in a [`SecretString`], whose `Debug` says only how long it is and which has no
//! `Display`: a credential cannot reach a log line, a `/status` document or an error message by
//! being formatted. Reading it takes an explicit [`SecretString::expose`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// A credential value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it (a header, a login, a file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString(<{} bytes redacted>)", self.0.len())
    }
}

/// One credential as Vault issued it: named fields (`username`, `password`, a KV secret's keys),
/// and the lease that bounds it.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The fields, by name.
    pub fields: BTreeMap<String, SecretString>,
    /// When the credential stops working (the lease's end); `None` for a KV secret, which does
    /// not expire.
    pub expires_at: Option<SystemTime>,
    /// Counts the credentials issued for this secret on this node: a new number is a new
    /// credential (after a re-issue), the same number is the same one renewed.
    pub generation: u64,
}

impl Credential {
    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&SecretString> {
        self.fields.get(name)
    }

    /// Whether the credential still works at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_formats_its_value() {
        let secret = SecretString::new("hunter2-but-longer");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("18 bytes"), "{shown}");
        let credential = Credential {
            fields: BTreeMap::from([("password".to_owned(), secret)]),
            expires_at: None,
            generation: 1,
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
        assert_eq!(
            credential.field("password").map(SecretString::expose),
            Some("hunter2-but-longer")
        );
    }
}
