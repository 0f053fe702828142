//! Deputy's policy: which calls may happen, decided by Rego.
//!
//! - [`input`]: the input document (version 1) a policy sees.
//! - [`decision`]: the decision object, read strictly (anything malformed denies).
//! - [`rego`]: the `rego` engine (regorus over `.rego` sources and `data.json`).
//! - [`wasm`]: the `wasm` engine (a [`bundle`] built by `opa build -t wasm`, on wasmtime).
//! - [`mcp`]: the MCP call read from a request body while it streams.
//! - [`Policy`]: the serving policy: loads, reloads (keeping the last good one when a new one
//!   fails), decides, and writes every decision to the decision log.

pub mod bundle;
pub mod decision;
mod idle;
pub mod input;
pub mod mcp;
pub mod record;
pub mod rego;
mod rego_value;
pub mod sources;
pub mod wasm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

pub use decision::{Approval, Decision, ENTRYPOINT, ENTRYPOINT_REF};
pub use input::{Direction, INPUT_VERSION, PolicyInput};
pub use rego::RegoPolicy;
pub use wasm::WasmPolicy;

/// How long one decision may take unless configured otherwise; past it the call is denied.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1);

/// The command that lists the builtins each engine provides, as errors name it.
pub const LIST_BUILTINS_COMMAND: &str = "deputy policy builtins";

/// Counter: decisions by `direction`, `engine` and `allow`.
pub const DECISIONS: &str = "deputy_policy_decisions_total";
/// Histogram: evaluation time by `engine`.
pub const DECISION_DURATION: &str = "deputy_policy_decision_duration_seconds";
/// Counter: policy loads by `result` (`ok` or `error`).
pub const LOADS: &str = "deputy_policy_loads_total";

/// The tracing target of decision log events.
pub const DECISION_LOG_TARGET: &str = "deputy::decision";

/// Largest input document evaluated; a larger one is denied unevaluated.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// A policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No `.rego` file at all.
    #[error("no .rego files in {dir}; point the policy at the directory that holds them")]
    NoModules {
        /// The directory.
        dir: String,
    },
    /// `data.json` is not usable.
    #[error("{path}: {reason}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A bundle that cannot be used (corrupt, or without `policy.wasm`).
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle file.
        path: String,
        /// What is wrong, and how to rebuild it.
        reason: String,
    },
    /// A syntax or compile error (the message names file and line), or an unknown builtin.
    #[error("the policy does not compile: {0}")]
    Compile(String),
    /// No `deputy.authz` package with a `decision` rule.
    #[error(
        "the policy has no entrypoint {ENTRYPOINT} (package deputy.authz, rule `decision`); \
         packages found: {found}"
    )]
    MissingEntrypoint {
        /// What the policy does define.
        found: String,
    },
}

/// An evaluation that produced no decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The evaluation ran past its time limit.
    #[error("the policy ran past its time limit: {0}")]
    TimedOut(String),
    /// The engine reported an error.
    #[error("the policy failed to evaluate: {0}")]
    Failed(String),
}

/// An engine holding one compiled policy.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// `rego` or `wasm`.
    fn kind(&self) -> &'static str;
    /// The revision of the content it was built from.
    fn revision(&self) -> &str;
    /// Sets how long each decision may take from now on; past it the decision is a timeout.
    fn set_time_limit(&self, limit: Duration);
    /// Evaluates the entrypoint for `input`, the input document as JSON text (the form both
    /// engines read, so the serving path serializes the input once); `None` when undefined.
    fn evaluate_json(&self, input: &RawValue) -> Result<Option<serde_json::Value>, EvalError>;

    /// Evaluates the entrypoint for the serving path's typed `input`, whose JSON text is
    /// `text`; an engine that reads values rather than text builds its value from `input`.
    fn evaluate_input(
        &self,
        input: &PolicyInput,
        text: &RawValue,
    ) -> Result<Option<serde_json::Value>, EvalError> {
        let _ = input;
        self.evaluate_json(text)
    }

    /// Evaluates the entrypoint for `input`; `None` when it is undefined.
    fn evaluate(&self, input: &serde_json::Value) -> Result<Option<serde_json::Value>, EvalError> {
        let text = serde_json::value::to_raw_value(input)
            .map_err(|e| EvalError::Failed(format!("the input is not JSON: {e}")))?;
        self.evaluate_json(&text)
    }
}

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory of `.rego` files and `data.json`, evaluated with regorus.
    RegoDir(PathBuf),
    /// A `bundle.tar.gz` with `policy.wasm` and data, evaluated by the wasm engine.
    WasmBundle(PathBuf),
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RegoDir(dir) => write!(f, "rego sources in {}", dir.display()),
            Self::WasmBundle(path) => write!(f, "wasm bundle {}", path.display()),
        }
    }
}

impl PolicySource {
    /// Loads it into an engine, with the default time limit.
    pub fn load_engine(&self) -> Result<Arc<dyn Engine>, LoadError> {
        self.load_engine_with(DEFAULT_TIME_LIMIT)
    }

    /// Loads it into an engine whose decisions (and, for wasm, loading) may take `time_limit`.
    pub fn load_engine_with(&self, time_limit: Duration) -> Result<Arc<dyn Engine>, LoadError> {
        match self {
            Self::RegoDir(dir) => {
                let policy = RegoPolicy::load(dir)?;
                policy.set_time_limit(time_limit);
                Ok(Arc::new(policy))
            }
            Self::WasmBundle(path) => Ok(Arc::new(WasmPolicy::load_with(path, time_limit)?)),
        }
    }

    fn watched(&self) -> &Path {
        match self {
            Self::RegoDir(dir) | Self::WasmBundle(dir) => dir,
        }
    }
}

/// One decision, as enforced and logged.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// Its id (UUIDv7), given to the caller in a denial.
    pub id: String,
    /// The decision.
    pub decision: Decision,
    /// The engine kind.
    pub engine: &'static str,
    /// The policy revision.
    pub revision: String,
    /// How long the evaluation took.
    pub took: Duration,
}

/// A decision that takes longer than this is slow: the caller's async worker should not run the
/// decisions that follow (see [`Policy::runs_slow`]).
pub const SLOW_DECISION: Duration = Duration::from_millis(1);

/// How long a policy counts as slow after a slow decision.
pub const SLOW_SPELL: Duration = Duration::from_secs(10);

/// The serving policy.
#[derive(Debug)]
pub struct Policy {
    source: PolicySource,
    /// Until when (milliseconds since `epoch`) the policy counts as slow.
    slow_until_ms: AtomicU64,
    epoch: Instant,
    /// How long a decision may take, in milliseconds: given to every engine loaded.
    time_limit_ms: AtomicU64,
    current: RwLock<Arc<dyn Engine>>,
    last_error: Mutex<Option<String>>,
    /// The source's files as they were just before the last load attempt: a change made while
    /// loading (or before the watcher starts) is still noticed.
    loaded_from: Mutex<sources::Fingerprint>,
    /// The decision metrics, registered at the first decision (after the process's recorder is
    /// installed): looking a labelled metric up by its key on every decision cost more than the
    /// decision's own bookkeeping.
    metrics: std::sync::OnceLock<DecisionMetrics>,
}

/// The handles of one policy's decision metrics.
#[derive(Debug)]
struct DecisionMetrics {
    /// By direction (outbound, inbound), then allow (false, true).
    decisions: [[metrics::Counter; 2]; 2],
    duration: metrics::Histogram,
}

impl DecisionMetrics {
    fn register(engine: &'static str) -> Self {
        let counter = |direction: &'static str, allow: &'static str| metrics::counter!(DECISIONS, "direction" => direction, "engine" => engine, "allow" => allow);
        Self {
            decisions: [
                [counter("outbound", "false"), counter("outbound", "true")],
                [counter("inbound", "false"), counter("inbound", "true")],
            ],
            duration: metrics::histogram!(DECISION_DURATION, "engine" => engine),
        }
    }

    fn count(&self, record: &DecisionRecord, direction: Direction) {
        let direction = match direction {
            Direction::Outbound => 0,
            Direction::Inbound => 1,
        };
        self.decisions[direction][usize::from(record.decision.allow)].increment(1);
        self.duration.record(record.took.as_secs_f64());
    }
}

impl Policy {
    /// Loads the policy with the default time limit; a first load that fails is an error
    /// (deputyd does not start without a policy it can enforce).
    pub fn load(source: PolicySource) -> Result<Self, LoadError> {
        Self::load_with(source, DEFAULT_TIME_LIMIT)
    }

    /// Loads the policy; each decision may take `time_limit` ([`Policy::set_time_limit`]
    /// changes it).
    pub fn load_with(source: PolicySource, time_limit: Duration) -> Result<Self, LoadError> {
        let loaded_from = Mutex::new(sources::fingerprint(source.watched()));
        let engine = source.load_engine_with(time_limit);
        metrics::counter!(LOADS, "result" => if engine.is_ok() { "ok" } else { "error" })
            .increment(1);
        let policy = Self {
            source,
            slow_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            time_limit_ms: AtomicU64::new(millis(time_limit)),
            current: RwLock::new(engine?),
            last_error: Mutex::new(None),
            loaded_from,
            metrics: std::sync::OnceLock::new(),
        };
        Ok(policy)
    }

    /// Whether a decision was reported slow ([`Policy::mark_slow`]) within the last
    /// [`SLOW_SPELL`]. Async callers run decisions on their worker while the policy is fast
    /// (moving a worker's tasks to another thread costs more than most decisions) and where
    /// blocking is allowed while it is slow: an input that makes the policy run to its time
    /// limit holds a worker at most once per spell.
    pub fn runs_slow(&self) -> bool {
        self.millis_now() < self.slow_until_ms.load(Ordering::Relaxed)
    }

    /// Reports a decision that used more than [`SLOW_DECISION`] of its thread's CPU (the caller
    /// measures: time spent waiting for a core on a busy node does not make a policy slow).
    pub fn mark_slow(&self) {
        let until = self.millis_now() + SLOW_SPELL.as_millis() as u64;
        self.slow_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    fn millis_now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sets how long each decision may take, for the engine serving now and the ones reloads
    /// bring.
    pub fn set_time_limit(&self, limit: Duration) {
        self.time_limit_ms.store(millis(limit), Ordering::Relaxed);
        self.engine().set_time_limit(limit);
    }

    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.time_limit_ms.load(Ordering::Relaxed))
    }

    /// Loads the source again. On failure the previous policy keeps serving and the error is
    /// kept for `/status`.
    pub fn reload(&self) -> Result<String, LoadError> {
        *self.loaded_from.lock().unwrap_or_else(|p| p.into_inner()) =
            sources::fingerprint(self.source.watched());
        match self.source.load_engine_with(self.time_limit()) {
            Ok(engine) => {
                let revision = engine.revision().to_owned();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = engine;
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                metrics::counter!(LOADS, "result" => "ok").increment(1);
                tracing::info!(%revision, "policy loaded");
                Ok(revision)
            }
            Err(e) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                metrics::counter!(LOADS, "result" => "error").increment(1);
                tracing::error!(error = %e, revision = %self.revision(),
                    "policy failed to load; the last good policy keeps serving");
                Err(e)
            }
        }
    }

    /// The revision serving now.
    pub fn revision(&self) -> String {
        self.engine().revision().to_owned()
    }

    /// The engine serving now (`rego` or `wasm`).
    pub fn engine_kind(&self) -> &'static str {
        self.engine().kind()
    }

    /// Why the last reload failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn engine(&self) -> Arc<dyn Engine> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Decides `input` and counts the decision in the metrics; the caller writes its record
    /// ([`record::log_decision`]), which needs what only the caller knows (the request id).
    pub fn decide(&self, input: &PolicyInput) -> DecisionRecord {
        let engine = self.engine();
        let started = Instant::now();
        // Serialized once: its length is the size check, the engine reads it, the log shows it.
        let text = serde_json::value::to_raw_value(input);
        let decision = match &text {
            Err(e) => Decision::deny(format!("the policy input cannot be written as JSON: {e}")),
            Ok(text) if text.get().len() > MAX_INPUT_BYTES => Decision::deny(format!(
                "the policy input is {} bytes, more than the {MAX_INPUT_BYTES} allowed; \
                 the request carries too much for policy to judge",
                text.get().len()
            )),
            Ok(text) => match engine.evaluate_input(input, text) {
                Ok(result) => Decision::from_result(result.as_ref()),
                Err(e) => {
                    // A decision that ran to its limit may have spent it waiting (for a wasm
                    // instance, or a builtin on its own thread), which no CPU clock shows.
                    if matches!(e, EvalError::TimedOut(_)) {
                        self.mark_slow();
                    }
                    Decision::deny(e.to_string())
                }
            },
        };
        let record = DecisionRecord {
            id: uuid::Uuid::now_v7().to_string(),
            decision,
            engine: engine.kind(),
            revision: engine.revision().to_owned(),
            took: started.elapsed(),
        };
        self.metrics
            .get_or_init(|| DecisionMetrics::register(record.engine))
            .count(&record, input.direction);
        record
    }

    /// Watches the source every `interval` and reloads when a file changes, until `stop`
    /// resolves.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl std::future::Future) {
        let dir = self.source.watched().to_owned();
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
            let changed = sources::fingerprint(&dir)
                != *self.loaded_from.lock().unwrap_or_else(|p| p.into_inner());
            if changed {
                // A failed reload is logged and kept for /status; the last good policy serves.
                // Loading compiles (and, for wasm, runs module code): not on an async worker.
                let policy = self.clone();
                let _ = tokio::task::spawn_blocking(move || policy.reload()).await;
            }
        }
    }
}

/// `limit` in whole milliseconds, at least one.
fn millis(limit: Duration) -> u64 {
    u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_with(rego: &str) -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.rego"), rego).expect("write");
        let policy = Policy::load(PolicySource::RegoDir(dir.path().into())).expect("loads");
        (dir, policy)
    }

    /// The input of the shipped decision case `support-reads-own-team-customer`.
    pub(crate) fn input() -> PolicyInput {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../policies/cases/support-reads-own-team-customer.json");
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("case")).expect("json");
        serde_json::from_value(case["input"].clone()).expect("input")
    }

    #[test]
    fn a_policy_counts_as_slow_for_a_spell_after_a_slow_decision() {
        let (_dir, policy) =
            policy_with("package deputy.authz\nimport rego.v1\ndecision := {\"allow\": true}\n");
        assert!(!policy.runs_slow());
        assert!(policy.decide(&input()).decision.allow);
        assert!(!policy.runs_slow(), "deciding does not make it slow");
        policy.mark_slow();
        assert!(policy.runs_slow());
        policy
            .slow_until_ms
            .store(policy.millis_now(), Ordering::Relaxed);
        assert!(!policy.runs_slow(), "the spell ends");
    }
}
