//! The secrets' metrics: counts and expiries, never a value.

use std::time::SystemTime;

/// Credentials issued (a new lease or a KV read), by agent and secret.
pub const ISSUED: &str = "deputy_secret_issued_total";
/// Lease renewals, by agent and secret.
pub const RENEWALS: &str = "deputy_secret_renewals_total";
/// Failed attempts to issue or renew, by agent and secret.
pub const FAILURES: &str = "deputy_secret_failures_total";
/// Failed Vault logins, by agent.
pub const LOGIN_FAILURES: &str = "deputy_vault_login_failures_total";
/// 1 while the agent holds a working credential for the secret.
pub const AVAILABLE: &str = "deputy_secret_available";
/// When the current credential expires, in Unix seconds (0: it does not).
pub const EXPIRY: &str = "deputy_secret_expiry_seconds";

pub(crate) fn availability(agent: &str, secret: &str, available: bool) {
    metrics::gauge!(AVAILABLE, "agent" => agent.to_owned(), "secret" => secret.to_owned())
        .set(if available { 1.0 } else { 0.0 });
}

pub(crate) fn expiry(agent: &str, secret: &str, at: Option<SystemTime>) {
    let seconds = at
        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(EXPIRY, "agent" => agent.to_owned(), "secret" => secret.to_owned())
        .set(seconds);
}
