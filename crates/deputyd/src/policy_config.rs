//! The `[policy]` section: which policy decides every call, and what it knows about identities.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deputy_policy::input::Attributes;
use deputy_policy::{Policy, PolicySource};
use deputy_proxy::{FactsCell, PolicyConfig, PolicyFacts};
use serde::Deserialize;

/// `[policy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    /// `rego` (sources) or `wasm` (a compiled bundle).
    #[serde(default = "default_engine")]
    engine: String,
    /// The directory of `.rego` files and `data.json` (engine `rego`).
    #[serde(default)]
    dir: Option<PathBuf>,
    /// The `bundle.tar.gz` from `opa build -t wasm -e deputy/authz/decision` (engine `wasm`).
    #[serde(default)]
    bundle: Option<PathBuf>,
    /// IANA zone of `time.weekday` and `time.hour`.
    #[serde(default = "default_zone")]
    time_zone: String,
    /// Longest one evaluation may run.
    #[serde(default = "default_eval_timeout", with = "humantime_serde")]
    eval_timeout: Duration,
    /// How often the directory is checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_watch", with = "humantime_serde")]
    watch_interval: Duration,
    /// Most body bytes held back to read an MCP call.
    #[serde(default = "default_peek_bytes")]
    peek_bytes: usize,
    /// Longest wait for them.
    #[serde(default = "default_peek_wait", with = "humantime_serde")]
    peek_wait: Duration,
    /// Debugging only: each decision's whole input in the log, which may hold secrets.
    #[serde(default)]
    log_inputs: bool,
    /// Attributes by SPIFFE ID: `[policy.attributes."spiffe://example.org/agent/x"]`.
    #[serde(default)]
    attributes: HashMap<String, toml::Table>,
}

fn default_engine() -> String {
    "rego".into()
}
fn default_zone() -> String {
    "UTC".into()
}
fn default_eval_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_watch() -> Duration {
    Duration::from_secs(2)
}
fn default_peek_bytes() -> usize {
    64 * 1024
}
fn default_peek_wait() -> Duration {
    Duration::from_secs(1)
}

/// A validated `[policy]`, loaded by the daemon when it starts.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Where the policy comes from.
    pub source: PolicySource,
    /// The zone of `time` in the input.
    pub time_zone: chrono_tz::Tz,
    /// Longest one evaluation may run.
    pub eval_timeout: Duration,
    /// How often the directory is checked for changes.
    pub watch_interval: Duration,
    /// Most body bytes held back to read an MCP call.
    pub peek_bytes: usize,
    /// Longest wait for them.
    pub peek_wait: Duration,
    /// Each decision's whole input logged too (debugging; may hold secrets).
    pub log_inputs: bool,
    /// Attributes by SPIFFE ID.
    pub attributes: HashMap<String, Attributes>,
}

impl RawPolicy {
    /// Checks the section; problems are pushed, one line each.
    pub(crate) fn validate(self, problems: &mut Vec<String>) -> Option<PolicySettings> {
        let before = problems.len();
        let source = match (self.engine.as_str(), self.dir, self.bundle) {
            ("rego", Some(dir), None) => Some(PolicySource::RegoDir(dir)),
            ("wasm", None, Some(bundle)) => Some(PolicySource::WasmBundle(bundle)),
            ("rego", _, _) => {
                problems.push(
                    "policy: engine \"rego\" reads a directory of .rego files: set `dir` (and \
                     not `bundle`, which is for engine = \"wasm\")"
                        .into(),
                );
                None
            }
            ("wasm", _, _) => {
                problems.push(
                    "policy: engine \"wasm\" reads a bundle built by `opa build -t wasm -e \
                     deputy/authz/decision`: set `bundle` (and not `dir`, which is for \
                     engine = \"rego\")"
                        .into(),
                );
                None
            }
            (other, _, _) => {
                problems.push(format!(
                    "policy.engine = {other:?} is unknown; use \"rego\" or \"wasm\""
                ));
                None
            }
        };
        let time_zone = self
            .time_zone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                problems.push(format!(
                    "policy.time_zone = {:?} is not an IANA time zone; write one such as \
                     \"Europe/Paris\" or \"UTC\"",
                    self.time_zone
                ));
            })
            .ok();
        if self.eval_timeout.is_zero() || self.eval_timeout > Duration::from_secs(5) {
            problems.push(format!(
                "policy.eval_timeout = {:?} must be above zero and at most 5s: every call waits \
                 for its decision",
                self.eval_timeout
            ));
        }
        if self.peek_bytes > 16 * 1024 * 1024 || self.peek_wait > Duration::from_secs(30) {
            problems.push(format!(
                "policy.peek_bytes = {} and peek_wait = {:?} must be at most 16 MiB and 30s: \
                 every request may hold that much for that long",
                self.peek_bytes, self.peek_wait
            ));
        }
        if self.watch_interval.is_zero() || self.peek_wait.is_zero() || self.peek_bytes == 0 {
            problems
                .push("policy.watch_interval, peek_wait and peek_bytes must be above zero".into());
        }
        let mut attributes = HashMap::new();
        for (id, table) in self.attributes {
            if let Err(e) = deputy_identity::spiffe_id::parse_spiffe_id(&id) {
                problems.push(format!(
                    "policy.attributes.{id:?}: not a SPIFFE ID ({e}); key attributes by the \
                     SPIFFE ID they describe"
                ));
                continue;
            }
            match serde_json::to_value(&table) {
                Ok(serde_json::Value::Object(map)) => {
                    attributes.insert(id, map.into_iter().collect());
                }
                _ => problems.push(format!(
                    "policy.attributes.{id:?}: values must be strings, numbers, booleans, \
                     lists or tables"
                )),
            }
        }
        let source = source?;
        (problems.len() == before).then(|| PolicySettings {
            source,
            time_zone: time_zone.unwrap_or(chrono_tz::UTC),
            eval_timeout: self.eval_timeout,
            watch_interval: self.watch_interval,
            peek_bytes: self.peek_bytes,
            peek_wait: self.peek_wait,
            log_inputs: self.log_inputs,
            attributes,
        })
    }
}

impl PolicySettings {
    /// The facts the input carries: attributes and time zone.
    pub fn facts(&self) -> PolicyFacts {
        PolicyFacts {
            attributes: self.attributes.clone(),
            time_zone: self.time_zone,
        }
    }

    /// Loads the policy: deputyd does not start on a policy it cannot enforce.
    pub fn load(&self) -> Result<(Arc<Policy>, PolicyConfig), deputy_policy::LoadError> {
        let policy = Arc::new(Policy::load_with(self.source.clone(), self.eval_timeout)?);
        let config = PolicyConfig {
            policy: policy.clone(),
            facts: Arc::new(FactsCell::new(self.facts())),
            peek_bytes: self.peek_bytes,
            peek_wait: self.peek_wait,
            log_inputs: self.log_inputs,
            held_bytes: deputy_proxy::HeldBytes::default(),
        };
        if self.log_inputs {
            tracing::warn!(
                "[policy] log_inputs is on: every decision's whole input is logged \
                 (deputy::decision::input), and inputs may hold secrets (query values, \
                 allowlisted headers); turn it off outside debugging"
            );
        }
        Ok((policy, config))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const NODE: &str = r#"
trust_domain = "example.org"
[[agent]]
name = "triage"
spiffe_id = "spiffe://example.org/agent/triage"
uids = [1001]
"#;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "test.toml") {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_policy_section_loads_with_attributes_per_spiffe_id() {
        let text = format!(
            "{NODE}[policy]\ndir = \"/etc/deputy/policy\"\ntime_zone = \"Europe/Paris\"\n\
             eval_timeout = \"20ms\"\n\
             [policy.attributes.\"spiffe://example.org/agent/triage\"]\nteam = \"eu\"\n\
             environment = \"prod\"\nlevel = 3\n"
        );
        let config = Config::parse(&text, "test.toml").expect("loads");
        let policy = config.policy.expect("policy");
        assert_eq!(policy.time_zone, chrono_tz::Europe::Paris);
        assert_eq!(policy.eval_timeout, std::time::Duration::from_millis(20));
        assert_eq!(policy.peek_bytes, 64 * 1024, "default");
        let triage = &policy.attributes["spiffe://example.org/agent/triage"];
        assert_eq!(triage["team"], "eu");
        assert_eq!(triage["level"], 3);
    }

    #[test]
    fn every_policy_problem_is_named() {
        let text = format!(
            "{NODE}originate = [\"user:*\"]\n[policy]\ndir = \"/p\"\nengine = \"opa\"\n\
             time_zone = \"Mars/Olympus\"\neval_timeout = \"1m\"\n\
             [policy.attributes.\"not-an-id\"]\nteam = \"eu\"\n"
        );
        let all = problems(&text).join("\n");
        for expected in [
            "policy.engine = \"opa\"",
            "Mars/Olympus",
            "eval_timeout",
            "not-an-id",
            "`originate` does not apply when [policy] is set",
        ] {
            assert!(all.contains(expected), "{expected:?} missing from:\n{all}");
        }
        let wasm = problems(&format!(
            "{NODE}[policy]\ndir = \"/p\"\nengine = \"wasm\"\n"
        ));
        assert!(wasm[0].contains("set `bundle`"), "{wasm:?}");
        let config = Config::parse(
            &format!("{NODE}[policy]\nengine = \"wasm\"\nbundle = \"/b.tar.gz\"\n"),
            "test.toml",
        )
        .expect("a wasm bundle config loads");
        assert_eq!(
            config.policy.expect("policy").source,
            deputy_policy::PolicySource::WasmBundle("/b.tar.gz".into())
        );
    }
}
