//! Values deep inside `params` that a policy reads: an MCP tool's declared arguments
//! (`params.arguments` + a JSON pointer) and an A2A message's skill
//! (`params.message.metadata.skill`).
//!
//! Only what the service declared is captured, and only scalars: a policy decides on a
//! customer id, not on a document. A watched value too long to hold, given twice, spelt so a
//! case-insensitive server would read it as the watched one, or that is not a scalar is refused,
//! never cut or ignored: the server must act on exactly the value the policy judged.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::BodyRefused;

/// Most argument pointers a service may declare.
pub const MAX_ARGUMENTS: usize = 16;

/// Most segments in one pointer.
const MAX_SEGMENTS: usize = 8;

/// Longest pointer, in bytes.
const MAX_POINTER_BYTES: usize = 128;

/// Longest string value captured, in bytes (decoded).
pub const MAX_ARGUMENT_BYTES: usize = 256;

/// Longest number, `true`, `false` or `null` as written.
pub(super) const MAX_SCALAR_BYTES: usize = 32;

/// Integers beyond this are read differently by JSON parsers (JavaScript's and Go's
/// `interface{}` round to a double, Python's are exact): the policy could judge one number and
/// the server act on another.
const EXACT_INTEGER: u64 = 1 << 53;

/// The argument paths a service lets its policy read: JSON pointers into a tool call's
/// `arguments` (`/customer_id`, `/filter/team`), addressing object members only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgumentPointers(Arc<[String]>);

impl ArgumentPointers {
    /// Validates `pointers` (RFC 6901): at most [`MAX_ARGUMENTS`], each starting with `/`, at
    /// most 8 segments and 128 bytes, no two alike.
    pub fn parse(pointers: &[String]) -> Result<Self, String> {
        if pointers.len() > MAX_ARGUMENTS {
            return Err(format!(
                "{} argument pointers are declared; at most {MAX_ARGUMENTS} may be",
                pointers.len()
            ));
        }
        for (i, pointer) in pointers.iter().enumerate() {
            let segments = segments(pointer)?;
            if segments.len() > MAX_SEGMENTS || pointer.len() > MAX_POINTER_BYTES {
                return Err(format!(
                    "argument pointer {pointer:?} is longer than {MAX_SEGMENTS} segments or \
                     {MAX_POINTER_BYTES} bytes"
                ));
            }
            if let Some(index) = segments
                .iter()
                .find(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(format!(
                    "argument pointer {pointer:?} has the segment {index:?}, which could be an \
                     array index; pointers address object members only"
                ));
            }
            if pointers[..i].contains(pointer) {
                return Err(format!("argument pointer {pointer:?} is declared twice"));
            }
            let nested_in = pointers.iter().find(|other| {
                other.len() < pointer.len()
                    && pointer.starts_with(other.as_str())
                    && pointer.as_bytes()[other.len()] == b'/'
            });
            if let Some(outer) = nested_in {
                return Err(format!(
                    "argument pointer {pointer:?} lies inside {outer:?}, which the policy reads \
                     as a scalar; declare one of them"
                ));
            }
        }
        Ok(Self(pointers.iter().cloned().collect()))
    }

    /// The declared pointers, as written.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// No pointer is declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A pointer's segments, `~1` and `~0` unescaped.
fn segments(pointer: &str) -> Result<Vec<String>, String> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "argument pointer {pointer:?} must start with `/` (a JSON pointer into the tool's \
             arguments, such as \"/customer_id\")"
        ));
    };
    rest.split('/')
        .map(|segment| {
            let bad_escape = segment
                .match_indices('~')
                .any(|(i, _)| !matches!(segment.as_bytes().get(i + 1), Some(b'0' | b'1')));
            if bad_escape {
                return Err(format!(
                    "argument pointer {pointer:?} has a `~` that is not `~0` or `~1`"
                ));
            }
            Ok(segment.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

/// One watched value: where it is under `params`, and what it is reported as.
#[derive(Debug, Clone)]
struct Watched {
    path: Vec<String>,
    /// The declared pointer (the key of `mcp.arguments`), or the A2A skill.
    name: String,
    strings_only: bool,
}

/// What a watched path leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lead {
    /// The value of watched item `i`.
    Value(usize),
    /// An object on the way to a watched value.
    Through,
    Nothing,
}

/// The capture state of the watched values of one body.
#[derive(Debug, Default)]
pub(super) struct Watch {
    watched: Vec<Watched>,
    values: Vec<Option<serde_json::Value>>,
    /// Paths (under `params`) met so far that lead to a watched value: met twice is refused.
    met: Vec<Vec<String>>,
}

impl Watch {
    /// Watches `params.arguments` + each pointer.
    pub(super) fn arguments(pointers: &ArgumentPointers) -> Self {
        let watched = pointers
            .as_slice()
            .iter()
            .map(|pointer| {
                let mut path = vec!["arguments".to_owned()];
                // Validated by `ArgumentPointers::parse`.
                path.extend(segments(pointer).unwrap_or_default());
                Watched {
                    path,
                    name: pointer.clone(),
                    strings_only: false,
                }
            })
            .collect();
        Self::of(watched)
    }

    /// Watches an A2A message's skill.
    pub(super) fn skill() -> Self {
        Self::of(vec![Watched {
            path: ["message", "metadata", "skill"].map(String::from).to_vec(),
            name: "skill".into(),
            strings_only: true,
        }])
    }

    fn of(watched: Vec<Watched>) -> Self {
        Self {
            values: vec![None; watched.len()],
            watched,
            met: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    pub(super) fn all_captured(&self) -> bool {
        self.values.iter().all(Option::is_some)
    }

    /// Where `path` (under `params`) leads.
    pub(super) fn lead(&self, path: &[String]) -> Lead {
        let mut through = false;
        for (i, watched) in self.watched.iter().enumerate() {
            if watched.path == path {
                return Lead::Value(i);
            }
            through |= watched.path.len() > path.len() && watched.path.starts_with(path);
        }
        if through {
            Lead::Through
        } else {
            Lead::Nothing
        }
    }

    /// A key was read in the watched object at `parent`: refused when a server matching keys
    /// without regard to case would read it as a watched one it is not, or when it leads to a
    /// watched value and was met before.
    pub(super) fn key(&mut self, parent: &[String], key: &str) -> Result<(), BodyRefused> {
        let depth = parent.len();
        for watched in &self.watched {
            let Some(meant) = watched.path.get(depth) else {
                continue;
            };
            if watched.path.starts_with(parent) && key != meant && folded(key) == folded(meant) {
                return Err(BodyRefused(format!(
                    "the JSON-RPC params hold a key {key:?}, which servers that match keys \
                     without regard to case read as {meant:?}, a value the policy reads; write \
                     {meant:?} exactly"
                )));
            }
        }
        let mut path = parent.to_vec();
        path.push(key.to_owned());
        if self.lead(&path) == Lead::Nothing {
            return Ok(());
        }
        if self.met.contains(&path) {
            return Err(BodyRefused(format!(
                "the JSON-RPC params give `{}` twice; JSON parsers disagree on which one counts, \
                 so Deputy refuses it",
                path.join(".")
            )));
        }
        self.met.push(path);
        Ok(())
    }

    /// A watched string value was read.
    pub(super) fn string(&mut self, i: usize, text: Option<String>) -> Result<(), BodyRefused> {
        let name = &self.watched[i].name;
        let text = text
            .filter(|t| t.len() <= MAX_ARGUMENT_BYTES)
            .ok_or_else(|| {
                BodyRefused(format!(
                    "the value of {name} is longer than {MAX_ARGUMENT_BYTES} bytes, the most a \
                     policy reads; it is refused rather than cut"
                ))
            })?;
        self.values[i] = Some(serde_json::Value::String(text));
        Ok(())
    }

    /// A watched number, boolean or null, as written (`None`: longer than any we read).
    pub(super) fn scalar(&mut self, i: usize, written: Option<&[u8]>) -> Result<(), BodyRefused> {
        let watched = &self.watched[i];
        let name = &watched.name;
        let refused = |why: &str| Err(BodyRefused(format!("the value of {name} {why}")));
        if watched.strings_only {
            return refused("must be a string");
        }
        let Some(value) = written
            .filter(|w| w.len() <= MAX_SCALAR_BYTES)
            .and_then(|w| serde_json::from_slice::<serde_json::Value>(w).ok())
        else {
            return refused("is not a JSON number, boolean or null a policy can read");
        };
        if let serde_json::Value::Number(number) = &value {
            let exact = |n: u64| n <= EXACT_INTEGER;
            let beyond = match (number.as_u64(), number.as_i64(), number.as_f64()) {
                (Some(n), _, _) => !exact(n),
                (_, Some(n), _) => !exact(n.unsigned_abs()),
                // A float written with a fraction or exponent: whole ones beyond 2^53 are not
                // exact either.
                (_, _, Some(f)) => f.fract() == 0.0 && f.abs() >= 9_007_199_254_740_992.0,
                _ => true,
            };
            if beyond {
                return refused(
                    "is an integer beyond 2^53, which JSON parsers read differently; send it as \
                     a string",
                );
            }
        }
        self.values[i] = Some(value);
        Ok(())
    }

    /// A watched path holds an object or an array.
    pub(super) fn structured(&self, i: usize) -> BodyRefused {
        BodyRefused(format!(
            "the value of {} is an object or an array; a policy reads strings, numbers and \
             booleans only, so declare a pointer to one of those",
            self.watched[i].name
        ))
    }

    /// The values captured, by name.
    pub(super) fn values(&self) -> BTreeMap<String, serde_json::Value> {
        self.watched
            .iter()
            .zip(&self.values)
            .filter_map(|(w, v)| Some((w.name.clone(), v.clone()?)))
            .collect()
    }

    /// The first captured value, if a string (the A2A skill).
    pub(super) fn first_string(&self) -> Option<String> {
        match self.values.first()? {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }
}

/// `key` as a server matching keys without regard to case reads it (Unicode lower case, and
/// the folds `ſ` = `s`, `K` = `k` and `ı` = `İ` = `i`, as Go's encoding/json does).
pub(super) fn folded(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '\u{17F}' => out.push('s'),
            '\u{212A}' => out.push('k'),
            // Go folds a key as upper(lower(c)): both Turkish i's become `I`.
            '\u{130}' | '\u{131}' => out.push('i'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}
