//! The `[[agent]]` sections of deputyd's config: the agents this node fronts.
//!
//! An agent is registered with its identity source under `deputy:agent:NAME`, a selector no
//! workload attestor emits: only deputyd presents it, on the Delegated Identity API, so no
//! process on the node (not even one running as the agent's uid) can fetch the agent's SVID
//! and key and go around deputyd. Selectors an attestor does emit (`unix:uid:1001`) are
//! refused here for that reason.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use deputy_identity::{AgentIdentity, Selector, parse_spiffe_id};
use deputy_proxy::{ListenAddr, LocalAgent};
use serde::Deserialize;
use spiffe::TrustDomain;

/// The selector type only deputyd presents.
pub const AGENT_SELECTOR_TYPE: &str = "deputy";

/// The selector an agent is registered under by default: `deputy:agent:NAME`.
pub fn agent_selector(name: &str) -> Selector {
    Selector::new(AGENT_SELECTOR_TYPE, format!("agent:{name}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    name: String,
    spiffe_id: String,
    #[serde(default)]
    selectors: Option<Vec<String>>,
    #[serde(default)]
    outbound: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    originate: Vec<String>,
    #[serde(default)]
    mcp: bool,
    /// The tool arguments (JSON pointers) the policy may read; MCP services only.
    #[serde(default)]
    arguments: Vec<String>,
    #[serde(default)]
    a2a: bool,
    /// Accepts `selectors` a workload attestor emits, knowing that any process they describe
    /// can fetch the agent's SVID and key from the Workload API and go around deputyd.
    #[serde(default)]
    workload_api_may_serve_key: bool,
    /// The Vault role it logs in as (default: its name).
    #[serde(default)]
    vault_role: Option<String>,
    #[serde(default)]
    secret: Vec<crate::secrets_config::RawSecret>,
    #[serde(default)]
    inject: Vec<crate::secrets_config::RawInject>,
    #[serde(default)]
    postgres: Vec<crate::pgproxy_config::RawPostgres>,
    #[serde(default)]
    file: Vec<crate::secrets_config::RawFile>,
}

/// The validated agents: what the identity manager subscribes to, and what the data path serves.
pub(crate) struct Agents {
    pub identities: Vec<AgentIdentity>,
    pub local: Vec<LocalAgent>,
    /// Agents whose key the Workload API may serve (they opted in to attestable selectors).
    pub keys_exposed: Vec<String>,
    /// The agents that declare secrets.
    pub secrets: Vec<deputy_secrets::AgentSecrets>,
    /// The agents' PostgreSQL auth proxies.
    pub postgres: Vec<deputy_pgproxy::PgProxyConfig>,
    /// The agents' credential files.
    pub files: Vec<deputy_secrets::files::FileSpec>,
}

/// Validates every `[[agent]]`, adding one line per problem to `problems`.
pub(crate) fn validate_agents(
    raw: &[RawAgent],
    trust_domain: Option<&TrustDomain>,
    problems: &mut Vec<String>,
) -> Agents {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut uid_owner: HashMap<u32, &str> = HashMap::new();
    let mut agents = Agents {
        identities: Vec::new(),
        local: Vec::new(),
        keys_exposed: Vec::new(),
        secrets: Vec::new(),
        postgres: Vec::new(),
        files: Vec::new(),
    };
    for (i, agent) in raw.iter().enumerate() {
        let at = format!("agent[{i}] ({:?})", agent.name);
        check_name(&agent.name, &at, problems);
        if !names.insert(agent.name.clone()) {
            problems.push(format!("{at}: another agent has the same name"));
        }
        let spiffe_id = match parse_spiffe_id(&agent.spiffe_id) {
            Ok(id) => {
                if let Some(td) = trust_domain
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
        let selectors = selectors_of(agent, &at, problems);
        if agent.workload_api_may_serve_key {
            if selectors.iter().all(|s| s.kind == AGENT_SELECTOR_TYPE) {
                problems.push(format!(
                    "{at}: {KEY_EXPOSURE_OPT_IN} is set, but the agent has no selector an \
                     attestor emits, so nothing is exposed; remove {KEY_EXPOSURE_OPT_IN}"
                ));
            } else {
                agents.keys_exposed.push(agent.name.clone());
            }
        }
        let outbound = agent.outbound.as_deref().and_then(|o| {
            parse_local_listen(o)
                .map_err(|e| problems.push(format!("{at}: outbound = {o:?}: {e}")))
                .ok()
        });
        for pattern in &agent.originate {
            if pattern.is_empty() || pattern.chars().any(char::is_whitespace) {
                problems.push(format!(
                    "{at}: originate pattern {pattern:?} must be a principal such as \
                     user:alice@example.org or a prefix ending in * such as user:*"
                ));
            }
        }
        if agent.outbound.is_some() && agent.uids.is_empty() {
            problems.push(format!(
                "{at}: uids is empty, so no process could use its outbound listener; list \
                 the uids the agent runs as"
            ));
        }
        for uid in &agent.uids {
            // The outbound listener knows its caller only by uid: a uid two agents share
            // would let either act as the other.
            if let Some(other) = uid_owner.insert(*uid, &agent.name)
                && other != agent.name
            {
                problems.push(format!(
                    "{at}: uid {uid} is also listed for agent {other:?}; deputyd tells agents \
                     apart by uid, so give each agent a uid of its own"
                ));
            }
        }
        let upstream = agent.upstream.as_deref().and_then(|u| {
            parse_upstream(u)
                .map_err(|e| problems.push(format!("{at}: upstream = {u:?}: {e}")))
                .ok()
        });
        let crate::secrets_config::AgentSecretsConfig {
            secrets,
            injections: inject,
            files,
        } = crate::secrets_config::validate_agent(
            &crate::secrets_config::RawAgentSecrets {
                agent: &agent.name,
                vault_role: agent.vault_role.as_deref(),
                uids: &agent.uids,
                secrets: &agent.secret,
                inject: &agent.inject,
                files: &agent.file,
            },
            &at,
            problems,
        );
        agents.files.extend(files);
        agents.postgres.extend(crate::pgproxy_config::validate(
            &agent.name,
            &agent.uids,
            &agent.postgres,
            secrets.as_ref(),
            &at,
            problems,
        ));
        agents.secrets.extend(secrets);
        if let Some(spiffe_id) = spiffe_id {
            agents.local.push(LocalAgent {
                inject,
                name: agent.name.clone(),
                spiffe_id: spiffe_id.clone(),
                outbound,
                upstream,
                uids: agent.uids.clone(),
                originate: agent.originate.clone(),
                protocol: crate::services_config::protocol(
                    &format!("agent {:?}", agent.name),
                    (agent.mcp, agent.a2a, &agent.arguments),
                    problems,
                ),
            });
            agents.identities.push(AgentIdentity {
                name: agent.name.clone(),
                spiffe_id,
                selectors,
            });
        }
    }
    agents
}

/// Names are routes (`Host: triage`), so they must be what a Host header lowers to.
fn check_name(name: &str, at: &str, problems: &mut Vec<String>) {
    let routable = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if name.is_empty() || !routable || name.starts_with('-') {
        let hint = if name.chars().any(|c| c.is_ascii_uppercase()) {
            format!(
                " (agents are reached by Host name, which is case-insensitive: write {:?})",
                name.to_ascii_lowercase()
            )
        } else {
            String::new()
        };
        problems.push(format!(
            "{at}: name must be non-empty lower-case letters, digits, '-' or '_', not starting \
             with '-'{hint}"
        ));
    }
}

/// The key of the per-agent opt-in to selectors an attestor emits.
pub const KEY_EXPOSURE_OPT_IN: &str = "workload_api_may_serve_key";

/// What deputyd says, at start and in `--check`, of an agent that opted in.
pub fn key_exposure_warning(agent: &str) -> String {
    format!(
        "agent {agent} opted in to {KEY_EXPOSURE_OPT_IN}: processes its selectors describe can \
         fetch its SVID and key from the Workload API and call peers without deputyd; register \
         it under deputy:agent:{agent} instead"
    )
}

/// The selectors deputyd presents for the agent: `deputy:agent:NAME` unless given, and never
/// one an attestor emits unless the agent opts in with [`KEY_EXPOSURE_OPT_IN`].
fn selectors_of(agent: &RawAgent, at: &str, problems: &mut Vec<String>) -> Vec<Selector> {
    let Some(given) = &agent.selectors else {
        return vec![agent_selector(&agent.name)];
    };
    if given.is_empty() {
        problems.push(format!(
            "{at}: selectors is empty; remove the key to use deputy:agent:{}",
            agent.name
        ));
    }
    given
        .iter()
        .filter_map(|s| {
            let selector: Selector = s
                .parse()
                .map_err(|e| problems.push(format!("{at}: {e}")))
                .ok()?;
            if selector.kind != AGENT_SELECTOR_TYPE && !agent.workload_api_may_serve_key {
                problems.push(format!(
                    "{at}: selector {selector} is one a workload attestor emits, so any process \
                     it describes could fetch the agent's SVID and key from the Workload API and \
                     go around deputyd; register the agent under deputy:agent:{} (remove \
                     `selectors` to use it) and list the agent's uids in `uids`, or, to accept \
                     that exposure, set {KEY_EXPOSURE_OPT_IN} = true for this agent",
                    agent.name
                ));
                return None;
            }
            Some(selector)
        })
        .collect()
}

/// An outbound listener: loopback TCP (`127.0.0.1:15001`) or a unix socket
/// (`unix:///run/deputy/triage.sock`). Never a public address: the listener takes plain HTTP
/// and vouches for the caller.
pub(crate) fn parse_local_listen(text: &str) -> Result<ListenAddr, String> {
    if let Some(path) = text.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err("write an absolute socket path: unix:///run/deputy/agent.sock".into());
        }
        return Ok(ListenAddr::Unix(path.into()));
    }
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("{e}; write 127.0.0.1:PORT or unix:///PATH"))?;
    if !addr.ip().is_loopback() {
        return Err(
            "an outbound listener must be on loopback (127.0.0.1 or ::1) or a unix socket: it \
             accepts plain HTTP from local agents"
                .into(),
        );
    }
    Ok(ListenAddr::Tcp(addr))
}

/// An agent's upstream: a plain `http://` URI.
fn parse_upstream(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("write http://HOST:PORT, the agent's own plain HTTP listener".into());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> (Agents, Vec<String>) {
        #[derive(Deserialize)]
        struct File {
            agent: Vec<RawAgent>,
        }
        let file: File = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        let td = TrustDomain::new("example.org").expect("td");
        let agents = validate_agents(&file.agent, Some(&td), &mut problems);
        (agents, problems)
    }

    #[test]
    fn agents_default_to_the_selector_only_deputyd_presents() {
        let (agents, problems) = validate(
            "[[agent]]\nname = \"triage\"\nspiffe_id = \"spiffe://example.org/agent/triage\"\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            agents.identities[0].selectors,
            vec!["deputy:agent:triage".parse::<Selector>().expect("selector")]
        );
    }

    #[test]
    fn attestable_selectors_shared_uids_and_unroutable_names_are_refused() {
        let (_, problems) = validate(
            "[[agent]]\nname = \"triage\"\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
             selectors = [\"unix:uid:1001\"]\nuids = [1001]\n\
             [[agent]]\nname = \"Billing\"\nspiffe_id = \"spiffe://example.org/agent/billing\"\n\
             uids = [1001]\n",
        );
        let message = problems.join("\n");
        for expected in [
            "selector unix:uid:1001 is one a workload attestor emits",
            "uid 1001 is also listed for agent \"triage\"",
            "write \"billing\"",
            "set workload_api_may_serve_key = true for this agent",
        ] {
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
    }

    #[test]
    fn the_opt_in_keeps_attestable_selectors_and_is_reported() {
        let (agents, problems) = validate(
            "[[agent]]\nname = \"triage\"\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
             selectors = [\"unix:uid:1001\"]\nworkload_api_may_serve_key = true\n\
             [[agent]]\nname = \"billing\"\nspiffe_id = \"spiffe://example.org/agent/billing\"\n\
             workload_api_may_serve_key = true\n",
        );
        assert_eq!(
            agents.identities[0].selectors,
            vec!["unix:uid:1001".parse::<Selector>().expect("selector")]
        );
        assert_eq!(agents.keys_exposed, vec!["triage".to_owned()]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("agent[1] (\"billing\"): workload_api_may_serve_key is set"),
            "{problems:?}"
        );
    }
}
