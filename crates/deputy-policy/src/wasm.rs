//! The `wasm` engine: a bundle compiled by `opa build -t wasm -e deputy/authz/decision`,
//! evaluated by the opa-wasm crate on wasmtime.
//!
//! - The bundle's data documents are loaded with the module (opa-wasm's loader skips them).
//! - Every builtin the module imports is checked at load against [`SUPPORTED_BUILTINS`]:
//!   opa-wasm links some builtins as stubs that fail only when called, which would turn a
//!   policy's rarely taken branch into a denial in production instead of an error at load.
//! - A wasmtime `Store` is not `Sync`, so instances are pooled: each evaluation takes one (or
//!   makes one), and gives it back unless it trapped.
//! - Evaluation is bounded by wasmtime epochs: a ticker advances the engine's epoch every
//!   [`TICK`], and each evaluation may run for the configured limit in ticks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opa_wasm::wasmtime::{
    self, Engine as WasmEngine, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
};
use opa_wasm::{DefaultContext, Runtime};

use serde_json::value::RawValue;

use crate::bundle::Bundle;
use crate::decision::ENTRYPOINT;
use crate::idle::Idle;
use crate::{Engine, EvalError, LoadError};

/// The builtins deputyd provides to wasm policies: those opa-wasm implements (with the features
/// Deputy enables), except `opa.runtime`, which would hand a policy deputyd's environment
/// variables (and through its reasons, the callers). Builtins the OPA compiler builds into the module itself (string, set,
/// object, comparison and most others) are not imported and need nothing here.
pub const SUPPORTED_BUILTINS: &[&str] = &[
    "base64url.encode_no_pad",
    "crypto.hmac.md5",
    "crypto.hmac.sha1",
    "crypto.hmac.sha256",
    "crypto.hmac.sha512",
    "crypto.md5",
    "crypto.sha1",
    "crypto.sha256",
    "hex.decode",
    "hex.encode",
    "indexof_n",
    "json.patch",
    "semver.compare",
    "semver.is_valid",
    "sprintf",
    "time.add_date",
    "time.clock",
    "time.date",
    "time.diff",
    "time.now_ns",
    "time.parse_duration_ns",
    "time.parse_ns",
    "time.parse_rfc3339_ns",
    "time.weekday",
    "units.parse",
    "units.parse_bytes",
    "urlquery.decode",
    "urlquery.decode_object",
    "urlquery.encode",
    "urlquery.encode_object",
];

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

struct Instance {
    store: Store<StoreLimits>,
    policy: opa_wasm::Policy<DefaultContext>,
}

/// A compiled wasm policy with its data.
pub struct WasmPolicy {
    engine: WasmEngine,
    module: Module,
    data: serde_json::Value,
    revision: String,
    builtins: Vec<String>,
    pool: Idle<Instance>,
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("revision", &self.revision)
            .field("builtins", &self.builtins)
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

    /// Compiles `bundle` and checks it: a valid OPA module, the entrypoint
    /// `deputy/authz/decision`, and only supported builtins.
    pub fn from_bundle(bundle: Bundle) -> Result<Self, LoadError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine =
            WasmEngine::new(&config).map_err(|e| LoadError::Compile(format!("wasmtime: {e}")))?;
        let module = Module::new(&engine, &bundle.wasm).map_err(|e| {
            LoadError::Compile(format!("policy.wasm is not a valid wasm module: {e}"))
        })?;
        // The ticker runs before any of the module's code: loading is bounded too.
        let ticking = Arc::new(AtomicBool::new(true));
        start_ticker(engine.clone(), ticking.clone());
        let ticker = TickerGuard(Some(ticking.clone()));
        let builtins = futures::executor::block_on(imported_builtins(&engine, &module))?;
        let unsupported: Vec<&str> = builtins
            .iter()
            .map(String::as_str)
            .filter(|b| !SUPPORTED_BUILTINS.contains(b))
            .collect();
        if !unsupported.is_empty() {
            return Err(LoadError::Compile(format!(
                "the policy needs builtins the wasm engine does not provide: {}; rewrite those \
                 rules, or serve the Rego sources with engine = \"rego\" (supported: {})",
                unsupported.join(", "),
                SUPPORTED_BUILTINS.join(", ")
            )));
        }
        ticker.disarm();
        let policy = Self {
            engine,
            module,
            data: bundle.data,
            revision: bundle.revision,
            builtins,
            pool: Idle::default(),
            ticking,
        };
        // One instance now: a module that cannot be instantiated, or lacks the entrypoint,
        // fails the load rather than the first call.
        let instance = policy.instantiate()?;
        let entrypoints = instance.policy.entrypoints();
        if !entrypoints.contains(ENTRYPOINT) {
            let mut found: Vec<&str> = entrypoints.into_iter().collect();
            found.sort_unstable();
            return Err(LoadError::MissingEntrypoint {
                found: format!(
                    "entrypoints {} (build with -e {ENTRYPOINT})",
                    found.join(", ")
                ),
            });
        }
        policy.pool.give_back(instance);
        Ok(policy)
    }

    /// The builtins the module imports.
    pub fn builtins(&self) -> &[String] {
        &self.builtins
    }

    fn instantiate(&self) -> Result<Instance, LoadError> {
        let mut store = new_store(&self.engine);
        // Loading runs OPA code too (the data is parsed inside the module): bound it as well.
        store.set_epoch_deadline(deadline_ticks());
        store.epoch_deadline_trap();
        let policy = futures::executor::block_on(async {
            let runtime = Runtime::new(&mut store, &self.module).await?;
            runtime.with_data(&mut store, &self.data).await
        })
        .map_err(|e| {
            LoadError::Compile(format!("the wasm policy cannot be instantiated: {e:#}"))
        })?;
        Ok(Instance { store, policy })
    }
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

/// Most memory one instance may grow to: OPA modules import a memory without a maximum.
pub const MAX_INSTANCE_MEMORY: usize = 256 * 1024 * 1024;

/// A store whose memory is capped.
fn new_store(engine: &WasmEngine) -> Store<StoreLimits> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(MAX_INSTANCE_MEMORY)
        .instances(2)
        .build();
    let mut store = Store::new(engine, limits);
    store.limiter(|limits| limits);
    store
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

/// Instantiates `module` with every import but its memory trapping, and asks it which builtins
/// it imports (the `builtins` export, a JSON object of name to id).
async fn imported_builtins(engine: &WasmEngine, module: &Module) -> Result<Vec<String>, LoadError> {
    let invalid = |what: String| {
        LoadError::Compile(format!(
            "policy.wasm is not an OPA policy module ({what}); build it with `opa build -t wasm`"
        ))
    };
    let mut store = new_store(engine);
    store.set_epoch_deadline(deadline_ticks());
    store.epoch_deadline_trap();
    let memory_type = module
        .imports()
        .find(|i| i.module() == "env" && i.name() == "memory")
        .and_then(|i| i.ty().memory().cloned())
        .ok_or_else(|| invalid("no env.memory import".into()))?;
    let memory = Memory::new_async(&mut store, memory_type)
        .await
        .map_err(|e| invalid(format!("its memory: {e}")))?;
    let mut linker = Linker::new(engine);
    linker
        .define(&store, "env", "memory", memory)
        .map_err(|e| invalid(e.to_string()))?;
    linker
        .define_unknown_imports_as_traps(module)
        .map_err(|e| invalid(e.to_string()))?;
    let instance = linker
        .instantiate_async(&mut store, module)
        .await
        .map_err(|e| invalid(format!("{e:#}")))?;
    let builtins = instance
        .get_typed_func::<(), i32>(&mut store, "builtins")
        .map_err(|e| invalid(format!("export builtins: {e}")))?
        .call_async(&mut store, ())
        .await
        .map_err(|e| invalid(format!("builtins(): {e:#}")))?;
    let text = instance
        .get_typed_func::<i32, i32>(&mut store, "opa_json_dump")
        .map_err(|e| invalid(format!("export opa_json_dump: {e}")))?
        .call_async(&mut store, builtins)
        .await
        .map_err(|e| invalid(format!("opa_json_dump(): {e:#}")))?;
    let bytes = memory.data(&store);
    let start = usize::try_from(text).map_err(|_| invalid("a negative address".into()))?;
    let tail = bytes
        .get(start..)
        .ok_or_else(|| invalid("an address outside its memory".into()))?;
    let end = tail
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| invalid("an unterminated string".into()))?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&tail[..end])
        .map_err(|e| invalid(format!("builtins() is not a JSON object: {e}")))?;
    let mut names: Vec<String> = map.into_iter().map(|(k, _)| k).collect();
    names.sort();
    Ok(names)
}

impl Engine for WasmPolicy {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn revision(&self) -> &str {
        &self.revision
    }

    fn evaluate_json(&self, input: &RawValue) -> Result<Option<serde_json::Value>, EvalError> {
        let pooled = self.pool.take();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => self
                .instantiate()
                .map_err(|e| EvalError::Failed(e.to_string()))?,
        };
        instance.store.set_epoch_deadline(deadline_ticks());
        let Instance { store, policy } = &mut instance;
        let evaluated = futures::executor::block_on(policy.evaluate::<_, serde_json::Value, _>(
            &mut *store,
            ENTRYPOINT,
            &input,
        ));
        let value = match evaluated {
            Ok(value) => value,
            Err(e) => {
                // A trapped instance is not given back: its memory may be half-written.
                let interrupted = e
                    .downcast_ref::<wasmtime::Trap>()
                    .is_some_and(|t| *t == wasmtime::Trap::Interrupt);
                let message = format!("{e:#}");
                return Err(if interrupted || message.contains("interrupt") {
                    EvalError::TimedOut(format!(
                        "the wasm policy was interrupted after {} ms",
                        TIME_LIMIT_MS.load(Ordering::Relaxed)
                    ))
                } else {
                    EvalError::Failed(message)
                });
            }
        };
        self.pool.give_back(instance);
        // OPA's result set: `[]` when undefined, else `[{"result": value}]`.
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
