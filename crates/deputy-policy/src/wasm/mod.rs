//! The `wasm` engine: a bundle compiled by `opa build -t wasm -e deputy/authz/decision`, run
//! on wasmtime through OPA's wasm ABI (`wasm/abi.rs`).
//!
//! - The bundle's data documents are loaded into every instance with the module.
//! - Every builtin the module imports is resolved at load (`wasm/builtins.rs`: regorus's
//!   implementations, the ones the `rego` engine runs); a policy needing one that is missing
//!   fails to load, naming it, rather than denying on a rarely taken branch in production.
//! - A wasmtime `Store` is not `Sync`, so instances are pooled: each evaluation takes one (or
//!   makes one), and gives it back unless it trapped.
//! - Evaluation is bounded by wasmtime epochs: a ticker advances the engine's epoch every
//!   [`TICK`], and each evaluation may run for the configured limit in ticks.

mod abi;
mod builtins;
mod value_text;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use wasmtime::{Engine as WasmEngine, Module};

pub use abi::MAX_INSTANCE_MEMORY;
pub use builtins::supported as supported_builtins;

use crate::bundle::Bundle;
use crate::decision::ENTRYPOINT;
use crate::idle::Idle;
use crate::{Engine, EvalError, LoadError};
use abi::{AbiError, Instance};
use builtins::Builtins;

/// Most linear memory an idle instance may keep: the pool holds several, and memory a big
/// evaluation grew is never returned.
const MAX_POOLED_MEMORY: usize = 32 * 1024 * 1024;

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(5);

/// How long one wasm evaluation may run; set with [`crate::set_time_limit`].
static TIME_LIMIT_MS: AtomicU64 = AtomicU64::new(1_000);

pub(crate) fn set_time_limit(limit: Duration) {
    TIME_LIMIT_MS.store(
        u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1),
        Ordering::Relaxed,
    );
}

/// A compiled wasm policy with its data.
pub struct WasmPolicy {
    engine: WasmEngine,
    module: Module,
    /// The data document as JSON text, written into every new instance.
    data: Vec<u8>,
    revision: String,
    builtins: Builtins,
    builtin_names: Vec<String>,
    entrypoint: u32,
    pool: Idle<Instance>,
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("revision", &self.revision)
            .field("builtins", &self.builtin_names)
            .finish_non_exhaustive()
    }
}

impl Drop for WasmPolicy {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

impl WasmPolicy {
    /// Loads the bundle at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, LoadError> {
        Self::from_bundle(crate::bundle::read(path)?)
    }

    /// Compiles `bundle` and checks it: a valid OPA module of ABI 1.2 or later, the entrypoint
    /// `deputy/authz/decision`, and only builtins this engine provides.
    pub fn from_bundle(bundle: Bundle) -> Result<Self, LoadError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine =
            WasmEngine::new(&config).map_err(|e| LoadError::Compile(format!("wasmtime: {e}")))?;
        let module = Module::new(&engine, &bundle.wasm).map_err(|e| {
            LoadError::Compile(format!("policy.wasm is not a valid wasm module: {e}"))
        })?;
        let data = serde_json::to_vec(&bundle.data)
            .map_err(|e| LoadError::Compile(format!("the bundle's data: {e}")))?;
        // The ticker runs before any of the module's code: loading is bounded too.
        let ticking = Arc::new(AtomicBool::new(true));
        start_ticker(engine.clone(), ticking.clone());
        let ticker = TickerGuard(Some(ticking.clone()));

        let (mut instance, declared) =
            Instance::new(&engine, &module, deadline_ticks()).map_err(load_error)?;
        let builtins = Builtins::resolve(&declared.builtins).map_err(|missing| {
            LoadError::Compile(format!(
                "the policy needs builtins the wasm engine does not provide: {}; rewrite those \
                 rules, or serve the Rego sources with engine = \"rego\" (`deputy policy \
                 builtins` lists the supported ones)",
                missing.join(", "),
            ))
        })?;
        let entrypoint = declared
            .entrypoints
            .iter()
            .find(|(name, _)| name == ENTRYPOINT)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                let mut found: Vec<&str> = declared
                    .entrypoints
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect();
                found.sort_unstable();
                LoadError::MissingEntrypoint {
                    found: format!(
                        "entrypoints {} (build with -e {ENTRYPOINT})",
                        found.join(", ")
                    ),
                }
            })?;
        // The first instance now: data the module cannot take fails the load, not a call.
        instance.load(builtins.clone(), &data).map_err(load_error)?;
        ticker.disarm();
        let mut builtin_names: Vec<String> = declared
            .builtins
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        builtin_names.sort();
        let policy = Self {
            engine,
            module,
            data,
            revision: bundle.revision,
            builtins,
            builtin_names,
            entrypoint,
            pool: Idle::default(),
            ticking,
        };
        policy.pool.give_back(instance);
        Ok(policy)
    }

    /// The builtins the module imports, sorted.
    pub fn builtins(&self) -> &[String] {
        &self.builtin_names
    }

    fn instantiate(&self) -> Result<Instance, AbiError> {
        let (mut instance, _) = Instance::new(&self.engine, &self.module, deadline_ticks())?;
        instance.load(self.builtins.clone(), &self.data)?;
        Ok(instance)
    }
}

fn load_error(e: AbiError) -> LoadError {
    match e {
        AbiError::Trap(trap) if is_interrupt(&trap) => LoadError::Compile(format!(
            "loading the wasm policy took longer than the {} ms time limit",
            TIME_LIMIT_MS.load(Ordering::Relaxed)
        )),
        AbiError::Trap(trap) => {
            LoadError::Compile(format!("the wasm policy cannot be instantiated: {trap:#}"))
        }
        other => LoadError::Compile(other.to_string()),
    }
}

fn is_interrupt(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<wasmtime::Trap>()
        .is_some_and(|t| *t == wasmtime::Trap::Interrupt)
}

/// Stops a ticker when a load fails half-way (once loaded, the policy's own drop stops it).
struct TickerGuard(Option<Arc<AtomicBool>>);

impl TickerGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        if let Some(ticking) = self.0.take() {
            ticking.store(false, Ordering::Relaxed);
        }
    }
}

fn deadline_ticks() -> u64 {
    let limit = TIME_LIMIT_MS.load(Ordering::Relaxed);
    let tick = u64::try_from(TICK.as_millis()).unwrap_or(1).max(1);
    limit.div_ceil(tick) + 1
}

/// Advances `engine`'s epoch every [`TICK`] until `ticking` is cleared.
fn start_ticker(engine: WasmEngine, ticking: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("deputy-wasm-epoch".into())
        .spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        });
    if let Err(e) = spawned {
        // Without a ticker no evaluation is ever interrupted; every deadline then waits for the
        // next reload. Say so loudly.
        tracing::error!(error = %e, "cannot start the wasm epoch ticker; evaluations are unbounded");
    }
}

impl Engine for WasmPolicy {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn revision(&self) -> &str {
        &self.revision
    }

    fn evaluate_json(&self, input: &RawValue) -> Result<Option<serde_json::Value>, EvalError> {
        let limit = Duration::from_millis(TIME_LIMIT_MS.load(Ordering::Relaxed));
        let mut instance = match self.pool.take() {
            Some(instance) => instance,
            None => self
                .instantiate()
                .map_err(|e| EvalError::Failed(e.to_string()))?,
        };
        let evaluated = instance.evaluate(
            self.entrypoint,
            input.get().as_bytes(),
            deadline_ticks(),
            limit,
        );
        let text = match evaluated {
            Ok(text) => text,
            // A trapped instance is not given back: its memory may be half-written.
            Err(AbiError::Trap(trap)) if is_interrupt(&trap) => {
                return Err(EvalError::TimedOut(format!(
                    "the wasm policy was interrupted after {} ms",
                    TIME_LIMIT_MS.load(Ordering::Relaxed)
                )));
            }
            Err(AbiError::Trap(trap)) => return Err(EvalError::Failed(format!("{trap:#}"))),
            Err(other) => return Err(EvalError::Failed(other.to_string())),
        };
        // An instance keeps the memory it grew to; one that grew far is not kept idle.
        if instance.memory_size() <= MAX_POOLED_MEMORY {
            self.pool.give_back(instance);
        }
        // OPA's result set: `[]` when undefined, else `[{"result": value}]`.
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            EvalError::Failed(format!(
                "the module returned a result set that is not JSON: {e}"
            ))
        })?;
        match value {
            serde_json::Value::Array(results) => match results.into_iter().next() {
                None => Ok(None),
                Some(serde_json::Value::Object(mut first)) => Ok(first.remove("result")),
                Some(other) => Err(EvalError::Failed(format!(
                    "the module returned a result set entry that is not an object: {other}"
                ))),
            },
            other => Err(EvalError::Failed(format!(
                "the module returned {other} instead of a result set"
            ))),
        }
    }
}
