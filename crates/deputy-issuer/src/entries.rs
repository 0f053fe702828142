//! Registration entries and authorized delegates, read from a TOML file.
//!
//! ```toml
//! [[entry]]
//! spiffe_id = "spiffe://example.org/agent/triage"
//! selectors = ["unix:uid:1001"]
//! x509_ttl = "1h"   # optional
//! jwt_ttl = "5m"    # optional
//! delegated_only = true  # optional: never served on the Workload API
//!
//! [[entry]]         # an agent fronted by deputyd: delegated-only by its selector type
//! spiffe_id = "spiffe://example.org/agent/billing"
//! selectors = ["deputy:agent:billing"]
//!
//! [[delegate]]      # who may use the Delegated Identity API
//! selectors = ["unix:uid:0"]
//!
//! [[federation]]    # a foreign trust domain whose SVIDs workloads should accept
//! trust_domain = "partner.org"
//! bundle = "partner-bundle.pem"   # PEM CA certificates; relative to this file
//! ```
//!
//! An entry matches a workload when every one of the entry's selectors is among the workload's
//! selectors, as in SPIRE. A delegated-only entry (marked so, or with a `deputy:` selector, which
//! no attestor emits) is served only to authorized delegates through the Delegated Identity API:
//! an agent fronted by deputyd must never hold its own key. Every problem in a file is reported at once, each with its line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use deputy_identity::{Selector, parse_spiffe_id};
use serde::Deserialize;
use spiffe::{SpiffeId, TrustDomain};
use toml::Spanned;

/// Default lifetime of an X.509-SVID.
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
/// Default lifetime of a JWT-SVID.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Shortest TTL accepted: rotation at half-life needs room to happen.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// One registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The identity it grants.
    pub spiffe_id: SpiffeId,
    /// Every one of these must describe the workload.
    pub selectors: BTreeSet<Selector>,
    /// Lifetime of its X.509-SVIDs.
    pub x509_ttl: Duration,
    /// Lifetime of its JWT-SVIDs.
    pub jwt_ttl: Duration,
    /// Served only through the Delegated Identity API.
    pub delegated_only: bool,
}

/// The selector type no attestor emits: only deputyd presents it, for the agents it fronts.
pub const DEPUTY_SELECTOR_TYPE: &str = "deputy";

/// A workload allowed to use the Delegated Identity API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegate {
    /// Every one of these must describe the caller.
    pub selectors: BTreeSet<Selector>,
}

/// The entries and delegates in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// Registration entries, in file order.
    pub entries: Vec<Entry>,
    /// Authorized delegates.
    pub delegates: Vec<Delegate>,
    /// Bundles of federated trust domains: trust domain name to concatenated DER CA
    /// certificates, as the Workload API carries them.
    pub federated: BTreeMap<String, Vec<u8>>,
}

/// An entries file that cannot be used. The previous entries keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntriesError {
    /// The file cannot be read.
    #[error("cannot read entries file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys or wrong types.
    #[error("entries file {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One or more entries are invalid; every problem is listed.
    #[error("entries file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// One line per problem, each starting with its line number.
        problems: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    entry: Vec<Spanned<RawEntry>>,
    #[serde(default)]
    delegate: Vec<Spanned<RawDelegate>>,
    #[serde(default)]
    federation: Vec<RawFederation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    trust_domain: Spanned<String>,
    bundle: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: Spanned<String>,
    selectors: Spanned<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    x509_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    jwt_ttl: Option<Duration>,
    #[serde(default)]
    delegated_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelegate {
    selectors: Spanned<Vec<String>>,
}

impl Registry {
    /// Reads and validates an entries file for `trust_domain`.
    pub fn load(path: &Path, trust_domain: &TrustDomain) -> Result<Self, EntriesError> {
        let text = std::fs::read_to_string(path).map_err(|source| EntriesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base_dir, trust_domain)
    }

    /// Parses and validates entries file contents; `origin` names the file in errors and
    /// relative bundle paths are read from `base_dir`.
    pub fn parse(
        text: &str,
        origin: &str,
        base_dir: &Path,
        trust_domain: &TrustDomain,
    ) -> Result<Self, EntriesError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| EntriesError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut problems = Vec::new();
        let mut registry = Registry::default();
        let mut seen: HashMap<String, (usize, bool)> = HashMap::new();

        for raw_entry in &raw.entry {
            let entry = raw_entry.get_ref();
            let line = line_of(entry.spiffe_id.span().start);
            let spiffe_id = match parse_spiffe_id(entry.spiffe_id.get_ref()) {
                Ok(id) if id.trust_domain() != trust_domain => {
                    problems.push(format!(
                        "line {line}: {id} is in trust domain {}, but this issuer signs for {trust_domain}",
                        id.trust_domain()
                    ));
                    None
                }
                Ok(id) => Some(id),
                Err(e) => {
                    problems.push(format!("line {line}: {e}"));
                    None
                }
            };
            let selectors = parse_selectors(&entry.selectors, line_of, &mut problems);
            let x509_ttl = entry.x509_ttl.unwrap_or(DEFAULT_X509_TTL);
            let jwt_ttl = entry.jwt_ttl.unwrap_or(DEFAULT_JWT_TTL);
            for (name, ttl) in [("x509_ttl", x509_ttl), ("jwt_ttl", jwt_ttl)] {
                if ttl < MIN_TTL {
                    problems.push(format!(
                        "line {line}: {name} {} is too short; use at least {}",
                        humantime::format_duration(ttl),
                        humantime::format_duration(MIN_TTL)
                    ));
                }
            }
            let Some(spiffe_id) = spiffe_id else { continue };
            let fronted = selectors
                .as_ref()
                .is_some_and(|s| s.iter().any(|s| s.kind == DEPUTY_SELECTOR_TYPE));
            if let Some(selectors) = &selectors
                && fronted
                && let Some(other) = selectors.iter().find(|s| s.kind != DEPUTY_SELECTOR_TYPE)
            {
                problems.push(format!(
                    "line {line}: {spiffe_id} mixes {DEPUTY_SELECTOR_TYPE}: selectors with \
                     {other}; deputyd presents only deputy:agent:NAME for an agent it fronts, so \
                     this entry would match nothing; keep only the deputy: selector"
                ));
            }
            if let Some((first, first_fronted)) =
                seen.insert(spiffe_id.to_string(), (line, fronted))
            {
                if first_fronted != fronted {
                    let workload_line = if fronted { first } else { line };
                    problems.push(format!(
                        "line {workload_line}: {spiffe_id} is registered both under deputy: \
                         selectors (an agent only deputyd may hold the key of) and under \
                         selectors a workload attestor emits, so any process those describe \
                         could fetch the agent's SVID and key from the Workload API and go \
                         around deputyd; remove the entry at line {workload_line}"
                    ));
                } else {
                    problems.push(format!(
                        "line {line}: duplicate entry for {spiffe_id}, first registered at line \
                         {first}; keep one entry per SPIFFE ID"
                    ));
                }
                continue;
            }
            if let Some(selectors) = selectors {
                let delegated_only = entry.delegated_only || fronted;
                registry.entries.push(Entry {
                    spiffe_id,
                    selectors,
                    x509_ttl,
                    jwt_ttl,
                    delegated_only,
                });
            }
        }

        for raw_delegate in &raw.delegate {
            if let Some(selectors) =
                parse_selectors(&raw_delegate.get_ref().selectors, line_of, &mut problems)
            {
                registry.delegates.push(Delegate { selectors });
            }
        }

        for federation in &raw.federation {
            let line = line_of(federation.trust_domain.span().start);
            let name = federation.trust_domain.get_ref();
            match deputy_identity::spiffe_id::parse_trust_domain(name) {
                Ok(td) if &td == trust_domain => problems.push(format!(
                    "line {line}: {td} is this issuer's own trust domain, not a federated one"
                )),
                Ok(td) => match read_bundle(&base_dir.join(&federation.bundle)) {
                    Ok(der) => {
                        registry.federated.insert(td.to_string(), der);
                    }
                    Err(e) => problems.push(format!("line {line}: bundle for {td}: {e}")),
                },
                Err(e) => problems.push(format!("line {line}: {e}")),
            }
        }

        if problems.is_empty() {
            Ok(registry)
        } else {
            Err(EntriesError::Invalid {
                path: origin.to_owned(),
                problems,
            })
        }
    }

    /// The entries that match a workload described by `selectors`, sorted by SPIFFE ID so that
    /// the first (the default SVID) is stable.
    pub fn matching<'a>(&'a self, selectors: &BTreeSet<Selector>) -> Vec<&'a Entry> {
        let mut found: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.selectors.is_subset(selectors))
            .collect();
        found.sort_by_key(|e| e.spiffe_id.to_string());
        found
    }

    /// Whether a caller described by `selectors` may use the Delegated Identity API.
    pub fn is_delegate(&self, selectors: &BTreeSet<Selector>) -> bool {
        self.delegates
            .iter()
            .any(|d| d.selectors.is_subset(selectors))
    }
}

/// Reads a PEM bundle into concatenated DER certificates.
fn read_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let der: Vec<u8> = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .flat_map(|p| p.contents)
        .collect();
    if der.is_empty() {
        return Err(format!("{} holds no PEM CERTIFICATE", path.display()));
    }
    Ok(der)
}

fn parse_selectors(
    raw: &Spanned<Vec<String>>,
    line_of: impl Fn(usize) -> usize,
    problems: &mut Vec<String>,
) -> Option<BTreeSet<Selector>> {
    let line = line_of(raw.span().start);
    if raw.get_ref().is_empty() {
        problems.push(format!(
            "line {line}: selectors is empty; an entry needs at least one, such as unix:uid:1001"
        ));
        return None;
    }
    let mut set = BTreeSet::new();
    let mut ok = true;
    for s in raw.get_ref() {
        match s.parse::<Selector>() {
            Ok(selector) => {
                set.insert(selector);
            }
            Err(e) => {
                problems.push(format!("line {line}: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").expect("valid")
    }

    #[test]
    fn parses_entries_and_delegates_with_defaults() {
        let registry = Registry::parse(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/agent/triage"
selectors = ["unix:uid:1001"]
x509_ttl = "30s"

[[delegate]]
selectors = ["unix:uid:0"]
"#,
            "entries.toml",
            Path::new("."),
            &td(),
        )
        .expect("valid");
        assert_eq!(registry.entries.len(), 1);
        assert_eq!(registry.entries[0].x509_ttl, Duration::from_secs(30));
        assert_eq!(registry.entries[0].jwt_ttl, DEFAULT_JWT_TTL);
        assert_eq!(registry.delegates.len(), 1);
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let err = Registry::parse(
            r#"[[entry]]
spiffe_id = "spiffe://Example.org/a"
selectors = ["unix:uid:1"]

[[entry]]
spiffe_id = "spiffe://example.org/b/"
selectors = []

[[entry]]
spiffe_id = "spiffe://other.org/c"
selectors = ["unix:uid:1"]

[[entry]]
spiffe_id = "spiffe://example.org/d"
selectors = ["unix:uid:1"]

[[entry]]
spiffe_id = "spiffe://example.org/d"
selectors = ["unix:uid:2"]
x509_ttl = "1s"
"#,
            "entries.toml",
            Path::new("."),
            &td(),
        )
        .expect_err("invalid");
        let message = err.to_string();
        for expected in [
            "line 2: invalid SPIFFE ID \"spiffe://Example.org/a\"",
            "upper-case",
            "line 6:",
            "trailing slash",
            "line 7: selectors is empty",
            "line 10: spiffe://other.org/c is in trust domain other.org",
            "line 18: duplicate entry for spiffe://example.org/d, first registered at line 14",
            "line 18: x509_ttl 1s is too short",
        ] {
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
    }

    #[test]
    fn an_agent_registered_for_deputyd_and_for_the_workload_api_is_refused() {
        let err = Registry::parse(
            r#"[[entry]]
spiffe_id = "spiffe://example.org/agent/triage"
selectors = ["deputy:agent:triage"]

[[entry]]
spiffe_id = "spiffe://example.org/agent/triage"
selectors = ["unix:uid:1001"]

[[entry]]
spiffe_id = "spiffe://example.org/agent/billing"
selectors = ["unix:uid:1002"]

[[entry]]
spiffe_id = "spiffe://example.org/agent/billing"
selectors = ["deputy:agent:billing"]

[[entry]]
spiffe_id = "spiffe://example.org/agent/ops"
selectors = ["deputy:agent:ops", "unix:uid:1003"]
"#,
            "entries.toml",
            Path::new("."),
            &td(),
        )
        .expect_err("mixed");
        let message = err.to_string();
        for expected in [
            "line 6: spiffe://example.org/agent/triage is registered both under deputy: selectors",
            "remove the entry at line 6",
            "line 10: spiffe://example.org/agent/billing is registered both",
            "remove the entry at line 10",
            "line 18: spiffe://example.org/agent/ops mixes deputy: selectors with unix:uid:1003",
        ] {
            assert!(message.contains(expected), "{message}\nmissing: {expected}");
        }
        assert!(!message.contains("duplicate entry"), "{message}");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_the_line() {
        let err = Registry::parse("[[entry]]\nspiffe_id = \n", "e.toml", Path::new("."), &td())
            .expect_err("bad");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Registry::parse(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nttl = \"1h\"\n",
            "e.toml",
            Path::new("."),
            &td(),
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `ttl`"), "{err}");
    }

    #[test]
    fn an_entry_matches_when_all_its_selectors_describe_the_workload() {
        let registry = Registry::parse(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/b"
selectors = ["unix:uid:1001", "unix:gid:50"]
[[entry]]
spiffe_id = "spiffe://example.org/a"
selectors = ["unix:uid:1001"]
[[entry]]
spiffe_id = "spiffe://example.org/c"
selectors = ["unix:uid:1002"]
"#,
            "e.toml",
            Path::new("."),
            &td(),
        )
        .expect("valid");
        let workload: BTreeSet<Selector> = ["unix:uid:1001", "unix:gid:50", "unix:user:x"]
            .iter()
            .map(|s| s.parse().expect("selector"))
            .collect();
        let ids: Vec<String> = registry
            .matching(&workload)
            .iter()
            .map(|e| e.spiffe_id.to_string())
            .collect();
        assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/b"]);
    }

    #[test]
    fn the_shipped_example_entries_load() {
        let text = include_str!("../../../examples/entries.toml");
        let registry =
            Registry::parse(text, "examples/entries.toml", Path::new("."), &td()).expect("valid");
        assert_eq!(registry.entries.len(), 3);
        assert_eq!(registry.delegates.len(), 1);
    }
}
