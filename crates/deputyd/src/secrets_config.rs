//! `[vault]` and each agent's `[[agent.secret]]` and `[[agent.inject]]`: the credentials deputyd
//! obtains from Vault as the agent, and the headers it adds to the agent's calls with them.
//!
//! ```toml
//! [vault]
//! address = "https://vault.example.org:8200"
//! ca_file = "/etc/deputy/vault-ca.pem"   # optional; else the system roots
//! jwt_mount = "jwt"                      # the JWT auth method's mount
//! audience = "vault"                     # the JWT-SVIDs' aud; the roles' bound_audiences
//!
//! [[agent]]
//! name = "triage"
//! vault_role = "triage"                  # default: the agent's name
//! [[agent.secret]]
//! name = "crm"
//! kv = { mount = "secret", path = "agents/triage/crm" }
//! [[agent.secret]]
//! name = "tickets"
//! database = { mount = "database", role = "tickets-readonly" }
//! [[agent.inject]]
//! service = "crm"
//! header = "authorization"
//! value = "Bearer {{ secret.crm.token }}"
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use deputy_proxy::Injection;
use deputy_secrets::template::Template;
use deputy_secrets::{AgentSecrets, SecretSpec, Source, VaultSettings};
use serde::Deserialize;

/// The Vault login and the secrets of every agent.
#[derive(Debug, Clone)]
pub struct SecretsConfig {
    /// Where Vault is.
    pub vault: VaultSettings,
    /// The agents that declare secrets.
    pub agents: Vec<AgentSecrets>,
    /// Credential files rendered for agents.
    pub files: Vec<deputy_secrets::files::FileSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    address: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_jwt_mount")]
    jwt_mount: String,
    #[serde(default = "default_audience")]
    audience: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_jwt_mount() -> String {
    "jwt".into()
}

fn default_audience() -> String {
    "vault".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    name: String,
    #[serde(default)]
    database: Option<RawDatabase>,
    #[serde(default)]
    kv: Option<RawKv>,
    /// A credential of its own for each task, revoked when the task's chain expires.
    #[serde(default)]
    per_task: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default = "default_database_mount")]
    mount: String,
    role: String,
}

fn default_database_mount() -> String {
    "database".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    #[serde(default = "default_kv_mount")]
    mount: String,
    path: String,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    refresh: Duration,
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    path: PathBuf,
    contents: String,
    #[serde(default)]
    uid: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInject {
    service: String,
    header: String,
    value: String,
}

/// Headers an agent may not have deputyd set: the mesh's own and the connection's.
const RESERVED_HEADERS: [&str; 11] = [
    "host",
    "connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// One agent's `[[agent.secret]]`, `[[agent.inject]]` and `[[agent.file]]`, as given.
pub(crate) struct RawAgentSecrets<'a> {
    pub agent: &'a str,
    pub vault_role: Option<&'a str>,
    pub uids: &'a [u32],
    pub secrets: &'a [RawSecret],
    pub inject: &'a [RawInject],
    pub files: &'a [RawFile],
}

/// What one agent's secrets sections give.
#[derive(Default)]
pub(crate) struct AgentSecretsConfig {
    /// Its secrets; `None` when it declares none.
    pub secrets: Option<AgentSecrets>,
    pub injections: Vec<Injection>,
    pub files: Vec<deputy_secrets::files::FileSpec>,
}

/// Validates one agent's secrets, injections and files.
pub(crate) fn validate_agent(
    raw: &RawAgentSecrets<'_>,
    at: &str,
    problems: &mut Vec<String>,
) -> AgentSecretsConfig {
    let RawAgentSecrets {
        agent,
        vault_role,
        uids,
        secrets,
        inject,
        files,
    } = *raw;
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let here = format!("{at}: secret[{i}] ({:?})", secret.name);
        if secret.name.is_empty()
            || !secret
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!(
                "{here}: name must be letters, digits, '-' or '_' (templates say \
                 {{{{ secret.NAME.FIELD }}}})"
            ));
        }
        if !names.insert(secret.name.as_str()) {
            problems.push(format!("{here}: another secret of the agent has this name"));
        }
        let source = match (&secret.database, &secret.kv) {
            (Some(db), None) => Source::Database {
                mount: db.mount.clone(),
                role: db.role.clone(),
            },
            (None, Some(kv)) => {
                if kv.refresh < Duration::from_secs(1) {
                    problems.push(format!("{here}: kv.refresh must be at least 1s"));
                }
                Source::Kv {
                    mount: kv.mount.clone(),
                    path: kv.path.trim_matches('/').to_owned(),
                    refresh: kv.refresh,
                }
            }
            _ => {
                problems.push(format!(
                    "{here}: give exactly one of database = {{ role = \"...\" }} or \
                     kv = {{ path = \"...\" }}"
                ));
                continue;
            }
        };
        let path = source.path();
        if path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "..")
        {
            problems.push(format!(
                "{here}: the Vault path {path:?} has an empty or '..' segment"
            ));
        }
        if secret.per_task && !matches!(source, Source::Database { .. }) {
            problems.push(format!(
                "{here}: per_task applies to database secrets (a lease to revoke when the task \
                 ends); a KV secret is the same for every task"
            ));
        }
        specs.push(SecretSpec {
            name: secret.name.clone(),
            source,
            per_task: secret.per_task,
        });
    }
    let mut injections = Vec::new();
    for (i, injection) in inject.iter().enumerate() {
        let here = format!("{at}: inject[{i}] (service {:?})", injection.service);
        let header = match http::HeaderName::from_bytes(injection.header.as_bytes()) {
            Ok(h)
                if RESERVED_HEADERS.contains(&h.as_str()) || h.as_str().starts_with("deputy-") =>
            {
                problems.push(format!(
                    "{here}: header {h} is the connection's or the mesh's own; inject a header \
                     the service reads, such as authorization"
                ));
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                problems.push(format!(
                    "{here}: {:?} is not a header name",
                    injection.header
                ));
                None
            }
        };
        let value = match Template::parse(&injection.value) {
            Ok(t) => {
                for secret in t.secrets() {
                    if !names.contains(secret) {
                        problems.push(format!(
                            "{here}: the value reads secret {secret:?}, which the agent does not \
                             declare; add an [[agent.secret]] named {secret:?}"
                        ));
                    }
                }
                Some(t)
            }
            Err(e) => {
                problems.push(format!("{here}: value {e}"));
                None
            }
        };
        if let (Some(header), Some(value)) = (header, value) {
            injections.push(Injection {
                service: injection.service.to_ascii_lowercase(),
                header,
                value,
            });
        }
    }
    let mut rendered = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let here = format!("{at}: file[{i}] ({})", file.path.display());
        if !file.path.is_absolute() || file.path.file_name().is_none() {
            problems.push(format!("{here}: path must be an absolute file path"));
        }
        let Some(uid) = file.uid.or_else(|| uids.first().copied()) else {
            problems.push(format!(
                "{here}: the agent has no uids, so the file would have no owner; set uid or \
                 the agent's uids"
            ));
            continue;
        };
        match Template::parse(&file.contents) {
            Ok(contents) => {
                for secret in contents.secrets() {
                    if !names.contains(secret) {
                        problems.push(format!(
                            "{here}: the contents read secret {secret:?}, which the agent does \
                             not declare"
                        ));
                    } else if specs.iter().any(|s| s.name == secret && s.per_task) {
                        problems.push(format!(
                            "{here}: the contents read secret {secret:?}, which is issued per \
                             task; a file belongs to no task (inject it instead)"
                        ));
                    }
                }
                rendered.push(deputy_secrets::files::FileSpec {
                    agent: agent.to_owned(),
                    path: file.path.clone(),
                    contents,
                    owner: (uid, primary_gid(uid)),
                });
            }
            Err(e) => problems.push(format!("{here}: contents {e}")),
        }
    }
    AgentSecretsConfig {
        secrets: (!specs.is_empty()).then(|| AgentSecrets {
            agent: agent.to_owned(),
            role: vault_role.unwrap_or(agent).to_owned(),
            secrets: specs,
        }),
        injections,
        files: rendered,
    }
}

/// The uid's primary group (the uid itself when the user database does not know it).
fn primary_gid(uid: u32) -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid, |u| u.gid.as_raw())
}

/// `[vault]`, checked; `None` (and a problem) when secrets are declared without it.
pub(crate) fn validate_vault(
    raw: Option<&RawVault>,
    agents: Vec<AgentSecrets>,
    files: Vec<deputy_secrets::files::FileSpec>,
    problems: &mut Vec<String>,
) -> Option<SecretsConfig> {
    let Some(raw) = raw else {
        if let Some(agent) = agents.first() {
            problems.push(format!(
                "agent {:?} declares secrets, but there is no [vault] to obtain them from; add \
                 [vault] address = \"https://vault.example.org:8200\"",
                agent.agent
            ));
        }
        return None;
    };
    match raw.address.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => {}
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some_and(is_loopback_host) => {
        }
        Ok(_) => problems.push(format!(
            "vault.address = {:?}: write https://HOST:PORT (plain http only to a Vault on \
             loopback: tokens and credentials cross this connection)",
            raw.address
        )),
        Err(e) => problems.push(format!("vault.address = {:?}: {e}", raw.address)),
    }
    if let Some(ca) = &raw.ca_file
        && !ca.is_file()
    {
        problems.push(format!(
            "vault.ca_file {}: no such file; give the PEM CA certificates of Vault's TLS \
             certificate",
            ca.display()
        ));
    }
    if raw.audience.is_empty() || raw.jwt_mount.is_empty() {
        problems.push("vault.audience and vault.jwt_mount must not be empty".into());
    }
    if raw.timeout.is_zero() {
        problems.push("vault.timeout must be above zero".into());
    }
    Some(SecretsConfig {
        vault: VaultSettings {
            address: raw.address.trim_end_matches('/').to_owned(),
            ca_file: raw.ca_file.clone(),
            jwt_mount: raw.jwt_mount.clone(),
            audience: raw.audience.clone(),
            timeout: raw.timeout,
        },
        agents,
        files,
    })
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
trust_domain = "example.org"
[[service]]
name = "crm"
spiffe_id = "spiffe://example.org/tool/crm"
address = "127.0.0.1:15008"
[[agent]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/triage"
"#;

    #[test]
    fn secrets_and_injections_load() {
        let text = format!(
            "{BASE}[[agent.secret]]\nname = \"crm\"\nkv = {{ path = \"agents/triage/crm\" }}\n\
             [[agent.secret]]\nname = \"db\"\ndatabase = {{ role = \"ro\" }}\n\
             [[agent.inject]]\nservice = \"crm\"\nheader = \"Authorization\"\n\
             value = \"Bearer {{{{ secret.crm.token }}}}\"\n\
             [vault]\naddress = \"http://127.0.0.1:8200\"\n"
        );
        let config = Config::parse(&text, "deputyd.toml").expect("valid");
        let secrets = config.secrets.expect("secrets");
        assert_eq!(secrets.agents[0].role, "triage");
        assert_eq!(secrets.agents[0].secrets.len(), 2);
        assert_eq!(
            secrets.agents[0].secrets[1].source.path(),
            "database/creds/ro"
        );
        let inject = &config.proxy.agents[0].inject;
        assert_eq!(inject[0].header, "authorization");
    }

    #[test]
    fn every_secrets_problem_is_reported() {
        let text = format!(
            "{BASE}[[agent.secret]]\nname = \"crm\"\n\
             [[agent.secret]]\nname = \"a b\"\nkv = {{ path = \"x//y\" }}\n\
             [[agent.inject]]\nservice = \"crm\"\nheader = \"deputy-context\"\n\
             value = \"Bearer {{{{ secret.other.token }}}}\"\n\
             [[agent.inject]]\nservice = \"nowhere\"\nheader = \"x-api-key\"\n\
             value = \"{{{{ secret.crm.key }}}}\"\n\
             [vault]\naddress = \"http://vault.example.org:8200\"\n"
        );
        let message = Config::parse(&text, "deputyd.toml")
            .expect_err("invalid")
            .to_string();
        for expected in [
            "plain http only to a Vault on loopback",
            "give exactly one of database",
            "name must be letters",
            "empty or '..' segment",
            "the connection's or the mesh's own",
            "does not declare",
            "no service \"nowhere\"",
        ] {
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
        let without_vault =
            format!("{BASE}[[agent.secret]]\nname = \"crm\"\nkv = {{ path = \"p\" }}\n");
        let message = Config::parse(&without_vault, "deputyd.toml")
            .expect_err("no vault")
            .to_string();
        assert!(message.contains("no [vault]"), "{message}");
    }
}
