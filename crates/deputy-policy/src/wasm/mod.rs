//! The `wasm` engine: a bundle compiled by `opa build -t wasm -e deputy/authz/decision`, run
//! on wasmtime through OPA's wasm ABI (`wasm/abi.rs`).
//!
//! - The bundle's data documents are loaded into every instance with the module.
//! - Every builtin the module imports is resolved at load (`wasm/builtins.rs`: regorus's
//!   implementations, the ones the `rego` engine runs); a policy needing one that is missing
//!   fails to load, naming it, rather than denying on a rarely taken branch in production.
//! - A wasmtime `Store` is not `Sync`, so instances are pooled (`wasm/pool.rs`): each decision
//!   takes one (or makes one), and gives it back unless it trapped or grew far. At most
//!   [`max_live_instances`] exist at once; past that a decision waits for one, until its
//!   deadline.
//! - Each decision has one deadline, its time limit from the moment it asks: waiting for an
//!   instance, making one (instantiating the module and loading its data) and evaluating all
//!   count against it. The module's code is stopped by wasmtime epochs (a ticker advances the
//!   engine's epoch every [`TICK`]); builtins run on the host, where epochs do not reach, so one
//!   that may run long is run where the decision can stop waiting for it (`wasm/builtins.rs`).
//!
//! Memory: an instance holds the module's linear memory, which never shrinks: about what a
//! fresh instance holds once its data is loaded ([`WasmPolicy::loaded_memory`], a few times the
//! data document's JSON size), plus what evaluations grew it by, at most
//! [`MAX_INSTANCE_MEMORY`]. Instances grown more than [`MAX_POOLED_GROWTH`] past a fresh one are
//! not kept. A node therefore needs, per wasm policy, about `max_live_instances() x
//! (loaded_memory + MAX_POOLED_GROWTH)` and at worst `max_live_instances() x
//! MAX_INSTANCE_MEMORY`.

mod abi;
mod builtins;
mod pool;
mod value_text;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use wasmtime::{Engine as WasmEngine, Module};

pub use abi::MAX_INSTANCE_MEMORY;
pub use builtins::supported as supported_builtins;
pub use pool::InstanceCounts;

use crate::bundle::Bundle;
use crate::decision::ENTRYPOINT;
use crate::{DEFAULT_TIME_LIMIT, Engine, EvalError, LoadError};
use abi::{AbiError, Instance};
use builtins::Builtins;
use pool::{Instances, Lease};

/// How far past a fresh instance's memory an instance may have grown and still be kept for the
/// next decision: memory an evaluation grew is never returned.
pub const MAX_POOLED_GROWTH: usize = 32 * 1024 * 1024;

/// The longest time limit taken (deputyd's configuration allows 5 s); a longer one is cut to it.
const MAX_TIME_LIMIT: Duration = Duration::from_secs(3600);

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(5);

/// Most instances of one policy that exist at once: one per core (evaluations are CPU-bound,
/// more would only hold memory), and at least two.
pub fn max_live_instances() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
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
    instances: Instances<Instance>,
    /// Linear memory of a fresh instance with its data loaded.
    loaded_memory: usize,
    time_limit_ms: AtomicU64,
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
    /// Loads the bundle at `path`, with the default time limit.
    pub fn load(path: &std::path::Path) -> Result<Self, LoadError> {
        Self::load_with(path, DEFAULT_TIME_LIMIT)
    }

    /// Loads the bundle at `path`; loading and every decision may take `time_limit`.
    pub fn load_with(path: &std::path::Path, time_limit: Duration) -> Result<Self, LoadError> {
        Self::from_bundle(crate::bundle::read(path)?, time_limit)
    }

    /// Compiles `bundle` and checks it: a valid OPA module of ABI 1.2 or later, the entrypoint
    /// `deputy/authz/decision`, and only builtins this engine provides. Making its first
    /// instance (its data loaded) may take `time_limit`, as may every decision after.
    pub fn from_bundle(bundle: Bundle, time_limit: Duration) -> Result<Self, LoadError> {
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
        let time_limit = time_limit.clamp(Duration::from_millis(1), MAX_TIME_LIMIT);
        let deadline = Instant::now() + time_limit;
        let load_error = |e| load_error(e, time_limit);

        let (mut instance, declared) =
            Instance::new(&engine, &module, deadline).map_err(load_error)?;
        let builtins = Builtins::resolve(&declared.builtins).map_err(|missing| {
            LoadError::Compile(format!(
                "the policy needs builtins the wasm engine does not provide: {}; rewrite those \
                 rules, or serve the Rego sources with engine = \"rego\" (`{}` lists the \
                 supported ones)",
                missing.join(", "),
                crate::LIST_BUILTINS_COMMAND,
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
        instance
            .load(builtins.clone(), &data, deadline)
            .map_err(load_error)?;
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
            loaded_memory: instance.memory_size(),
            instances: Instances::with_first(max_live_instances(), instance),
            time_limit_ms: AtomicU64::new(0),
            ticking,
        };
        policy.set_limit(time_limit);
        Ok(policy)
    }

    /// The builtins the module imports, sorted.
    pub fn builtins(&self) -> &[String] {
        &self.builtin_names
    }

    /// Bytes of linear memory a fresh instance holds once the data is loaded: what every
    /// instance costs at least.
    pub fn loaded_memory(&self) -> usize {
        self.loaded_memory
    }

    /// How many instances exist, existed at most, and were made.
    pub fn instance_counts(&self) -> InstanceCounts {
        self.instances.counts()
    }

    fn set_limit(&self, limit: Duration) {
        let ms = u64::try_from(limit.min(MAX_TIME_LIMIT).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.time_limit_ms.store(ms, Ordering::Relaxed);
    }

    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.time_limit_ms.load(Ordering::Relaxed))
    }

    fn instantiate(&self, deadline: Instant) -> Result<Instance, AbiError> {
        let (mut instance, _) = Instance::new(&self.engine, &self.module, deadline)?;
        instance.load(self.builtins.clone(), &self.data, deadline)?;
        Ok(instance)
    }

    /// A place in the pool with an instance for a decision due by `deadline`: an idle one, or
    /// a new one.
    fn lease(&self, deadline: Instant, limit: Duration) -> Result<Lease<'_, Instance>, EvalError> {
        let Some(mut lease) = self.instances.take(deadline) else {
            return Err(EvalError::TimedOut(format!(
                "no wasm instance came free within the {} ms time limit: all {} this policy \
                 may hold were deciding",
                limit.as_millis(),
                self.instances.counts().max_live,
            )));
        };
        if lease.instance().is_none() {
            let instance = self
                .instantiate(deadline)
                .map_err(|e| eval_error(e, limit))?;
            lease.fill(instance);
        }
        Ok(lease)
    }
}

/// Why a decision's module call failed, as the decision reports it.
fn eval_error(e: AbiError, limit: Duration) -> EvalError {
    match e {
        AbiError::Trap(trap) if is_interrupt(&trap) => EvalError::TimedOut(format!(
            "the wasm policy ran past its {} ms time limit",
            limit.as_millis()
        )),
        AbiError::Trap(trap) => EvalError::Failed(format!("{trap:#}")),
        other => EvalError::Failed(other.to_string()),
    }
}

fn load_error(e: AbiError, limit: Duration) -> LoadError {
    match e {
        AbiError::Trap(trap) if is_interrupt(&trap) => LoadError::Compile(format!(
            "loading the wasm policy took longer than the {} ms time limit",
            limit.as_millis()
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

/// The epoch ticks from now until `deadline`: the budget wasmtime counts down for the module's
/// code. The epoch may advance just after it is read, so one tick more than the time left: the
/// module is stopped no earlier than `deadline` and at most one [`TICK`] after it.
fn epoch_ticks_until(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    u64::try_from(left.as_nanos().div_ceil(TICK.as_nanos()))
        .unwrap_or(u64::MAX)
        .saturating_add(1)
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

    fn set_time_limit(&self, limit: Duration) {
        self.set_limit(limit);
    }

    fn evaluate_json(&self, input: &RawValue) -> Result<Option<serde_json::Value>, EvalError> {
        let limit = self.time_limit();
        let deadline = Instant::now() + limit;
        let mut lease = self.lease(deadline, limit)?;
        let instance = lease
            .instance()
            .expect("a lease holds an instance once made");
        // A trapped instance is not given back (its memory may be half-written): the lease,
        // dropped, frees its place.
        let text = instance
            .evaluate(self.entrypoint, input.get().as_bytes(), deadline)
            .map_err(|e| eval_error(e, limit))?;
        // An instance keeps the memory it grew to; one that grew far is not kept idle.
        if instance.memory_size() <= self.loaded_memory + MAX_POOLED_GROWTH {
            lease.give_back();
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
