//! The services agents may call: `[[service]]` (of the mesh, fronted by a deputyd) and
//! `[[external]]` (HTTPS tools outside it, called by deputyd directly).
//!
//! ```toml
//! [[service]]
//! name = "crm"
//! spiffe_id = "spiffe://example.org/agent/crm"
//! address = "10.0.0.7:15008"
//!
//! [[external]]
//! name = "github"
//! url = "https://api.github.com"
//! ca_file = "/etc/deputy/github-roots.pem"   # default: the system's roots
//! task_header = "deputy-task"                 # default
//! callers = ["triage"]                        # without [policy]: who may call it
//! require_idempotency_key = true               # writes without an Idempotency-Key are refused
//! ```

use std::collections::HashSet;
use std::path::PathBuf;

use deputy_identity::parse_spiffe_id;
use deputy_policy::mcp::{ArgumentPointers, Protocol};
use deputy_proxy::{External, LocalAgent, Reach, Service};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    name: String,
    spiffe_id: String,
    address: String,
    #[serde(default)]
    mcp: bool,
    /// The tool arguments (JSON pointers) the policy may read; MCP services only.
    #[serde(default)]
    arguments: Vec<String>,
    #[serde(default)]
    a2a: bool,
    #[serde(default)]
    require_idempotency_key: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExternal {
    name: String,
    url: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_task_header")]
    task_header: String,
    #[serde(default)]
    callers: Vec<String>,
    #[serde(default)]
    mcp: bool,
    /// The tool arguments (JSON pointers) the policy may read; MCP services only.
    #[serde(default)]
    arguments: Vec<String>,
    #[serde(default)]
    a2a: bool,
    #[serde(default)]
    require_idempotency_key: bool,
}

/// How a service's calls are read, from its `mcp`, `a2a` and `arguments` settings.
pub(crate) fn protocol(
    at: &str,
    (mcp, a2a, arguments): (bool, bool, &[String]),
    problems: &mut Vec<String>,
) -> Protocol {
    if mcp && a2a {
        problems.push(format!(
            "{at}: `mcp` and `a2a` are both set; a service speaks one of them"
        ));
    }
    if !arguments.is_empty() && !mcp {
        problems.push(format!(
            "{at}: `arguments` are read from MCP tool calls; set `mcp = true` or remove them"
        ));
    }
    match ArgumentPointers::parse(arguments) {
        _ if a2a => Protocol::A2a,
        Ok(pointers) if mcp => Protocol::Mcp(pointers),
        Ok(_) => Protocol::Unmarked,
        Err(e) => {
            problems.push(format!("{at}: arguments: {e}"));
            Protocol::Unmarked
        }
    }
}

/// The CA files the external services' stanzas name (read again on every reload).
pub(crate) fn ca_files(externals: &[RawExternal]) -> Vec<PathBuf> {
    externals.iter().filter_map(|e| e.ca_file.clone()).collect()
}

fn default_task_header() -> String {
    "deputy-task".into()
}

/// Every service, validated; a problem is pushed for each one that cannot work. Local agents
/// are checked against for names (`local`), and each agent's `inject` must name a service.
pub(crate) fn validate_services(
    services: &[RawService],
    externals: &[RawExternal],
    local: &[LocalAgent],
    policy_set: bool,
    problems: &mut Vec<String>,
) -> Vec<Service> {
    let mut validated = Vec::new();
    let mut names = HashSet::new();
    // Routes are case-insensitive (a Host header is): names are compared lower-cased, so that
    // `Triage` cannot shadow the local agent `triage`.
    let mut check_name = |at: &str, name: &str, problems: &mut Vec<String>| {
        let route = name.to_ascii_lowercase();
        if !names.insert(route.clone()) {
            problems.push(format!(
                "{at}: another service has the same name (names are case-insensitive)"
            ));
        }
        if name.is_empty() || rustls_pki_types::ServerName::try_from(name).is_err() {
            problems.push(format!(
                "{at}: name must be a DNS-style name (letters, digits, '-', '.'): agents use it \
                 as the Host of their requests and deputyd sends it as SNI"
            ));
        }
        route
    };

    for (i, service) in services.iter().enumerate() {
        let at = format!("service[{i}] ({:?})", service.name);
        let route = check_name(&at, &service.name, problems);
        if !service.address.contains(':') {
            problems.push(format!(
                "{at}: address {:?} needs a port, such as 10.0.0.7:15008",
                service.address
            ));
        }
        match parse_spiffe_id(&service.spiffe_id) {
            Ok(id) => {
                if let Some(agent) = local.iter().find(|a| a.name == route)
                    && agent.spiffe_id != id
                {
                    problems.push(format!(
                        "{at}: a local agent has this name with SPIFFE ID {}; a service and a \
                         local agent of one name are the same workload",
                        agent.spiffe_id
                    ));
                }
                validated.push(Service {
                    protocol: protocol(
                        &at,
                        (service.mcp, service.a2a, &service.arguments),
                        problems,
                    ),
                    require_idempotency_key: service.require_idempotency_key,
                    ..Service::mesh(route, id, &service.address)
                });
            }
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }

    for (i, external) in externals.iter().enumerate() {
        let at = format!("external[{i}] ({:?})", external.name);
        let route = check_name(&at, &external.name, problems);
        if local.iter().any(|a| a.name == route) {
            problems.push(format!(
                "{at}: a local agent has this name; name the tool outside the mesh otherwise"
            ));
        }
        let callers = validate_callers(&at, external, local, policy_set, problems);
        let base = validate_url(&at, &external.url, problems);
        let roots = external
            .ca_file
            .as_ref()
            .map(|path| read_roots(&at, path, problems))
            .unwrap_or_default();
        let task_header = validate_task_header(&at, &external.task_header, problems);
        if let Some(header) = &task_header {
            for agent in local {
                if agent
                    .inject
                    .iter()
                    .any(|i| i.service == route && i.header == *header)
                {
                    problems.push(format!(
                        "{at}: task_header {header} is also the header agent {:?} injects a \
                         credential in; choose another task_header",
                        agent.name
                    ));
                }
            }
        }
        if let (Some(base), Some(task_header)) = (base, task_header) {
            validated.push(Service {
                name: route,
                protocol: protocol(
                    &at,
                    (external.mcp, external.a2a, &external.arguments),
                    problems,
                ),
                require_idempotency_key: external.require_idempotency_key,
                reach: Reach::External(External {
                    base,
                    roots,
                    task_header,
                    callers,
                }),
            });
        }
    }

    for agent in local {
        for injection in &agent.inject {
            let known = validated.iter().any(|s| s.name == injection.service)
                || local.iter().any(|a| a.name == injection.service);
            if !known {
                problems.push(format!(
                    "agent {:?}: inject names no service {:?}; add a [[service]] or \
                     [[external]] of that name (or name a local agent)",
                    agent.name, injection.service
                ));
            }
        }
    }
    validated
}

/// Without a policy, the local agents that may call the tool (nothing at the other end checks
/// a call to it); with one, the policy decides and `callers` is refused.
fn validate_callers(
    at: &str,
    external: &RawExternal,
    local: &[LocalAgent],
    policy_set: bool,
    problems: &mut Vec<String>,
) -> Vec<String> {
    if policy_set {
        if !external.callers.is_empty() {
            problems.push(format!(
                "{at}: `callers` does not apply when [policy] is set: which agents may call \
                 {:?} is the policy's decision (data.services in the shipped policy); remove \
                 `callers`",
                external.name
            ));
        }
        return Vec::new();
    }
    if external.callers.is_empty() {
        problems.push(format!(
            "{at}: without [policy], list the local agents that may call it in `callers` (no \
             deputyd at the other end checks a call to a tool outside the mesh)"
        ));
    }
    for caller in &external.callers {
        if !local.iter().any(|a| a.name == *caller) {
            problems.push(format!("{at}: callers names no local agent {caller:?}"));
        }
    }
    external.callers.clone()
}

fn validate_url(at: &str, url: &str, problems: &mut Vec<String>) -> Option<http::Uri> {
    let explain = "write https://HOST[:PORT][/PATH]";
    if url.contains('@') {
        // Not repeated: it may hold a password, and this message goes to logs.
        problems.push(format!(
            "{at}: url holds a user name or password; inject credentials with \
             [[agent.inject]] instead; {explain}"
        ));
        return None;
    }
    let uri = match url.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            problems.push(format!("{at}: url {url:?} is not a URL ({e}); {explain}"));
            return None;
        }
    };
    let problem = if uri.scheme_str() != Some("https") {
        Some("must be https: deputyd adds credentials to these calls".to_owned())
    } else if uri.host().is_none_or(str::is_empty) {
        Some("names no host".to_owned())
    } else if uri.query().is_some() {
        Some("has a query; agents send their own".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => {
            problems.push(format!("{at}: url {url:?} {problem}; {explain}"));
            None
        }
        None => Some(uri),
    }
}

fn read_roots(
    at: &str,
    path: &std::path::Path,
    problems: &mut Vec<String>,
) -> Vec<CertificateDer<'static>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            problems.push(format!("{at}: cannot read ca_file {}: {e}", path.display()));
            return Vec::new();
        }
    };
    let roots: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match roots {
        Ok(roots) if !roots.is_empty() => roots,
        Ok(_) => {
            problems.push(format!(
                "{at}: ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!(
                "{at}: ca_file {} is not PEM certificates: {e}",
                path.display()
            ));
            Vec::new()
        }
    }
}

fn validate_task_header(
    at: &str,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<http::HeaderName> {
    let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
        problems.push(format!(
            "{at}: task_header {name:?} is not a header name; write one such as deputy-task"
        ));
        return None;
    };
    let reserved = [
        http::header::HOST,
        http::header::CONNECTION,
        http::header::TE,
        http::header::TRAILER,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::header::CONTENT_LENGTH,
        http::header::AUTHORIZATION,
    ];
    if reserved.contains(&header)
        || header.as_str().starts_with("proxy-")
        || header.as_str() == "deputy-request-id"
    {
        problems.push(format!(
            "{at}: task_header {name:?} is a header the request needs for itself; choose \
             another, such as deputy-task"
        ));
        return None;
    }
    Some(header)
}
