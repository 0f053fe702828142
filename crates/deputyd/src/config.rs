//! deputyd's configuration file.
//!
//! ```toml
//! trust_domain = "example.org"
//! [identity]
//! workload_api = "unix:///run/spire/agent/public/api.sock"
//! delegated_identity_api = "unix:///run/spire/agent/admin/api.sock"
//! [admin]
//! listen = "127.0.0.1:15000"
//! [[agent]]
//! name = "triage"
//! spiffe_id = "spiffe://example.org/agent/triage"
//! selectors = ["unix:uid:1001"]
//! ```
//!
//! Parsing (serde, unknown keys refused) and validation (SPIFFE IDs, selectors, names) are
//! separate steps; validation collects every problem so that an operator fixes a file in one
//! pass.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use deputy_identity::{AgentIdentity, IdentityManagerConfig, Selector, parse_spiffe_id};
use serde::Deserialize;
use spiffe::TrustDomain;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The trust domain of this node.
    pub trust_domain: TrustDomain,
    /// Where identities come from.
    pub identity: IdentityManagerConfig,
    /// The admin listener.
    pub admin_listen: SocketAddr,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Values that parse but cannot work; every problem is listed.
    #[error("config {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// One line per problem.
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    agent: Vec<RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIdentity {
    workload_api: String,
    delegated_identity_api: String,
    #[serde(with = "humantime_serde")]
    min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    max_backoff: Duration,
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            workload_api: "unix:///run/spire/agent/public/api.sock".into(),
            delegated_identity_api: "unix:///run/spire/agent/admin/api.sock".into(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:15000".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    spiffe_id: String,
    selectors: Vec<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        raw.validate().map_err(|problems| ConfigError::Invalid {
            path: origin.to_owned(),
            problems,
        })
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let trust_domain = deputy_identity::spiffe_id::parse_trust_domain(&self.trust_domain)
            .map_err(|e| problems.push(format!("trust_domain: {e}")))
            .ok();

        for (key, endpoint) in [
            ("identity.workload_api", &self.identity.workload_api),
            (
                "identity.delegated_identity_api",
                &self.identity.delegated_identity_api,
            ),
        ] {
            if !(endpoint.starts_with("unix:///") || endpoint.starts_with("tcp://")) {
                problems.push(format!(
                    "{key} = {endpoint:?}: write a SPIFFE endpoint such as \
                     unix:///run/spire/agent/public/api.sock"
                ));
            }
        }
        if self.identity.min_backoff.is_zero()
            || self.identity.min_backoff > self.identity.max_backoff
        {
            problems.push(
                "identity.min_backoff must be above zero and at most identity.max_backoff".into(),
            );
        }

        let admin_listen = self
            .admin
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| {
                problems.push(format!(
                    "admin.listen = {:?}: {e}; write an address such as 127.0.0.1:15000",
                    self.admin.listen
                ))
            })
            .ok();

        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut agents = Vec::new();
        for (i, agent) in self.agent.iter().enumerate() {
            let at = format!("agent[{i}] ({:?})", agent.name);
            if agent.name.is_empty()
                || !agent
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "{at}: name must be non-empty letters, digits, '-' or '_'"
                ));
            }
            if !names.insert(agent.name.clone()) {
                problems.push(format!("{at}: another agent has the same name"));
            }
            let spiffe_id = match parse_spiffe_id(&agent.spiffe_id) {
                Ok(id) => {
                    if let Some(td) = &trust_domain
                        && id.trust_domain() != td
                    {
                        problems.push(format!(
                            "{at}: {id} is not in this node's trust domain {td}"
                        ));
                    }
                    if !ids.insert(id.to_string()) {
                        problems.push(format!("{at}: another agent has the SPIFFE ID {id}"));
                    }
                    Some(id)
                }
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    None
                }
            };
            if agent.selectors.is_empty() {
                problems.push(format!(
                    "{at}: selectors is empty; give the selectors SPIRE knows the agent by, such \
                     as unix:uid:1001"
                ));
            }
            let selectors: Vec<Selector> = agent
                .selectors
                .iter()
                .filter_map(|s| {
                    s.parse()
                        .map_err(|e| problems.push(format!("{at}: {e}")))
                        .ok()
                })
                .collect();
            if let Some(spiffe_id) = spiffe_id {
                agents.push(AgentIdentity {
                    name: agent.name.clone(),
                    spiffe_id,
                    selectors,
                });
            }
        }

        match (trust_domain, admin_listen) {
            (Some(trust_domain), Some(admin_listen)) if problems.is_empty() => Ok(Config {
                trust_domain,
                identity: IdentityManagerConfig {
                    workload_api: self.identity.workload_api,
                    delegated_identity_api: self.identity.delegated_identity_api,
                    agents,
                    min_backoff: self.identity.min_backoff,
                    max_backoff: self.identity.max_backoff,
                },
                admin_listen,
            }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
trust_domain = "example.org"
[identity]
workload_api = "unix:///run/spire/agent/public/api.sock"
delegated_identity_api = "unix:///run/spire/agent/admin/api.sock"
[admin]
listen = "127.0.0.1:15000"
[[agent]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/triage"
selectors = ["unix:uid:1001"]
"#;

    #[test]
    fn the_documented_example_loads() {
        let config = Config::parse(EXAMPLE, "deputyd.toml").expect("valid");
        assert_eq!(config.identity.agents.len(), 1);
        assert_eq!(config.admin_listen.port(), 15000);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
trust_domain = "example.org"
[identity]
workload_api = "/run/spire/agent/public/api.sock"
[admin]
listen = "localhost"
[[agent]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/triage/"
selectors = []
[[agent]]
name = "triage"
spiffe_id = "spiffe://other.org/agent/x"
selectors = ["uid"]
"#;
        let message = Config::parse(text, "deputyd.toml")
            .expect_err("invalid")
            .to_string();
        for expected in [
            "identity.workload_api",
            "admin.listen",
            "trailing slash",
            "selectors is empty",
            "another agent has the same name",
            "not in this node's trust domain",
            "invalid selector \"uid\"",
        ] {
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = format!("{EXAMPLE}\n[admin2]\nlisten = \"x\"\n");
        let message = Config::parse(&text, "deputyd.toml")
            .expect_err("unknown table")
            .to_string();
        assert!(message.contains("unknown field `admin2`"), "{message}");
        assert!(message.contains("line"), "{message}");
    }
}

#[cfg(test)]
mod shipped_examples {
    use super::*;

    #[test]
    fn the_shipped_example_config_loads() {
        let text = include_str!("../../../examples/deputyd.toml");
        let config = Config::parse(text, "examples/deputyd.toml").expect("example is valid");
        assert_eq!(config.identity.agents.len(), 2);
    }
}
