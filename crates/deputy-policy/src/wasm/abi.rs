//! One instance of a module compiled by `opa build -t wasm`, spoken to through OPA's wasm ABI
//! (1.2 and later: the one-call `opa_eval`), on wasmtime directly.
//!
//! The module owns its heap: deputyd writes the data document once, notes the heap pointer
//! after it, and for every evaluation writes the input there and lets `opa_eval` reset the heap
//! to just past the input, so nothing an evaluation allocates outlives it.

use std::time::Instant;

use regorus::Value;
use wasmtime::{
    AsContext, Caller, Engine as WasmEngine, Extern, Instance as WasmInstance, Linker, Memory,
    Module, Store, StoreLimits, StoreLimitsBuilder, TypedFunc, Val,
};

use super::builtins::{Builtins, CallError, Calls};
use super::value_text;

/// Most memory one instance may grow to: OPA modules import a memory without a maximum.
pub const MAX_INSTANCE_MEMORY: usize = 256 * 1024 * 1024;

/// What the host functions the module imports need.
pub(crate) struct Host {
    limits: StoreLimits,
    memory: Option<Memory>,
    exports: Option<Exports>,
    calls: Option<Calls>,
    /// Why the module called `opa_abort`, for the error.
    aborted: Option<String>,
    /// When the running evaluation must end, for the builtins (host code epochs do not reach).
    deadline: Option<Instant>,
}

/// `opa_eval(reserved, entrypoint, data, input, input_len, heap_ptr, format)`.
type EvalArgs = (i32, i32, i32, i32, i32, i32, i32);

/// The module's exports deputyd calls.
#[derive(Clone)]
struct Exports {
    malloc: TypedFunc<i32, i32>,
    json_parse: TypedFunc<(i32, i32), i32>,
    json_dump: TypedFunc<i32, i32>,
    value_parse: TypedFunc<(i32, i32), i32>,
    value_dump: TypedFunc<i32, i32>,
    free: TypedFunc<i32, ()>,
    heap_ptr_get: TypedFunc<(), i32>,
    eval: TypedFunc<EvalArgs, i32>,
}

/// A failure speaking to the module; the text says what and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AbiError {
    #[error(
        "policy.wasm is not an OPA policy module ({0}); build it with `opa build -t wasm -e \
         deputy/authz/decision`"
    )]
    NotOpa(String),
    #[error(
        "policy.wasm speaks OPA's wasm ABI {0}; deputyd needs 1.2 or later: rebuild it with a \
         current `opa build -t wasm`"
    )]
    OldAbi(String),
    #[error("the policy aborted: {0}")]
    Aborted(String),
    #[error("{0}")]
    Trap(wasmtime::Error),
}

/// An instantiated module with its data loaded, ready to evaluate.
pub(crate) struct Instance {
    store: Store<Host>,
    exports: Exports,
    data: i32,
    heap_after_data: i32,
    memory: Memory,
}

/// The module's `builtins()` and `entrypoints()` maps.
pub(crate) struct Declared {
    pub(crate) builtins: Vec<(String, u32)>,
    pub(crate) entrypoints: Vec<(String, u32)>,
}

fn not_opa(what: impl std::fmt::Display) -> AbiError {
    AbiError::NotOpa(what.to_string())
}

impl Instance {
    /// Instantiates `module` in a store bounded to [`MAX_INSTANCE_MEMORY`], its code stopped
    /// at `deadline`, and reads what it declares. Builtins are resolved by the caller
    /// ([`Instance::load`]); none can run before that.
    pub(crate) fn new(
        engine: &WasmEngine,
        module: &Module,
        deadline: Instant,
    ) -> Result<(Self, Declared), AbiError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(MAX_INSTANCE_MEMORY)
            .instances(2)
            .build();
        let host = Host {
            limits,
            memory: None,
            exports: None,
            calls: None,
            aborted: None,
            deadline: Some(deadline),
        };
        let mut store = Store::new(engine, host);
        store.limiter(|host| &mut host.limits);
        store.set_epoch_deadline(super::epoch_ticks_until(deadline));
        store.epoch_deadline_trap();

        let memory_type = module
            .imports()
            .find(|i| i.module() == "env" && i.name() == "memory")
            .and_then(|i| i.ty().memory().cloned())
            .ok_or_else(|| not_opa("no env.memory import"))?;
        let memory = Memory::new(&mut store, memory_type).map_err(not_opa)?;
        store.data_mut().memory = Some(memory);
        let linker = linker(engine, &store, memory).map_err(not_opa)?;
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| not_opa(format!("{e:#}")))?;
        check_abi(&mut store, &instance)?;
        let exports = Exports::of(&mut store, &instance)?;
        store.data_mut().exports = Some(exports.clone());
        let mut this = Self {
            store,
            exports,
            data: 0,
            heap_after_data: 0,
            memory,
        };
        let declared = Declared {
            builtins: this.declared_map(&instance, "builtins")?,
            entrypoints: this.declared_map(&instance, "entrypoints")?,
        };
        Ok((this, declared))
    }

    /// Gives the instance its builtins and its data document (JSON text), by `deadline`.
    pub(crate) fn load(
        &mut self,
        builtins: Builtins,
        data: &[u8],
        deadline: Instant,
    ) -> Result<(), AbiError> {
        self.set_deadline(deadline);
        self.store.data_mut().calls = Some(Calls::new(builtins));
        let text = self.write_bytes(data)?;
        let len = i32::try_from(data.len()).map_err(|_| not_opa("data too large"))?;
        let value = self.call(|e| &e.json_parse, (text, len))?;
        if value == 0 {
            return Err(not_opa("it cannot parse the bundle's data.json"));
        }
        self.data = value;
        self.heap_after_data = self.call(|e| &e.heap_ptr_get, ())?;
        Ok(())
    }

    /// Evaluates entrypoint `entrypoint` on `input` (JSON text), stopped at `deadline`;
    /// returns the result set's JSON text.
    pub(crate) fn evaluate(
        &mut self,
        entrypoint: u32,
        input: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, AbiError> {
        self.set_deadline(deadline);
        if let Some(calls) = self.store.data_mut().calls.as_mut() {
            calls.start_evaluation();
        }
        let at = self.heap_after_data;
        let len = i32::try_from(input.len()).map_err(|_| not_opa("input too large"))?;
        let start = usize::try_from(at).map_err(|_| not_opa("a negative heap pointer"))?;
        let end = start + input.len();
        let have = self.memory.data_size(&self.store);
        if end > have {
            let pages = (end - have).div_ceil(65536) as u64;
            self.memory.grow(&mut self.store, pages).map_err(|e| {
                AbiError::Trap(e.context("the input does not fit in the module's memory"))
            })?;
        }
        self.memory
            .write(&mut self.store, start, input)
            .map_err(|e| not_opa(e.to_string()))?;
        let entrypoint = i32::try_from(entrypoint).map_err(|_| not_opa("entrypoint id"))?;
        let args = (0, entrypoint, self.data, at, len, at + len, 0);
        let result = self.call(|e| &e.eval, args)?;
        Ok(read_text(&self.store, self.memory, result)?.to_vec())
    }

    /// Stops the module's code (epochs) and its builtins (checked by the host) at `deadline`.
    fn set_deadline(&mut self, deadline: Instant) {
        self.store
            .set_epoch_deadline(super::epoch_ticks_until(deadline));
        self.store.data_mut().deadline = Some(deadline);
    }

    /// Bytes of linear memory the instance holds now (it never shrinks).
    pub(crate) fn memory_size(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        func: impl FnOnce(&Exports) -> &TypedFunc<P, R>,
        args: P,
    ) -> Result<R, AbiError> {
        func(&self.exports)
            .call(&mut self.store, args)
            .map_err(|e| match self.store.data_mut().aborted.take() {
                Some(message) => AbiError::Aborted(message),
                None => AbiError::Trap(e),
            })
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<i32, AbiError> {
        let len = i32::try_from(bytes.len()).map_err(|_| not_opa("a value too large"))?;
        let at = self.call(|e| &e.malloc, len)?;
        let start = usize::try_from(at).map_err(|_| not_opa("opa_malloc failed"))?;
        self.memory
            .write(&mut self.store, start, bytes)
            .map_err(|e| not_opa(format!("opa_malloc gave memory it lacks: {e}")))?;
        Ok(at)
    }

    /// A `builtins()` or `entrypoints()` map: a JSON object of name to id.
    fn declared_map(
        &mut self,
        instance: &WasmInstance,
        export: &str,
    ) -> Result<Vec<(String, u32)>, AbiError> {
        let func = instance
            .get_typed_func::<(), i32>(&mut self.store, export)
            .map_err(|e| not_opa(format!("export {export}: {e}")))?;
        let value = func
            .call(&mut self.store, ())
            .map_err(|e| not_opa(format!("{export}(): {e:#}")))?;
        let text = self.call(|e| &e.json_dump, value)?;
        let bytes = read_text(&self.store, self.memory, text)?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
            .map_err(|e| not_opa(format!("{export}() is not a JSON object: {e}")))?;
        map.into_iter()
            .map(
                |(name, id)| match id.as_u64().and_then(|id| u32::try_from(id).ok()) {
                    Some(id) => Ok((name, id)),
                    None => Err(not_opa(format!("{export}() gives {name} the id {id}"))),
                },
            )
            .collect()
    }
}

impl Exports {
    fn of(store: &mut Store<Host>, instance: &WasmInstance) -> Result<Self, AbiError> {
        fn get<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
            store: &mut Store<Host>,
            instance: &WasmInstance,
            name: &str,
        ) -> Result<TypedFunc<P, R>, AbiError> {
            instance
                .get_typed_func(&mut *store, name)
                .map_err(|e| not_opa(format!("export {name}: {e}")))
        }
        Ok(Self {
            malloc: get(store, instance, "opa_malloc")?,
            json_parse: get(store, instance, "opa_json_parse")?,
            json_dump: get(store, instance, "opa_json_dump")?,
            value_parse: get(store, instance, "opa_value_parse")?,
            value_dump: get(store, instance, "opa_value_dump")?,
            free: get(store, instance, "opa_free")?,
            heap_ptr_get: get(store, instance, "opa_heap_ptr_get")?,
            eval: get(store, instance, "opa_eval")?,
        })
    }
}

/// Refuses modules older than ABI 1.2, which lack `opa_eval`.
fn check_abi(store: &mut Store<Host>, instance: &WasmInstance) -> Result<(), AbiError> {
    let mut global = |name: &str| match instance.get_export(&mut *store, name) {
        Some(Extern::Global(g)) => match g.get(&mut *store) {
            Val::I32(v) => Ok(v),
            _ => Err(not_opa(format!("{name} is not an i32"))),
        },
        _ => Err(not_opa(format!("no {name} export"))),
    };
    let major = global("opa_wasm_abi_version")?;
    let minor = global("opa_wasm_abi_minor_version")?;
    if major != 1 || minor < 2 {
        return Err(AbiError::OldAbi(format!("{major}.{minor}")));
    }
    Ok(())
}

/// The NUL-terminated text at `at`.
fn read_text(store: &impl AsContext, memory: Memory, at: i32) -> Result<&[u8], AbiError> {
    let bytes = memory.data(store);
    let start = usize::try_from(at).map_err(|_| not_opa("a negative address"))?;
    if at == 0 {
        return Err(not_opa("it returned no text (an allocation failed?)"));
    }
    let tail = bytes
        .get(start..)
        .ok_or_else(|| not_opa("an address outside its memory"))?;
    let end = tail
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| not_opa("an unterminated string"))?;
    Ok(&tail[..end])
}

/// The host functions a compiled policy imports.
fn linker(
    engine: &WasmEngine,
    store: &Store<Host>,
    memory: Memory,
) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    linker.define(store, "env", "memory", memory)?;
    linker.func_wrap(
        "env",
        "opa_abort",
        |mut caller: Caller<'_, Host>, at: i32| -> wasmtime::Result<()> {
            let message = text_in_caller(&mut caller, at);
            caller.data_mut().aborted = Some(message.clone());
            Err(wasmtime::Error::msg(message))
        },
    )?;
    linker.func_wrap(
        "env",
        "opa_println",
        |mut caller: Caller<'_, Host>, at: i32| {
            // A policy's print() may show input values (headers, query values): debug level
            // only, and as a quoted field, so that it can neither leak by default nor forge lines.
            let message = text_in_caller(&mut caller, at);
            tracing::debug!(target: "deputy::policy::print", message = message.as_str());
        },
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin0",
        |mut c: Caller<'_, Host>, id: i32, _: i32| builtin(&mut c, id, &[]),
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin1",
        |mut c: Caller<'_, Host>, id: i32, _: i32, a: i32| builtin(&mut c, id, &[a]),
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin2",
        |mut c: Caller<'_, Host>, id: i32, _: i32, a: i32, b: i32| builtin(&mut c, id, &[a, b]),
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin3",
        |mut c: Caller<'_, Host>, id: i32, _: i32, a: i32, b: i32, d: i32| {
            builtin(&mut c, id, &[a, b, d])
        },
    )?;
    linker.func_wrap(
        "env",
        "opa_builtin4",
        |mut c: Caller<'_, Host>, id: i32, _: i32, a: i32, b: i32, d: i32, e: i32| {
            builtin(&mut c, id, &[a, b, d, e])
        },
    )?;
    Ok(linker)
}

fn text_in_caller(caller: &mut Caller<'_, Host>, at: i32) -> String {
    match caller.data().memory {
        Some(memory) => read_text(&*caller, memory, at)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_else(|e| e.to_string()),
        None => "(no memory)".into(),
    }
}

/// One builtin call from the module: the arguments are read as OPA value text, the result is
/// written back the same way; 0 means undefined.
fn builtin(caller: &mut Caller<'_, Host>, id: i32, args: &[i32]) -> wasmtime::Result<i32> {
    let host = caller.data();
    // Epochs interrupt only the module's own code; a builtin runs on the host. One called past
    // the deadline ends the evaluation as the epoch would have.
    let Some(deadline) = host.deadline.filter(|deadline| Instant::now() <= *deadline) else {
        return Err(wasmtime::Error::new(wasmtime::Trap::Interrupt));
    };
    let (Some(exports), Some(memory)) = (host.exports.clone(), host.memory) else {
        return Err(wasmtime::Error::msg(
            "a builtin was called before the module was loaded",
        ));
    };
    let mut values = Vec::with_capacity(args.len());
    let mut size = 0;
    for &arg in args {
        let text = exports.value_dump.call(&mut *caller, arg)?;
        let value = {
            let bytes = read_text(&*caller, memory, text).map_err(wasmtime::Error::msg)?;
            size += bytes.len();
            let text = std::str::from_utf8(bytes).map_err(wasmtime::Error::msg)?;
            value_text::parse(text).map_err(wasmtime::Error::msg)?
        };
        exports.free.call(&mut *caller, text)?;
        values.push(value);
    }
    // Reading large arguments takes time on the host too.
    if Instant::now() > deadline {
        return Err(wasmtime::Error::new(wasmtime::Trap::Interrupt));
    }
    let id = u32::try_from(id).map_err(|_| wasmtime::Error::msg("a negative builtin id"))?;
    let calls =
        caller.data_mut().calls.as_mut().ok_or_else(|| {
            wasmtime::Error::msg("a builtin was called before they were resolved")
        })?;
    let value: Value = match calls.call(id, values, size, deadline) {
        Ok(value) => value,
        Err(CallError::TimedOut) => return Err(wasmtime::Error::new(wasmtime::Trap::Interrupt)),
        Err(e) => return Err(wasmtime::Error::msg(e)),
    };
    let Some(text) = value_text::write(&value).map_err(wasmtime::Error::msg)? else {
        return Ok(0);
    };
    let len = i32::try_from(text.len()).map_err(wasmtime::Error::msg)?;
    let at = exports.malloc.call(&mut *caller, len)?;
    let start = usize::try_from(at).map_err(wasmtime::Error::msg)?;
    memory.write(&mut *caller, start, text.as_bytes())?;
    // Not freed: the parsed value may point into the text, and the heap is reset after the
    // evaluation anyway.
    let parsed = exports.value_parse.call(&mut *caller, (at, len))?;
    if parsed == 0 {
        // 0 would read as undefined and could turn a `not` around: a defined result the
        // module cannot read is an error.
        return Err(wasmtime::Error::msg(
            "the module could not read a builtin's result back",
        ));
    }
    Ok(parsed)
}
