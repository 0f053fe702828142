//! The builtins a compiled policy imports, provided by regorus: the implementations the `rego`
//! engine runs, so both engines format, parse and compute alike, and the conformance check holds
//! both to OPA's own results.
//!
//! opa-wasm, the crate this engine started on, formats `sprintf` with C's printf (no `%v`, no
//! arrays), so every denial reason of the shipped policy trapped in wasm.

use regorus::Value;
use regorus::unstable::{BUILTINS, BuiltinFcn, Expr, Ref, Source, Span};

/// Builtins a policy may not use even though regorus has them: `opa.runtime` would hand a
/// policy deputyd's environment (and through its reasons, the callers); the network ones would
/// let a decision wait on a remote server.
const REFUSED: &[&str] = &["opa.runtime", "http.send", "net.lookup_ip_addr"];

/// Builtins whose result must hold for a whole evaluation, as OPA holds them.
const ONCE_PER_EVALUATION: &[&str] = &["time.now_ns", "rand.intn", "uuid.rfc4122"];

/// The names of every builtin a wasm policy may import, sorted.
pub fn supported() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = BUILTINS
        .keys()
        .copied()
        .filter(|name| !REFUSED.contains(name))
        .collect();
    names.sort_unstable();
    names
}

/// The builtins of one module, by the ids its `builtins()` export gave them.
#[derive(Clone)]
pub(crate) struct Builtins {
    by_id: Vec<Option<Resolved>>,
}

#[derive(Clone, Copy)]
struct Resolved {
    name: &'static str,
    function: BuiltinFcn,
    once_per_evaluation: bool,
}

impl Builtins {
    /// Resolves `imported` (name to id), or names the ones this engine does not provide.
    pub(crate) fn resolve(imported: &[(String, u32)]) -> Result<Self, Vec<String>> {
        let mut by_id = Vec::new();
        let mut missing = Vec::new();
        for (name, id) in imported {
            let found = BUILTINS
                .get_key_value(name.as_str())
                .filter(|(name, _)| !REFUSED.contains(name));
            let Some((name, function)) = found else {
                missing.push(name.clone());
                continue;
            };
            let slot = usize::try_from(*id).unwrap_or(usize::MAX);
            if slot >= 4096 {
                missing.push(format!("{name} (with the id {id})"));
                continue;
            }
            if by_id.len() <= slot {
                by_id.resize(slot + 1, None);
            }
            by_id[slot] = Some(Resolved {
                name,
                function: *function,
                once_per_evaluation: ONCE_PER_EVALUATION.contains(name),
            });
        }
        missing.sort();
        if missing.is_empty() {
            Ok(Self { by_id })
        } else {
            Err(missing)
        }
    }
}

/// What one instance needs to call builtins: the functions, regorus's call-site placeholders
/// (it reports errors against source spans, which a compiled module does not have), and the
/// results that must repeat within an evaluation.
pub(crate) struct Calls {
    builtins: Builtins,
    span: Span,
    params: Vec<Ref<Expr>>,
    remembered: Vec<(u32, Vec<Value>, Value)>,
}

/// A builtin call that failed in a way the policy must not see as merely undefined.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("the module called builtin id {0}, which it never declared")]
    Unknown(u32),
    /// A resource limit inside the builtin: never undefined, or `not f(x)` would hold.
    #[error("builtin {name}: {error}")]
    Limit { name: &'static str, error: String },
}

impl Calls {
    pub(crate) fn new(builtins: Builtins) -> Self {
        // Source::from_contents fails only past regorus's size limits; an empty text is not.
        let source = Source::from_contents("<compiled policy>".into(), String::new())
            .expect("an empty source is within every limit");
        let span = Span {
            source,
            line: 1,
            col: 1,
            start: 0,
            end: 0,
        };
        let params = (0..4)
            .map(|_| {
                Ref::new(Expr::Null {
                    span: span.clone(),
                    value: Value::Null,
                    eidx: 0,
                })
            })
            .collect();
        Self {
            builtins,
            span,
            params,
            remembered: Vec::new(),
        }
    }

    /// Forgets results held for the previous evaluation.
    pub(crate) fn start_evaluation(&mut self) {
        self.remembered.clear();
    }

    /// Calls builtin `id`. An error inside the builtin makes the call undefined, as OPA treats
    /// builtin errors by default (`--strict-builtin-errors` off): `Ok(Value::Undefined)`.
    pub(crate) fn call(&mut self, id: u32, args: Vec<Value>) -> Result<Value, CallError> {
        let resolved = usize::try_from(id)
            .ok()
            .and_then(|slot| self.builtins.by_id.get(slot).copied().flatten())
            .ok_or(CallError::Unknown(id))?;
        if resolved.once_per_evaluation
            && let Some((_, _, value)) = self
                .remembered
                .iter()
                .find(|(known, known_args, _)| *known == id && *known_args == args)
        {
            return Ok(value.clone());
        }
        let params = &self.params[..args.len().min(self.params.len())];
        let value = match (resolved.function.0)(&self.span, params, &args, false) {
            Ok(value) => value,
            // regorus's own VM makes the same exception in non-strict mode.
            Err(e) if e.downcast_ref::<regorus::LimitError>().is_some() => {
                return Err(CallError::Limit {
                    name: resolved.name,
                    error: e.to_string(),
                });
            }
            Err(e) => {
                tracing::debug!(builtin = resolved.name, error = %e, "builtin error: undefined");
                Value::Undefined
            }
        };
        if resolved.once_per_evaluation {
            self.remembered.push((id, args, value.clone()));
        }
        Ok(value)
    }
}
