//! The `rego` engine: regorus evaluates a directory of `.rego` files and `data.json`.
//!
//! The entrypoint is compiled for regorus's register VM (about eight times faster than its
//! tree-walking interpreter on the shipped policy); a policy using a construct that compiler does
//! not take is evaluated by the interpreter instead. Both honour the evaluation time limit, and
//! CI checks the decisions against OPA's own engine.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use serde_json::value::RawValue;

use regorus::utils::limits::{ExecutionTimerConfig, set_fallback_execution_timer_config};

use crate::decision::ENTRYPOINT_REF;
use crate::idle::Idle;
use crate::sources::PolicySources;
use crate::{Engine, EvalError, LoadError, PolicyInput, rego_value};

/// A compiled Rego policy.
pub struct RegoPolicy {
    compiled: regorus::CompiledPolicy,
    /// The entrypoint as a register-VM program, when the VM compiler takes the policy.
    program: Option<Arc<Program>>,
    data: regorus::Value,
    /// Idle VMs with the program and data loaded.
    vms: Idle<RegoVM>,
    revision: String,
    modules: Vec<String>,
    /// How long a decision may take, in milliseconds.
    time_limit_ms: AtomicU64,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoPolicy")
            .field("revision", &self.revision)
            .field("modules", &self.modules)
            .field("vm", &self.program.is_some())
            .finish_non_exhaustive()
    }
}

/// Instructions one VM run may execute; the time limit is the bound that matters, this only
/// keeps the VM's own default (25,000) from failing large policies.
const MAX_VM_INSTRUCTIONS: usize = 100_000_000;

/// Work units between two reads of the clock: reading it at every unit cost about a quarter of
/// an evaluation of the shipped policy; every 64 units it is lost in the noise, and a runaway
/// policy is still stopped within microseconds of its limit.
const CHECK_INTERVAL: std::num::NonZeroU32 = std::num::NonZeroU32::new(64).expect("non-zero");

/// The names of every builtin a Rego policy may call on this engine (regorus's, as built into
/// deputy), sorted. A policy calling another fails to load.
pub fn supported_builtins() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = regorus::unstable::BUILTINS.keys().copied().collect();
    names.sort_unstable();
    names
}

fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: CHECK_INTERVAL,
    }
}

/// An engine holding `sources`, ready for evaluations of any rule.
fn engine_with(sources: &PolicySources) -> Result<regorus::Engine, LoadError> {
    let mut engine = regorus::Engine::new();
    // A builtin regorus does not know must fail the load, not evaluate to undefined later.
    engine.set_strict_builtin_errors(true);
    engine
        .add_data(regorus::Value::from(sources.data.clone()))
        .map_err(|e| LoadError::Data {
            path: "data.json".into(),
            reason: e.to_string(),
        })?;
    for (path, text) in &sources.modules {
        engine
            .add_policy(path.clone(), text.clone())
            .map_err(|e| LoadError::Compile(e.to_string()))?;
    }
    Ok(engine)
}

impl RegoPolicy {
    /// Loads and compiles the policy in `dir` (test files left out).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        Self::from_sources(&PolicySources::read(dir, false)?)
    }

    /// Compiles `sources` for the entrypoint.
    pub fn from_sources(sources: &PolicySources) -> Result<Self, LoadError> {
        let mut engine = engine_with(sources)?;
        let packages = engine
            .get_packages()
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        if !packages.iter().any(|p| p == "data.deputy.authz") {
            return Err(LoadError::MissingEntrypoint {
                found: packages.join(", "),
            });
        }
        let entrypoint: std::sync::Arc<str> = ENTRYPOINT_REF.into();
        let compiled = engine
            .compile_with_entrypoint(&entrypoint)
            .map_err(|e| classify(e.to_string(), &packages))?;
        let program = match Compiler::compile_from_policy(&compiled, &[ENTRYPOINT_REF]) {
            Ok(program) => Some(program),
            Err(e) => {
                tracing::info!(error = %e, "the policy uses a construct regorus's VM compiler \
                    does not take; it is evaluated by the interpreter");
                None
            }
        };
        let policy = Self {
            compiled,
            program,
            data: regorus::Value::from(sources.data.clone()),
            vms: Idle::default(),
            revision: sources.revision.clone(),
            modules: sources.modules.iter().map(|(p, _)| p.clone()).collect(),
            time_limit_ms: AtomicU64::new(0),
        };
        policy.set_time_limit(crate::DEFAULT_TIME_LIMIT);
        // A VM now: data the VM refuses fails the load, not the first call.
        if let Some(vm) = policy.new_vm()? {
            policy.vms.give_back(vm);
        }
        Ok(policy)
    }

    /// The modules it was compiled from.
    pub fn modules(&self) -> &[String] {
        &self.modules
    }

    /// Whether decisions run on regorus's register VM (else its interpreter).
    pub fn uses_vm(&self) -> bool {
        self.program.is_some()
    }

    fn new_vm(&self) -> Result<Option<RegoVM>, LoadError> {
        let Some(program) = &self.program else {
            return Ok(None);
        };
        let mut vm = RegoVM::new();
        vm.load_program(program.clone());
        vm.set_max_instructions(MAX_VM_INSTRUCTIONS);
        vm.set_data(self.data.clone())
            .map_err(|e| LoadError::Data {
                path: "data.json".into(),
                reason: e.to_string(),
            })?;
        Ok(Some(vm))
    }

    /// Evaluates on a pooled VM (the policy has a VM program).
    fn evaluate_on_vm(&self, input: regorus::Value) -> Result<regorus::Value, String> {
        let mut vm = match self.vms.take() {
            Some(vm) => vm,
            None => match self.new_vm() {
                Ok(Some(vm)) => vm,
                Ok(None) => return Err("the policy has no VM program".into()),
                Err(e) => return Err(e.to_string()),
            },
        };
        vm.set_input(input);
        let limit = Duration::from_millis(self.time_limit_ms.load(Ordering::Relaxed));
        vm.set_execution_timer_config(Some(timer(limit)));
        let result = vm
            .execute_entry_point_by_name(ENTRYPOINT_REF)
            .map_err(|e| e.to_string());
        if result.is_ok() {
            // A VM that failed part-way is not reused.
            self.vms.give_back(vm);
        }
        result
    }

    /// Evaluates the entrypoint for `input` on the VM, or the interpreter.
    fn evaluate_value(
        &self,
        input: regorus::Value,
    ) -> Result<Option<serde_json::Value>, EvalError> {
        let result = if self.program.is_some() {
            self.evaluate_on_vm(input)
        } else {
            self.compiled
                .eval_with_input(input)
                .map_err(|e| e.to_string())
        };
        let value = result.map_err(|message| {
            if message.contains("execution exceeded")
                || message.contains("time limit")
                || message.contains("timed out")
            {
                EvalError::TimedOut(message)
            } else {
                EvalError::Failed(message)
            }
        })?;
        if value == regorus::Value::Undefined {
            return Ok(None);
        }
        serde_json::to_value(&value)
            .map(Some)
            .map_err(|e| EvalError::Failed(format!("the result is not JSON: {e}")))
    }
}

fn classify(message: String, packages: &[String]) -> LoadError {
    if message.contains("not a valid rule path") || message.contains("decision") {
        LoadError::MissingEntrypoint {
            found: format!("{} ({message})", packages.join(", ")),
        }
    } else {
        LoadError::Compile(message)
    }
}

impl Engine for RegoPolicy {
    fn kind(&self) -> &'static str {
        "rego"
    }

    fn revision(&self) -> &str {
        &self.revision
    }

    /// On the register VM the limit is this policy's; a policy on the interpreter (one the VM
    /// compiler does not take) gets regorus's process-wide limit, which this sets too.
    fn set_time_limit(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.time_limit_ms.store(ms, Ordering::Relaxed);
        if self.program.is_none() {
            set_fallback_execution_timer_config(Some(timer(limit)));
        }
    }

    fn evaluate_json(&self, input: &RawValue) -> Result<Option<serde_json::Value>, EvalError> {
        let input = regorus::Value::from_json_str(input.get())
            .map_err(|e| EvalError::Failed(format!("the input is not JSON: {e}")))?;
        self.evaluate_value(input)
    }

    fn evaluate_input(
        &self,
        input: &PolicyInput,
        _: &RawValue,
    ) -> Result<Option<serde_json::Value>, EvalError> {
        let input = rego_value::to_value(input)
            .map_err(|e| EvalError::Failed(format!("the input has no Rego form: {e}")))?;
        self.evaluate_value(input)
    }
}

/// One Rego unit test (`test_*` rule) and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// `data.<package>.<rule>`.
    pub name: String,
    /// Passed when the rule is `true`.
    pub passed: bool,
    /// What it evaluated to, or the error, when it failed.
    pub detail: String,
}

/// Runs every `test_*` rule of the policy in `dir` (test files included), as `opa test` does.
pub fn run_tests(dir: &Path) -> Result<Vec<TestOutcome>, LoadError> {
    let sources = PolicySources::read(dir, true)?;
    let mut engine = engine_with(&sources)?;
    let mut outcomes = Vec::new();
    for (_, text) in &sources.modules {
        let Some(package) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(str::trim)
        else {
            continue;
        };
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("test_"))
            .filter_map(|l| l.split(|c: char| !(c.is_alphanumeric() || c == '_')).next())
            .collect();
        names.dedup();
        for rule in names {
            let name = format!("data.{package}.{rule}");
            let outcome = match engine.eval_rule(name.clone()) {
                Ok(regorus::Value::Bool(true)) => TestOutcome {
                    name,
                    passed: true,
                    detail: String::new(),
                },
                Ok(regorus::Value::Undefined) => TestOutcome {
                    name,
                    passed: false,
                    detail: "undefined (a condition in the test did not hold)".into(),
                },
                Ok(other) => TestOutcome {
                    name,
                    passed: false,
                    detail: format!("{other}"),
                },
                Err(e) => TestOutcome {
                    name,
                    passed: false,
                    detail: e.to_string(),
                },
            };
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}
