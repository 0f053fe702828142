//! What `/status` says about an agent's Vault login and secrets: states, expiries and Vault's
//! reasons, never a value.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// One agent's secrets, as `/status` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSecretsStatus {
    /// The agent.
    pub agent: String,
    /// The Vault role it logs in as.
    pub role: String,
    /// Its login.
    pub login: LoginStatus,
    /// Each secret.
    pub secrets: Vec<SecretStatus>,
}

/// The agent's Vault token.
#[derive(Debug, Clone, Serialize)]
pub struct LoginStatus {
    /// `pending` (never logged in), `logged_in`, or `failed` (the last attempt was refused or
    /// Vault did not answer; see `last_error`).
    pub state: &'static str,
    /// Logins so far (each SVID rotation, refusal or max TTL logs in again).
    pub logins: u64,
    /// When the current token expires, RFC 3339.
    pub token_expires_at: Option<String>,
    /// Why the last login failed, with Vault's reason.
    pub last_error: Option<String>,
}

/// One secret.
#[derive(Debug, Clone, Serialize)]
pub struct SecretStatus {
    /// Its name.
    pub name: String,
    /// `database` or `kv`.
    pub kind: &'static str,
    /// The Vault path it comes from.
    pub path: String,
    /// `pending` (none yet), `available`, or `unavailable` (the last one expired or was revoked
    /// and none replaced it: calls that need it are refused).
    pub state: &'static str,
    /// Counts credentials issued (a new number: a new credential).
    pub generation: u64,
    /// Renewals of the current lease.
    pub renewals: u64,
    /// When the current credential expires, RFC 3339 (`null` for KV).
    pub expires_at: Option<String>,
    /// Why the last attempt failed, if it did (kept until one succeeds).
    pub last_error: Option<String>,
}

/// RFC 3339 of a system time.
pub(crate) fn rfc3339(at: SystemTime) -> Option<String> {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let at = time::OffsetDateTime::UNIX_EPOCH + since;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A system time `in_` from now.
pub(crate) fn from_now(in_: Duration) -> SystemTime {
    SystemTime::now() + in_
}
