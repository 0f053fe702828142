//! The `[approvals]` section: calls the policy allows only once a human approves them, and the
//! operator socket where approvals are decided.
//!
//! ```toml
//! [approvals]
//! socket = "/run/deputy/operator.sock"   # the operator API; off without it
//! operators = [0]                        # uids that may list, approve and deny (default: root)
//! ttl = "15m"                            # an approval is decided and redeemed within this
//! max_pending = 1000                     # past it, new approvals are refused until some are decided
//! webhook = "https://hooks.example.org/T/deputy"  # a JSON POST when an approval is pending
//! ```
//!
//! The operator API is a unix socket checked by the caller's uid (SO_PEERCRED), never the admin
//! listener: anyone who reaches loopback reaches that one.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawApprovals {
    socket: Option<PathBuf>,
    operators: Vec<u32>,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    max_pending: usize,
    webhook: Option<String>,
}

impl Default for RawApprovals {
    fn default() -> Self {
        Self {
            socket: None,
            operators: vec![0],
            ttl: Duration::from_secs(15 * 60),
            max_pending: 1000,
            webhook: None,
        }
    }
}

/// Approvals, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// The operator socket, if any (without one, approvals are asked for and cannot be decided,
    /// which `/status` and the refusal say).
    pub socket: Option<PathBuf>,
    /// The uids that may decide.
    pub operators: Vec<u32>,
    /// How long an approval lives.
    pub ttl: Duration,
    /// The most approvals pending at once.
    pub max_pending: usize,
    /// Where a pending approval is announced (https, or http to loopback).
    pub webhook: Option<http::Uri>,
}

impl RawApprovals {
    pub(crate) fn validate(&self, problems: &mut Vec<String>) -> ApprovalsConfig {
        if self
            .socket
            .as_ref()
            .is_some_and(|s| !s.is_absolute() || s.file_name().is_none())
        {
            problems.push("[approvals] socket must be an absolute file path".into());
        }
        if self.socket.is_some() && self.operators.is_empty() {
            problems.push(
                "[approvals] operators is empty, so nobody could decide an approval; list the \
                 uids of the people (or their tools) who may"
                    .into(),
            );
        }
        if self.ttl < Duration::from_secs(10) || self.ttl > Duration::from_secs(7 * 24 * 3600) {
            problems.push("[approvals] ttl must be between 10s and 7d".into());
        }
        if self.max_pending == 0 {
            problems.push("[approvals] max_pending must be at least 1".into());
        }
        let webhook = self.webhook.as_deref().and_then(|url| {
            let why = match url.parse::<http::Uri>() {
                Err(e) => Err(format!("is not a URL ({e})")),
                Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
                    Err("holds a user name or password, which is not sent".to_owned())
                }
                Ok(uri) => match (uri.scheme_str(), uri.host()) {
                    (Some("https"), Some(_)) => Ok(uri),
                    (Some("http"), Some(host)) if is_loopback(host) => Ok(uri),
                    (Some("http"), Some(_)) => Err(
                        "is plain http off loopback; a pending call's facts would cross the \
                         network in the clear: use https"
                            .to_owned(),
                    ),
                    _ => Err("needs https:// and a host".to_owned()),
                },
            };
            // The URL itself is not repeated: chat webhooks carry their secret in it.
            why.map_err(|why| problems.push(format!("[approvals] webhook {why}")))
                .ok()
        });
        ApprovalsConfig {
            webhook,
            socket: self.socket.clone(),
            operators: self.operators.clone(),
            ttl: self.ttl,
            max_pending: self.max_pending.max(1),
        }
    }
}

/// 127.0.0.0/8 or ::1, written as an address (a name could resolve elsewhere).
fn is_loopback(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str) -> Vec<String> {
        let raw = RawApprovals {
            webhook: Some(url.to_owned()),
            ..RawApprovals::default()
        };
        let mut problems = Vec::new();
        raw.validate(&mut problems);
        problems
    }

    #[test]
    fn a_webhook_is_https_or_loopback_and_never_repeated_in_an_error() {
        assert!(webhook("https://hooks.example.org/T0/secret").is_empty());
        assert!(webhook("http://127.0.0.1:9000/hook").is_empty());
        assert!(webhook("http://[::1]:9000/hook").is_empty());
        for (url, why) in [
            (
                "http://hooks.example.org/T0/secret",
                "plain http off loopback",
            ),
            ("http://localhost/hook", "plain http off loopback"),
            (
                "https://user:pw@hooks.example.org/x",
                "user name or password",
            ),
            ("ftp://hooks.example.org/x", "needs https"),
        ] {
            let problems = webhook(url);
            assert!(
                problems.iter().any(|p| p.contains(why)),
                "{url}: {problems:?}"
            );
            assert!(
                !problems
                    .iter()
                    .any(|p| p.contains("secret") || p.contains(":pw")),
                "{problems:?}"
            );
        }
    }
}
