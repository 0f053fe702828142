//! Reading the JSON-RPC call out of a request body while it streams.
//!
//! A policy about MCP tools needs the JSON-RPC `method` and what the call is about: the tool of
//! a `tools/call` or the prompt of a `prompts/get` (`params.name`), the resource of a
//! `resources/read` (`params.uri`), and the tool arguments the service declared
//! ([`ArgumentPointers`]). An A2A call is judged by its method and the skill its message names.
//! They are read by a push parser fed the body chunk by chunk: deputyd holds the body back only
//! until all are known (or a bound is reached), decides, and then lets the body stream on
//! through the same inspector.
//!
//! The inspector keeps watching after the decision because the agent writes the body and the
//! server reads all of it: a second top-level `method`, a second `params.name` (JSON parsers
//! disagree on which of two duplicate keys wins), a `method` that first appears after the
//! decision, or a JSON-RPC batch element are all refusals. On the data path a refusal after the
//! decision aborts the stream, so the server never receives a complete body it could act on.

mod list;
mod sse;
mod watch;

use crate::input::{A2a, Mcp};
pub use list::{ListKind, Listed, MAX_LIST_BYTES, cannot_hold_a_list, filter_message, list_kind};
pub use sse::SseFilter;
pub use watch::{ArgumentPointers, MAX_ARGUMENT_BYTES, MAX_ARGUMENTS};
use watch::{Lead, MAX_SCALAR_BYTES, Watch, folded};

/// How a service's calls are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Protocol {
    /// MCP (and any JSON-RPC body sent to a service not marked otherwise): judged by method,
    /// tool, prompt or resource, and the declared tool arguments.
    Mcp(ArgumentPointers),
    /// A2A: judged by method and skill.
    A2a,
    /// Not marked: a JSON-RPC body is read as MCP without arguments.
    #[default]
    Unmarked,
}

impl Protocol {
    /// Marked as MCP or A2A: bodies must be readable JSON.
    pub fn is_json_rpc(&self) -> bool {
        !matches!(self, Self::Unmarked)
    }
}

/// A JSON-RPC call, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// An MCP call (`request.mcp`).
    Mcp(Mcp),
    /// An A2A call (`request.a2a`).
    A2a(A2a),
}

/// Deepest nesting the inspector follows; deeper bodies are refused (a parser's stack is not a
/// resource a caller may spend).
const MAX_DEPTH: usize = 128;

/// Longest key or watched value captured, in bytes; anything longer cannot be a key we watch.
const MAX_CAPTURE: usize = 512;

/// The JSON-RPC member a key is read as by a server matching keys without regard to case,
/// when it is not that member exactly.
fn folds_to_member(key: &str) -> Option<&'static str> {
    let folded = folded(key);
    ["jsonrpc", "method", "params", "name", "uri", "id"]
        .into_iter()
        .find(|member| folded == *member && key != *member)
}

/// Bytes that may stand outside strings in strict JSON: structure, whitespace, numbers and the
/// letters of `true`, `false` and `null`. Anything else (an unquoted key, a single quote, a
/// comment, `NaN`) is a lenient parser's JSON, which could read a call Deputy did not.
fn strict_outside_strings(byte: u8) -> bool {
    matches!(
        byte,
        b'{' | b'}' | b'[' | b']' | b':' | b',' | b'"' | b' ' | b'\t' | b'\n' | b'\r' | b'0'
            ..=b'9'
                | b'-'
                | b'+'
                | b'.'
                | b'e'
                | b'E'
                | b't'
                | b'r'
                | b'u'
                | b'f'
                | b'a'
                | b'l'
                | b's'
                | b'n'
    )
}

/// How many first bytes tell a body's encoding (RFC 4627, section 3).
const HEAD_BYTES: usize = 4;

/// The encoding of JSON text in UTF-16 or UTF-32, told from its first bytes (with or without a
/// byte-order mark); `None` for UTF-8 or anything that is not JSON.
fn wide_json(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xFE, 0xFF]) || head.starts_with(&[0xFF, 0xFE]) {
        return Some("UTF-16 or UTF-32 (a byte-order mark)");
    }
    if head.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Some("UTF-32 (a byte-order mark)");
    }
    let json = |b: u8| matches!(b, b'{' | b'[' | b'"' | b' ' | b'\t' | b'\n' | b'\r');
    match head {
        [0, 0, 0, x, ..] if json(*x) => Some("UTF-32BE"),
        [0, x, 0, y, ..] if json(*x) && json(*y) => Some("UTF-16BE"),
        [x, 0, 0, 0, ..] if json(*x) => Some("UTF-32LE"),
        [x, 0, y, 0, ..] if json(*x) && json(*y) => Some("UTF-16LE"),
        [0, x] | [0, x, _] if json(*x) => Some("UTF-16BE"),
        [x, 0] | [x, 0, _] if json(*x) => Some("UTF-16LE"),
        _ => None,
    }
}

/// Why a body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyRefused(pub String);

/// What the inspector knows so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Keep feeding: the method (or what the call is about) may still come.
    NeedMore,
    /// The body is not a JSON-RPC call: not a JSON object, or an object without a top-level
    /// `method`.
    NotJsonRpc,
    /// The call, as far as the policy needs it.
    Call(Call),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// An object; `key_next` when a key (not a value) comes next.
    Object {
        key_next: bool,
    },
    Array,
}

/// What the string being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// A key of the top-level object, of `params` or an object within it that leads to a
    /// watched value, or of a top-level array's element.
    Key,
    /// The top-level `method` value.
    Method,
    /// `params.name` or `params.uri`.
    Target(Target),
    /// A watched value (a declared argument, the A2A skill).
    Watched(usize),
    Ignored,
}

/// The member of `params` that names what a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `params.name`: a tool or a prompt.
    Name,
    /// `params.uri`: a resource.
    Uri,
}

/// The push parser. Feed it every chunk of the body, in order, then call [`Inspector::finish`].
///
/// A body is a JSON-RPC call when its top-level value is an object with a string `method`.
#[derive(Debug, Default)]
pub struct Inspector {
    a2a: bool,
    stack: Vec<Frame>,
    /// The last key read at depths 1 and 2.
    key_at: [Option<String>; 3],
    in_string: bool,
    escaped: bool,
    capture: Option<Capture>,
    captured: Vec<u8>,
    overflow: bool,
    /// The first non-whitespace byte of the body.
    first: Option<u8>,
    /// The top-level value has ended.
    done: bool,
    method: Option<String>,
    name: Option<String>,
    uri: Option<String>,
    saw_params: bool,
    /// Inside the top-level `params` object.
    in_params: bool,
    /// The top-level `params` object has ended.
    params_closed: bool,
    watch: Watch,
    /// The path under `params` of the deepest open object that leads to a watched value; it is
    /// at stack depth `2 + watch_path.len()`.
    watch_path: Vec<String>,
    /// The last key read in that object.
    watch_key: Option<String>,
    /// Where the value about to start leads (set at its `:`).
    next_value: Option<Lead>,
    /// A watched number, boolean or null being read: its index and bytes so far.
    scalar: Option<(usize, Vec<u8>)>,
    /// What the decision was made on, once it was.
    decided: Option<Option<Call>>,
    refused: Option<BodyRefused>,
    /// The first bytes, held until the body's encoding is known.
    head: Vec<u8>,
    head_done: bool,
}

impl Inspector {
    /// A new inspector for a service not marked as MCP or A2A: a JSON-RPC body is read as MCP
    /// without arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new inspector for a service's calls.
    pub fn for_protocol(protocol: &Protocol) -> Self {
        match protocol {
            Protocol::Mcp(pointers) if !pointers.is_empty() => Self {
                watch: Watch::arguments(pointers),
                ..Self::default()
            },
            Protocol::A2a => Self {
                a2a: true,
                watch: Watch::skill(),
                ..Self::default()
            },
            _ => Self::default(),
        }
    }

    /// Feeds the next chunk; a refusal is final.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BodyRefused> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        for &byte in chunk {
            let fed = if self.head_done {
                self.byte(byte)
            } else {
                self.head.push(byte);
                if self.head.len() < HEAD_BYTES {
                    continue;
                }
                self.release_head()
            };
            if let Err(refused) = fed {
                self.refused = Some(refused.clone());
                return Err(refused);
            }
        }
        Ok(())
    }

    /// Checks the first bytes' encoding, then parses them. JSON in UTF-16 or UTF-32 (or with
    /// their byte-order marks) is refused: Deputy reads UTF-8, while some servers (Python's
    /// `json.loads` of bytes, for one) detect and decode the other encodings, and would then
    /// read a call Deputy never saw. A UTF-8 byte-order mark is skipped for the same reason.
    fn release_head(&mut self) -> Result<(), BodyRefused> {
        self.head_done = true;
        let head = std::mem::take(&mut self.head);
        if let Some(encoding) = wide_json(&head) {
            return Err(BodyRefused(format!(
                "the body looks like JSON in {encoding}; Deputy reads request bodies as UTF-8 \
                 only, so send UTF-8 JSON"
            )));
        }
        let start = if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
            3
        } else {
            0
        };
        head[start..].iter().try_for_each(|&b| self.byte(b))
    }

    /// What is known now.
    pub fn seen(&self) -> Seen {
        match self.first {
            None => Seen::NeedMore,
            Some(b'{') => match &self.method {
                Some(method) if self.known(method) => Seen::Call(self.call(method)),
                None if self.done => Seen::NotJsonRpc,
                _ => Seen::NeedMore,
            },
            Some(b'[') if !self.done => Seen::NeedMore,
            Some(_) => Seen::NotJsonRpc,
        }
    }

    /// The member of `params` that names what `method` is about.
    fn target_of(&self, method: &str) -> Option<Target> {
        match method {
            _ if self.a2a => None,
            "tools/call" | "prompts/get" => Some(Target::Name),
            "resources/read" => Some(Target::Uri),
            _ => None,
        }
    }

    /// `method` is judged on watched values too.
    fn watches(&self, method: &str) -> bool {
        !self.watch.is_empty()
            && if self.a2a {
                matches!(method, "message/send" | "message/stream")
            } else {
                method == "tools/call"
            }
    }

    /// Everything `method` is judged on has been read (or can no longer come).
    fn known(&self, method: &str) -> bool {
        if self.done || self.params_closed {
            return true;
        }
        let target = match self.target_of(method) {
            Some(Target::Name) => self.name.is_some(),
            Some(Target::Uri) => self.uri.is_some(),
            None => true,
        };
        target && (!self.watches(method) || self.watch.all_captured())
    }

    fn call(&self, method: &str) -> Call {
        if self.a2a {
            // Only a message names a skill: one read for another method would be the decision
            // or not depending on where in the body it came.
            return Call::A2a(A2a {
                method: method.to_owned(),
                skill: if self.watches(method) {
                    self.watch.first_string()
                } else {
                    None
                },
            });
        }
        let named = |m: &str| (method == m).then(|| self.name.clone()).flatten();
        Call::Mcp(Mcp {
            method: method.to_owned(),
            tool: named("tools/call"),
            prompt: named("prompts/get"),
            resource: (method == "resources/read")
                .then(|| self.uri.clone())
                .flatten(),
            arguments: if self.watches(method) {
                self.watch.values()
            } else {
                Default::default()
            },
        })
    }

    /// Fixes what is known now as what the decision is made on, and returns it. From here on,
    /// a JSON-RPC member that would change it is a refusal.
    pub fn decide(&mut self) -> Option<Call> {
        if !self.head_done {
            // Fewer than four bytes came before the bound: their encoding cannot be told, so a
            // zero or non-ASCII byte among them (a split byte-order mark) is refused.
            let early = if self.head.iter().any(|&b| b == 0 || !b.is_ascii()) {
                Err(BodyRefused(
                    "the body's first bytes came too slowly to tell their encoding".into(),
                ))
            } else {
                self.release_head()
            };
            if let Err(refused) = early {
                self.refused = Some(refused);
            }
        }
        let call = match self.seen() {
            Seen::Call(call) => Some(call),
            // The bound came first: a call whose tool (or arguments) were not reached is shown
            // without them (the shipped policy denies it); no method yet means none.
            Seen::NeedMore => self.method.as_deref().map(|m| self.call(m)),
            Seen::NotJsonRpc => None,
        };
        self.decided = Some(call.clone());
        call
    }

    /// The body has ended. A JSON-RPC body that ends inside its object is refused: it is not
    /// what was decided on, and no server could act on it.
    pub fn finish(&mut self) -> Result<(), BodyRefused> {
        if !self.head_done
            && let Err(refused) = self.release_head()
        {
            self.refused = Some(refused);
        }
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        if self.first == Some(b'{') && !self.done && self.method.is_some() {
            return Err(BodyRefused(
                "the JSON-RPC body ended inside its object; send a complete request".into(),
            ));
        }
        Ok(())
    }

    fn byte(&mut self, byte: u8) -> Result<(), BodyRefused> {
        if byte < 0x20
            && !matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
            && matches!(self.first, Some(b'{' | b'['))
            && !self.done
        {
            return Err(BodyRefused(format!(
                "the JSON body holds the control byte 0x{byte:02x}; send UTF-8 JSON"
            )));
        }
        if self.in_string {
            return self.string_byte(byte);
        }
        if !self.done && matches!(self.first, Some(b'{' | b'[')) && !strict_outside_strings(byte) {
            return Err(BodyRefused(format!(
                "the JSON body is not strict JSON (it has {:?} outside a string); send JSON with \
                 quoted keys and no comments",
                char::from(byte)
            )));
        }
        if !self.done
            && matches!(self.stack.last(), Some(Frame::Object { key_next: true }))
            && !matches!(byte, b'"' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
        {
            return Err(BodyRefused(
                "the JSON body has an object key that is not a string".into(),
            ));
        }
        if let Some((i, written)) = &mut self.scalar {
            if !matches!(byte, b',' | b'}' | b']') && !byte.is_ascii_whitespace() {
                // One past the longest read is enough to refuse it.
                if written.len() <= MAX_SCALAR_BYTES {
                    written.push(byte);
                }
                return Ok(());
            }
            let (i, written) = (*i, std::mem::take(written));
            self.scalar = None;
            self.watched_value()?;
            self.watch.scalar(i, Some(&written))?;
        }
        if byte.is_ascii_whitespace() {
            return Ok(());
        }
        if self.done {
            if matches!(self.first, Some(b'{' | b'[')) {
                // A server reading a stream of JSON values (a Go decoder loop, a stdio bridge)
                // would act on a second call the policy never judged.
                return Err(BodyRefused(
                    "the JSON body has more after its value; send one JSON-RPC call per request"
                        .into(),
                ));
            }
            return Ok(());
        }
        if self.first.is_none() {
            self.first = Some(byte);
            if byte != b'{' && byte != b'[' {
                self.done = true;
                return Ok(());
            }
        }
        let leads = if matches!(byte, b':' | b',' | b'}' | b']') {
            Lead::Nothing
        } else {
            self.next_value.take().unwrap_or(Lead::Nothing)
        };
        match byte {
            b'"' => {
                self.in_string = true;
                self.escaped = false;
                self.overflow = false;
                self.captured.clear();
                self.capture = Some(match leads {
                    Lead::Value(i) => Capture::Watched(i),
                    Lead::Through => return Err(self.not_an_object()),
                    Lead::Nothing => self.capture_kind(),
                });
            }
            b'{' | b'[' => {
                let opens_params = byte == b'{'
                    && self.first == Some(b'{')
                    && self.stack.len() == 1
                    && self.key_at[1].as_deref() == Some("params");
                self.value_starts();
                if self.stack.len() >= MAX_DEPTH {
                    return Err(BodyRefused(format!(
                        "the JSON body nests deeper than {MAX_DEPTH} levels"
                    )));
                }
                match leads {
                    Lead::Value(i) => return Err(self.watch.structured(i)),
                    Lead::Through if byte == b'{' => {
                        self.watch_path.extend(self.watch_key.take());
                    }
                    Lead::Through => return Err(self.not_an_object()),
                    Lead::Nothing => {}
                }
                if opens_params {
                    self.in_params = true;
                    self.watch_path.clear();
                    self.watch_key = None;
                }
                self.stack.push(if byte == b'{' {
                    Frame::Object { key_next: true }
                } else {
                    Frame::Array
                });
            }
            b'}' | b']' => {
                if self.in_params && self.stack.len() == 2 + self.watch_path.len() {
                    if self.watch_path.pop().is_none() {
                        self.params_closed = true;
                    }
                    self.watch_key = None;
                }
                self.stack.pop();
                let depth = self.stack.len();
                for key in self.key_at.iter_mut().skip(depth + 1) {
                    *key = None;
                }
                if depth <= 1 {
                    self.in_params = false;
                }
                self.done = self.stack.is_empty();
            }
            b',' => {
                if let Some(Frame::Object { key_next }) = self.stack.last_mut() {
                    *key_next = true;
                }
            }
            b':' => {
                if self.in_watched_object()
                    && let Some(key) = &self.watch_key
                {
                    let mut path = self.watch_path.clone();
                    path.push(key.clone());
                    self.next_value = Some(self.watch.lead(&path));
                }
            }
            _ => {
                self.value_starts();
                match leads {
                    Lead::Value(i) => self.scalar = Some((i, vec![byte])),
                    Lead::Through => return Err(self.not_an_object()),
                    Lead::Nothing => {}
                }
            }
        }
        Ok(())
    }

    /// A value on the way to a watched one is not an object: the policy would see nothing
    /// there, while a server may still read one out of it (FastMCP parses a string holding JSON
    /// into the object its tool expects).
    fn not_an_object(&self) -> BodyRefused {
        let mut path = self.watch_path.clone();
        path.extend(self.watch_key.clone());
        BodyRefused(format!(
            "the JSON-RPC params hold `{}`, on the way to a value the policy reads, as something \
             other than an object; send it as an object",
            path.join(".")
        ))
    }

    /// The innermost open object is `params` or an object in it leading to a watched value.
    fn in_watched_object(&self) -> bool {
        !self.watch.is_empty() && self.in_params && self.stack.len() == 2 + self.watch_path.len()
    }

    /// A value (not a key) begins in the current container.
    fn value_starts(&mut self) {
        if let Some(Frame::Object { key_next }) = self.stack.last_mut() {
            *key_next = false;
        }
    }

    fn capture_kind(&mut self) -> Capture {
        let depth = self.stack.len();
        match self.stack.last().copied() {
            Some(Frame::Object { key_next: true }) if depth <= 2 || self.in_watched_object() => {
                Capture::Key
            }
            Some(Frame::Object { key_next: true }) => Capture::Ignored,
            Some(Frame::Object { key_next: false }) => {
                let top_object = self.first == Some(b'{');
                match (depth, self.key_at[depth.min(2)].as_deref()) {
                    (1, Some("method")) if top_object => Capture::Method,
                    (2, Some("name")) if self.in_params => Capture::Target(Target::Name),
                    (2, Some("uri")) if self.in_params => Capture::Target(Target::Uri),
                    _ => Capture::Ignored,
                }
            }
            _ => Capture::Ignored,
        }
    }

    fn string_byte(&mut self, byte: u8) -> Result<(), BodyRefused> {
        if self.escaped {
            self.escaped = false;
        } else if byte == b'\\' {
            self.escaped = true;
        } else if byte == b'"' {
            self.in_string = false;
            return self.string_ends();
        }
        if self.capture != Some(Capture::Ignored) {
            // A watched value may be escaped (`\u00e9` is six bytes for two).
            let limit = match self.capture {
                Some(Capture::Watched(_)) => 6 * MAX_ARGUMENT_BYTES,
                _ => MAX_CAPTURE,
            };
            if self.captured.len() < limit {
                self.captured.push(byte);
            } else {
                self.overflow = true;
            }
        }
        Ok(())
    }

    fn string_ends(&mut self) -> Result<(), BodyRefused> {
        let kind = self.capture.take().unwrap_or(Capture::Ignored);
        // A key just ended (watched or not): its value comes next.
        if let Some(Frame::Object { key_next }) = self.stack.last_mut() {
            *key_next = false;
        }
        if kind == Capture::Ignored {
            return Ok(());
        }
        let text = if self.overflow {
            None
        } else {
            let mut quoted = Vec::with_capacity(self.captured.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&self.captured);
            quoted.push(b'"');
            Some(
                serde_json::from_slice::<String>(&quoted)
                    .map_err(|_| BodyRefused("the JSON body holds a malformed string".into()))?,
            )
        };
        let depth = self.stack.len();
        match kind {
            Capture::Key => {
                if text.is_none() && self.in_watched_object() {
                    return Err(BodyRefused(format!(
                        "the JSON-RPC params hold a key longer than {MAX_CAPTURE} bytes next to a \
                         value the policy reads"
                    )));
                }
                // An overlong key is none of the keys watched.
                let key = text.unwrap_or_default();
                if self.in_watched_object() {
                    self.watch.key(&self.watch_path, &key)?;
                    self.watch_key = Some(key.clone());
                }
                if depth <= 2 {
                    self.watch_key(depth, &key)?;
                    self.key_at[depth] = Some(key);
                }
                Ok(())
            }
            Capture::Method | Capture::Target(_) => {
                let what = match kind {
                    Capture::Method => "method",
                    Capture::Target(Target::Name) => "params.name",
                    _ => "params.uri",
                };
                let value = text.ok_or_else(|| {
                    BodyRefused(format!(
                        "the JSON-RPC `{what}` is longer than {MAX_CAPTURE} bytes"
                    ))
                })?;
                self.set(kind, value)
            }
            Capture::Watched(i) => {
                self.watched_value()?;
                self.watch.string(i, text)
            }
            Capture::Ignored => Ok(()),
        }
    }

    fn watch_key(&mut self, depth: usize, key: &str) -> Result<(), BodyRefused> {
        let watched_here =
            depth == 1 || (depth == 2 && (self.in_params || self.first == Some(b'[')));
        if watched_here && let Some(meant) = folds_to_member(key) {
            return Err(BodyRefused(format!(
                "the JSON-RPC body has a key {key:?}, which servers that match keys without \
                 regard to case (Go's encoding/json) read as `{meant}`; write `{meant}` exactly"
            )));
        }
        if self.first == Some(b'[') {
            if depth == 2 && (key == "jsonrpc" || key == "method") {
                return Err(BodyRefused(
                    "JSON-RPC batches are not accepted: send one call per request (MCP removed \
                     batching in its 2025-06-18 revision)"
                        .into(),
                ));
            }
            return Ok(());
        }
        let twice = match (depth, key) {
            (1, "method") => self.method.is_some(),
            (1, "params") => std::mem::replace(&mut self.saw_params, true),
            (2, "name") if self.in_params => self.name.is_some(),
            (2, "uri") if self.in_params => self.uri.is_some(),
            _ => false,
        };
        if twice {
            return Err(BodyRefused(format!(
                "the JSON-RPC body names `{key}` twice; JSON parsers disagree on which one counts, \
                 so Deputy refuses it"
            )));
        }
        Ok(())
    }

    /// A watched value is being captured: refused once the decision was made on a call that
    /// needed it (it was not there to be judged).
    fn watched_value(&self) -> Result<(), BodyRefused> {
        let late = match &self.decided {
            None => false,
            Some(None) => true,
            Some(Some(call)) => self.watches(call_method(call)),
        };
        if late {
            return Err(BodyRefused(
                "a value the policy reads (a declared tool argument, the A2A skill) came after \
                 the policy decided on the first part of the body; send it nearer the start"
                    .into(),
            ));
        }
        Ok(())
    }

    fn set(&mut self, kind: Capture, value: String) -> Result<(), BodyRefused> {
        let late = match (&self.decided, kind) {
            (None, _) => false,
            // The decision saw no method: any method now is one the policy did not judge.
            (Some(None), kind) => kind == Capture::Method,
            // The decision judged a call without what it is about.
            (Some(Some(call)), Capture::Target(target)) => {
                self.target_of(call_method(call)) == Some(target)
            }
            (Some(Some(_)), _) => false,
        };
        if late {
            return Err(BodyRefused(
                "the body's JSON-RPC method, tool, prompt or resource came after the policy \
                 decided on the first part of the body; put `method` and `params` first"
                    .into(),
            ));
        }
        let slot = match kind {
            Capture::Method => &mut self.method,
            Capture::Target(Target::Name) => &mut self.name,
            _ => &mut self.uri,
        };
        if slot.is_some() {
            return Err(BodyRefused(
                "the JSON-RPC body gives its method, tool, prompt or resource twice; Deputy \
                 refuses it"
                    .into(),
            ));
        }
        *slot = Some(value);
        Ok(())
    }
}

fn call_method(call: &Call) -> &str {
    match call {
        Call::Mcp(mcp) => &mcp.method,
        Call::A2a(a2a) => &a2a.method,
    }
}

#[cfg(test)]
mod tests;
