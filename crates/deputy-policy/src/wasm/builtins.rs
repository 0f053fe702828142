//! The builtins a compiled policy imports, provided by regorus: the implementations the `rego`
//! engine runs, so both engines format, parse and compute alike, and the conformance check holds
//! both to OPA's own results.
//!
//! opa-wasm, the crate this engine started on, formats `sprintf` with C's printf (no `%v`, no
//! arrays), so every denial reason of the shipped policy trapped in wasm.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use regorus::Value;
use regorus::unstable::{BUILTINS, BuiltinFcn, Expr, Ref, Source, Span};

/// Builtins a policy may not use even though regorus has them: `opa.runtime` would hand a
/// policy deputyd's environment (and through its reasons, the callers); the network ones would
/// let a decision wait on a remote server.
const REFUSED: &[&str] = &["opa.runtime", "http.send", "net.lookup_ip_addr"];

/// Builtins whose result must hold for a whole evaluation, as OPA holds them.
const ONCE_PER_EVALUATION: &[&str] = &["time.now_ns", "rand.intn", "uuid.rfc4122"];

/// Builtins (by name, or by prefix when ending in `.`) whose running time grows with their
/// arguments past any time limit: pattern matching, graph walks, patches, schema checks, and
/// results far larger than their arguments (ranges, repeated replacement). A call of one runs
/// on a thread of its own, so that its decision stops waiting at its deadline.
const MAY_RUN_LONG: &[&str] = &[
    "regex.",
    "glob.",
    "re_match",
    "graph.",
    "walk",
    "json.patch",
    "json.match_schema",
    "json.verify_schema",
    "numbers.range",
    "numbers.range_step",
    "strings.replace_n",
    "replace",
    "strings.render_template",
];

/// Arguments larger than this (as value text) make any builtin's call run on a thread of its
/// own: a call on small arguments ends in microseconds, and crossing to a thread costs more.
const LARGE_ARGUMENTS: usize = 16 * 1024;

/// Most builtin calls of one policy running on threads of their own at once, at least: a call
/// whose decision stopped waiting still runs to its end (host code cannot be interrupted) and
/// counts until then, so inputs crafted to be slow hold at most this many threads (or two per
/// core, where that is more: every live instance may be waiting on one).
const MAX_DETACHED_CALLS: usize = 16;

fn max_detached_calls() -> usize {
    MAX_DETACHED_CALLS.max(2 * super::max_live_instances())
}

fn may_run_long(name: &str) -> bool {
    MAY_RUN_LONG.iter().any(|long| {
        if long.ends_with('.') {
            name.starts_with(long)
        } else {
            name == *long
        }
    })
}

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
    /// Calls running on threads of their own now, across the policy's instances.
    detached: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
struct Resolved {
    name: &'static str,
    function: BuiltinFcn,
    once_per_evaluation: bool,
    may_run_long: bool,
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
                may_run_long: may_run_long(name),
            });
        }
        missing.sort();
        if missing.is_empty() {
            Ok(Self {
                by_id,
                detached: Arc::default(),
            })
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
    /// The decision's deadline came while the builtin ran.
    #[error("a builtin ran past the time limit")]
    TimedOut,
    /// Too many calls of the policy's builtins are still running on threads of their own.
    #[error(
        "builtin {0} was not run: the most slow builtin calls of this policy that may run at \
         once are still running (inputs that make a builtin slow are being sent)"
    )]
    Busy(&'static str),
    /// The builtin panicked (regorus refused its arguments the hard way).
    #[error("builtin {0} failed: it panicked on its arguments")]
    Panicked(&'static str),
    /// No thread could be started for the call.
    #[error("builtin {name}: cannot start a thread for it: {error}")]
    NoThread { name: &'static str, error: String },
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

    /// Calls builtin `id` on `args` (`size` bytes as value text), for a decision due by
    /// `deadline`. An error inside the builtin makes the call undefined, as OPA treats builtin
    /// errors by default (`--strict-builtin-errors` off): `Ok(Value::Undefined)`.
    pub(crate) fn call(
        &mut self,
        id: u32,
        args: Vec<Value>,
        size: usize,
        deadline: Instant,
    ) -> Result<Value, CallError> {
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
        let outcome = if resolved.may_run_long || size > LARGE_ARGUMENTS {
            let call = (self.span.clone(), params.to_vec(), args.clone());
            self.builtins.run_detached(resolved, call, deadline)?
        } else {
            // A builtin that panics on its arguments fails the decision (denied), and leaves
            // the worker and the pool as they were.
            let call = || (resolved.function.0)(&self.span, params, &args, false);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
                .map_err(|_| CallError::Panicked(resolved.name))?
        };
        let value = match outcome {
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

impl Builtins {
    /// Runs `resolved` on a thread of its own and waits for it until `deadline`; past it the
    /// call is abandoned (it runs on to its end, counted in `detached`).
    fn run_detached(
        &self,
        resolved: Resolved,
        (span, params, args): (Span, Vec<Ref<Expr>>, Vec<Value>),
        deadline: Instant,
    ) -> Result<anyhow::Result<Value>, CallError> {
        if self.detached.fetch_add(1, Ordering::AcqRel) >= max_detached_calls() {
            self.detached.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Busy(resolved.name));
        }
        let (send, receive) = std::sync::mpsc::sync_channel(1);
        let running = Running(self.detached.clone());
        std::thread::Builder::new()
            .name("deputy-wasm-builtin".into())
            .spawn(move || {
                let _running = running;
                // The decision may have stopped waiting: then nobody receives, which is fine.
                let _ = send.send((resolved.function.0)(&span, &params, &args, false));
            })
            .map_err(|e| CallError::NoThread {
                name: resolved.name,
                error: e.to_string(),
            })?;
        receive
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| match e {
                std::sync::mpsc::RecvTimeoutError::Timeout => CallError::TimedOut,
                // The thread ended without an answer: the builtin panicked.
                std::sync::mpsc::RecvTimeoutError::Disconnected => {
                    CallError::Panicked(resolved.name)
                }
            })
    }
}

/// One detached call, counted while its thread runs.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A builtin that runs for two seconds, as a regex over a large text may.
    fn slow(_: &Span, _: &[Ref<Expr>], _: &[Value], _: bool) -> anyhow::Result<Value> {
        std::thread::sleep(Duration::from_secs(2));
        Ok(Value::Bool(true))
    }

    fn calls_with(name: &'static str, function: BuiltinFcn) -> (Calls, Arc<AtomicUsize>) {
        let builtins = Builtins {
            by_id: vec![Some(Resolved {
                name,
                function,
                once_per_evaluation: false,
                may_run_long: may_run_long(name),
            })],
            detached: Arc::default(),
        };
        let detached = builtins.detached.clone();
        (Calls::new(builtins), detached)
    }

    #[test]
    fn a_slow_builtin_is_stopped_waiting_for_at_the_deadline() {
        let (mut calls, detached) = calls_with("regex.match", (slow, 0));
        let started = Instant::now();
        let outcome = calls.call(0, Vec::new(), 0, started + Duration::from_millis(50));
        let waited = started.elapsed();
        assert!(matches!(outcome, Err(CallError::TimedOut)), "{outcome:?}");
        assert!(
            waited < Duration::from_millis(1500),
            "the decision waited {waited:?}, as long as the builtin ran"
        );
        assert_eq!(
            detached.load(Ordering::Acquire),
            1,
            "the call runs on, counted"
        );
    }

    #[test]
    fn slow_builtins_past_the_bound_are_refused_not_started() {
        let (mut calls, detached) = calls_with("glob.match", (slow, 0));
        detached.store(max_detached_calls(), Ordering::Release);
        let outcome = calls.call(0, Vec::new(), 0, Instant::now() + Duration::from_secs(5));
        assert!(
            matches!(outcome, Err(CallError::Busy("glob.match"))),
            "{outcome:?}"
        );
        assert_eq!(detached.load(Ordering::Acquire), max_detached_calls());
    }

    fn panics(_: &Span, _: &[Ref<Expr>], _: &[Value], _: bool) -> anyhow::Result<Value> {
        panic!("capacity overflow");
    }

    #[test]
    fn a_builtin_that_panics_fails_the_call_inline_or_detached() {
        for name in ["sprintf", "regex.match"] {
            let (mut calls, detached) = calls_with(name, (panics, 0));
            let outcome = calls.call(0, Vec::new(), 0, Instant::now() + Duration::from_secs(5));
            assert!(
                matches!(outcome, Err(CallError::Panicked(n)) if n == name),
                "{outcome:?}"
            );
            assert_eq!(detached.load(Ordering::Acquire), 0, "{name}");
        }
    }

    #[test]
    fn which_builtins_may_run_long() {
        assert!(may_run_long("regex.match"));
        assert!(may_run_long("glob.match"));
        assert!(may_run_long("re_match"));
        assert!(!may_run_long("sprintf"));
        assert!(!may_run_long("regexp"), "a prefix only counts with its dot");
    }
}
