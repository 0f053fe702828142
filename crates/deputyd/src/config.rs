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
//! ```
//!
//! Parsing (serde, unknown keys refused) and validation (SPIFFE IDs, selectors, names) are
//! separate steps; validation collects every problem so that an operator fixes a file in one
//! pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deputy_delegation::VerifyOptions;
use deputy_identity::IdentityManagerConfig;
use deputy_proxy::{Delegation, ProxyConfig, Timeouts};
use serde::Deserialize;
use spiffe::TrustDomain;

use crate::admission_config::{RawOriginate, without_policy};
use crate::agent_config::{Agents, RawAgent, validate_agents};
use crate::policy_config::{PolicySettings, RawPolicy};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The trust domain of this node.
    pub trust_domain: TrustDomain,
    /// Where identities come from.
    pub identity: IdentityManagerConfig,
    /// The admin listener.
    pub admin_listen: SocketAddr,
    /// The data path (its policy is loaded by the daemon from `policy`).
    pub proxy: ProxyConfig,
    /// The policy every call is decided by, if `[policy]` is set.
    pub policy: Option<PolicySettings>,
    /// Agents registered under selectors an attestor emits, by their operator's choice
    /// (`workload_api_may_serve_key`): processes they describe can hold the agent's key.
    pub keys_exposed: Vec<String>,
    /// Where deputyd keeps what must outlive a restart (budget counts).
    pub state_dir: PathBuf,
    /// Vault and the agents' secrets, if `[vault]` is set.
    pub secrets: Option<crate::secrets_config::SecretsConfig>,
    /// The agents' PostgreSQL auth proxies.
    pub postgres: Vec<deputy_pgproxy::PgProxyConfig>,
    /// Calls held for approval, and the operator socket.
    pub approvals: crate::approvals_config::ApprovalsConfig,
    /// The audit trail.
    pub audit: crate::audit_config::AuditConfig,
    /// deputyd's own sandbox.
    pub sandbox: SandboxSettings,
    /// Files the configuration names and deputyd reads (CA files), besides the policy.
    pub reads: Vec<PathBuf>,
}

/// `[sandbox]`: whether deputyd restricts its own file access with Landlock (on by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Restrict file access with Landlock where the kernel has it.
    pub landlock: bool,
    /// For tests: a file deputyd tries to read once inside the sandbox; `/status` says whether
    /// it could (`sandbox.probe`).
    pub probe: Option<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            landlock: true,
            probe: None,
        }
    }
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
    inbound: Option<RawInbound>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: crate::limits_config::RawLimits,
    #[serde(default)]
    delegation: RawDelegation,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    vault: Option<crate::secrets_config::RawVault>,
    #[serde(default)]
    agent: Vec<RawAgent>,
    #[serde(default)]
    service: Vec<crate::services_config::RawService>,
    #[serde(default)]
    external: Vec<crate::services_config::RawExternal>,
    #[serde(default)]
    originate: Vec<RawOriginate>,
    #[serde(default)]
    approvals: crate::approvals_config::RawApprovals,
    #[serde(default)]
    audit: crate::audit_config::RawAudit,
    #[serde(default)]
    sandbox: SandboxSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: String,
    /// Without `[policy]`: the peers whose calls are served.
    #[serde(default)]
    allow_peers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    #[serde(with = "humantime_serde")]
    connect: Duration,
    #[serde(with = "humantime_serde")]
    request: Duration,
    #[serde(with = "humantime_serde")]
    idle: Duration,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        let t = Timeouts::default();
        Self {
            connect: t.connect,
            request: t.request,
            idle: t.idle,
        }
    }
}

/// The most entries `[delegation] max_contexts` and `max_relayed_tasks` may ask for: each
/// table's index is reserved whole at start.
const MAX_TABLE: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelegation {
    max_depth: usize,
    max_header_bytes: usize,
    #[serde(with = "humantime_serde")]
    clock_skew: Duration,
    max_contexts: usize,
    max_budgeted_links: usize,
    max_relayed_tasks: usize,
}

impl Default for RawDelegation {
    fn default() -> Self {
        let d = Delegation::default();
        Self {
            max_depth: d.verify.max_depth,
            max_header_bytes: d.verify.max_header_bytes,
            clock_skew: d.verify.skew,
            max_contexts: d.max_contexts,
            max_budgeted_links: d.max_budgeted_links,
            max_relayed_tasks: d.max_relayed_tasks,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "default_state_dir")]
    dir: PathBuf,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/deputy")
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

        let Agents {
            identities: agents,
            local,
            keys_exposed,
            secrets,
            postgres,
            files,
        } = validate_agents(&self.agent, trust_domain.as_ref(), &mut problems);
        let secrets = crate::secrets_config::validate_vault(
            self.vault.as_ref(),
            secrets,
            files,
            &mut problems,
        );

        let services = crate::services_config::validate_services(
            &self.service,
            &self.external,
            &local,
            self.policy.is_some(),
            &mut problems,
        );

        let inbound = self.inbound.as_ref().and_then(|inbound| {
            inbound
                .listen
                .parse::<SocketAddr>()
                .map_err(|e| {
                    problems.push(format!(
                        "inbound.listen = {:?}: {e}; write an address such as 0.0.0.0:15008",
                        inbound.listen
                    ))
                })
                .ok()
        });
        if self.timeouts.connect.is_zero()
            || self.timeouts.request.is_zero()
            || self.timeouts.idle.is_zero()
        {
            problems.push("timeouts must all be above zero".into());
        }
        let delegation = &self.delegation;
        if delegation.max_depth == 0
            || delegation.max_header_bytes == 0
            || delegation.max_contexts == 0
            || delegation.max_budgeted_links == 0
            || delegation.max_relayed_tasks == 0
        {
            problems.push(
                "delegation.max_depth, max_header_bytes, max_contexts, max_budgeted_links and \
                 max_relayed_tasks must be above zero"
                    .into(),
            );
        }
        for (name, value) in [
            ("max_contexts", delegation.max_contexts),
            ("max_relayed_tasks", delegation.max_relayed_tasks),
        ] {
            if value > MAX_TABLE {
                problems.push(format!(
                    "delegation.{name} = {value} is more than {MAX_TABLE} (its table is reserved \
                     whole when deputyd starts); lower it"
                ));
            }
        }
        if !self.state.dir.is_absolute() {
            problems.push(format!(
                "state.dir {:?} must be an absolute path, such as /var/lib/deputy",
                self.state.dir
            ));
        }
        if delegation.clock_skew > Duration::from_secs(300) {
            problems.push(format!(
                "delegation.clock_skew = {:?} would accept links long expired; keep it at most 5m \
                 and fix the clocks (NTP) instead",
                delegation.clock_skew
            ));
        }

        let policy_set = self.policy.is_some();
        let policy = self.policy.and_then(|p| p.validate(&mut problems));
        let limits = self
            .limits
            .validate(policy.as_ref().map(|p| p.peek_bytes), &mut problems);
        let allow_peers = self
            .inbound
            .as_ref()
            .map(|i| i.allow_peers.clone())
            .unwrap_or_default();
        let without_policy = without_policy(
            allow_peers,
            &self.originate,
            &local,
            policy_set,
            &mut problems,
        );
        let reads = crate::services_config::ca_files(&self.external);
        let approvals = self.approvals.validate(&mut problems);
        let audit = self.audit.validate(&self.state.dir, &mut problems);

        match (trust_domain, admin_listen) {
            (Some(trust_domain), Some(admin_listen)) if problems.is_empty() => Ok(Config {
                trust_domain: trust_domain.clone(),
                state_dir: self.state.dir,
                keys_exposed,
                identity: IdentityManagerConfig {
                    jwks_of: secrets.as_ref().map(|_| trust_domain.clone()),
                    workload_api: self.identity.workload_api,
                    delegated_identity_api: self.identity.delegated_identity_api,
                    agents,
                    min_backoff: self.identity.min_backoff,
                    max_backoff: self.identity.max_backoff,
                },
                admin_listen,
                proxy: ProxyConfig {
                    inbound,
                    agents: local,
                    services,
                    timeouts: Timeouts {
                        connect: self.timeouts.connect,
                        request: self.timeouts.request,
                        idle: self.timeouts.idle,
                    },
                    limits,
                    delegation: Delegation {
                        verify: VerifyOptions {
                            skew: delegation.clock_skew,
                            max_depth: delegation.max_depth,
                            max_header_bytes: delegation.max_header_bytes,
                            ..VerifyOptions::default()
                        },
                        max_contexts: delegation.max_contexts,
                        max_budgeted_links: delegation.max_budgeted_links,
                        max_relayed_tasks: delegation.max_relayed_tasks,
                    },
                    policy: None,
                    without_policy,
                    credentials: deputy_secrets::CredentialStore::new(
                        secrets.as_ref().map_or(&[][..], |s| &s.agents),
                    ),
                    task_secrets: None,
                    approvals: None,
                    approval_ttl: approvals.ttl,
                    approval_webhook: None,
                    idempotency: None,
                    revocations: None,
                    audit: None,
                },
                policy,
                secrets,
                postgres,
                approvals,
                audit,
                sandbox: self.sandbox,
                reads,
            }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deputy_proxy::ListenAddr;

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
"#;

    #[test]
    fn data_path_settings_are_validated_together() {
        let text = r#"
trust_domain = "example.org"
[inbound]
listen = "0.0.0.0:15008"
[[agent]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/triage"
outbound = "0.0.0.0:15001"
upstream = "https://127.0.0.1:8081"
[delegation]
max_depth = 0
clock_skew = "1h"
max_contexts = 3000000
max_relayed_tasks = 2000000
[[agent]]
name = "ops"
spiffe_id = "spiffe://example.org/agent/ops"
outbound = "unix://relative.sock"
[[service]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/other"
address = "10.0.0.7"
"#;
        let message = Config::parse(text, "deputyd.toml")
            .expect_err("invalid")
            .to_string();
        for expected in [
            "must be on loopback",
            "uids is empty",
            "write http://HOST:PORT",
            "absolute socket path",
            "needs a port",
            "a local agent has this name",
            "max_contexts, max_budgeted_links and max_relayed_tasks must be above zero",
            "max_relayed_tasks = 2000000 is more than 1048576",
            "max_contexts = 3000000 is more than 1048576",
            "fix the clocks",
        ] {
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
    }

    #[test]
    fn a_full_data_path_config_loads() {
        let text = r#"
trust_domain = "example.org"
[inbound]
listen = "0.0.0.0:15008"
[timeouts]
request = "10s"
[delegation]
max_depth = 4
clock_skew = "10s"
max_contexts = 1000
max_relayed_tasks = 512
[[agent]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/triage"
outbound = "unix:///run/deputy/triage.sock"
upstream = "http://127.0.0.1:8081"
uids = [1001]
[[service]]
name = "billing"
spiffe_id = "spiffe://example.org/agent/billing"
address = "10.0.0.7:15008"
"#;
        let config = Config::parse(text, "deputyd.toml").expect("valid");
        assert_eq!(config.proxy.services.len(), 1);
        assert_eq!(config.proxy.timeouts.request, Duration::from_secs(10));
        let delegation = config.proxy.delegation;
        assert_eq!(delegation.verify.max_depth, 4);
        assert_eq!(delegation.verify.skew, Duration::from_secs(10));
        assert_eq!(
            delegation.verify.max_header_bytes,
            16 * 1024,
            "default kept"
        );
        assert_eq!(delegation.max_contexts, 1000);
        assert_eq!(delegation.max_relayed_tasks, 512);
        assert_eq!(
            config.proxy.agents[0].outbound,
            Some(ListenAddr::Unix("/run/deputy/triage.sock".into()))
        );
    }

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
