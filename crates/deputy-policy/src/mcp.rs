//! Reading the MCP call out of a request body while it streams.
//!
//! A policy about MCP tools needs the JSON-RPC `method` and, for `tools/call`, the tool `name`
//! (`params.name`). They are read by a push parser fed the body chunk by chunk: deputyd holds the
//! body back only until both are known (or a bound is reached), decides, and then lets the body
//! stream on through the same inspector.
//!
//! The inspector keeps watching after the decision because the agent writes the body and the
//! server reads all of it: a second top-level `method`, a second `params.name` (JSON parsers
//! disagree on which of two duplicate keys wins), a `method` that first appears after the
//! decision, or a JSON-RPC batch element are all refusals. On the data path a refusal after the
//! decision aborts the stream, so the server never receives a complete body it could act on.

use crate::input::Mcp;

/// Deepest nesting the inspector follows; deeper bodies are refused (a parser's stack is not a
/// resource a caller may spend).
const MAX_DEPTH: usize = 128;

/// Longest key or watched value captured, in bytes; anything longer cannot be a key we watch.
const MAX_CAPTURE: usize = 512;

/// The JSON-RPC member a key is read as by a server matching keys without regard to case (with
/// the Unicode folds `ſ` = `s` and `K` = `k`, as Go's encoding/json does), when it is not that
/// member exactly.
fn folds_to_member(key: &str) -> Option<&'static str> {
    let folded: String = key
        .chars()
        .map(|c| match c {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    ["jsonrpc", "method", "params", "name", "id"]
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
    /// Keep feeding: the method (or the tool of a `tools/call`) may still come.
    NeedMore,
    /// The body is not a JSON-RPC call: not a JSON object, or an object without a top-level
    /// `method`.
    NotJsonRpc,
    /// The call, as far as the policy needs it.
    Call(Mcp),
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
    /// A key of the top-level object, of `params`, or of a top-level array's element.
    Key,
    /// The top-level `method` value.
    Method,
    /// `params.name`.
    Tool,
    Ignored,
}

/// The push parser. Feed it every chunk of the body, in order, then call [`Inspector::finish`].
///
/// A body is a JSON-RPC call when its top-level value is an object with a string `method`.
#[derive(Debug, Default)]
pub struct Inspector {
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
    tool: Option<String>,
    saw_params: bool,
    /// Inside the top-level `params` object.
    in_params: bool,
    /// What the decision was made on, once it was.
    decided: Option<Option<Mcp>>,
    refused: Option<BodyRefused>,
    /// The first bytes, held until the body's encoding is known.
    head: Vec<u8>,
    head_done: bool,
}

impl Inspector {
    /// A new inspector.
    pub fn new() -> Self {
        Self::default()
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
                Some(method) if method != "tools/call" => Seen::Call(self.call(method)),
                Some(method) if self.tool.is_some() || self.done => Seen::Call(self.call(method)),
                None if self.done => Seen::NotJsonRpc,
                _ => Seen::NeedMore,
            },
            Some(b'[') if !self.done => Seen::NeedMore,
            Some(_) => Seen::NotJsonRpc,
        }
    }

    fn call(&self, method: &str) -> Mcp {
        Mcp {
            method: method.to_owned(),
            tool: if method == "tools/call" {
                self.tool.clone()
            } else {
                None
            },
        }
    }

    /// Fixes what is known now as what the decision is made on, and returns it as the policy's
    /// `mcp`. From here on, a JSON-RPC member that would change it is a refusal.
    pub fn decide(&mut self) -> Option<Mcp> {
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
        let mcp = match self.seen() {
            Seen::Call(mcp) => Some(mcp),
            // The bound came first: a `tools/call` whose tool was not reached is shown without
            // a tool (the shipped policy denies it); no method yet means none.
            Seen::NeedMore => self.method.as_deref().map(|m| self.call(m)),
            Seen::NotJsonRpc => None,
        };
        self.decided = Some(mcp.clone());
        mcp
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
        if byte.is_ascii_whitespace() || self.done {
            // After the top-level value nothing is watched: a server reading one JSON value
            // rejects trailing content, and one reading a stream of values is not JSON-RPC.
            return Ok(());
        }
        if self.first.is_none() {
            self.first = Some(byte);
            if byte != b'{' && byte != b'[' {
                self.done = true;
                return Ok(());
            }
        }
        match byte {
            b'"' => {
                self.in_string = true;
                self.escaped = false;
                self.overflow = false;
                self.captured.clear();
                self.capture = Some(self.capture_kind());
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
                self.in_params |= opens_params;
                self.stack.push(if byte == b'{' {
                    Frame::Object { key_next: true }
                } else {
                    Frame::Array
                });
            }
            b'}' | b']' => {
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
            b':' => {}
            _ => self.value_starts(),
        }
        Ok(())
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
            Some(Frame::Object { key_next: true }) if depth <= 2 => Capture::Key,
            Some(Frame::Object { key_next: true }) => Capture::Ignored,
            Some(Frame::Object { key_next: false }) => {
                let top_object = self.first == Some(b'{');
                match (depth, self.key_at[depth.min(2)].as_deref()) {
                    (1, Some("method")) if top_object => Capture::Method,
                    (2, Some("name")) if self.in_params => Capture::Tool,
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
            if self.captured.len() < MAX_CAPTURE {
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
                if let Some(Frame::Object { key_next }) = self.stack.last_mut() {
                    *key_next = false;
                }
                // An overlong key is none of the keys watched.
                let key = text.unwrap_or_default();
                self.watch_key(depth, &key)?;
                self.key_at[depth] = Some(key);
                Ok(())
            }
            Capture::Method | Capture::Tool => {
                let what = if kind == Capture::Method {
                    "method"
                } else {
                    "params.name"
                };
                let value = text.ok_or_else(|| {
                    BodyRefused(format!(
                        "the JSON-RPC `{what}` is longer than {MAX_CAPTURE} bytes"
                    ))
                })?;
                self.set(kind, value)
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
            (2, "name") if self.in_params => self.tool.is_some(),
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

    fn set(&mut self, kind: Capture, value: String) -> Result<(), BodyRefused> {
        let late = match &self.decided {
            None => false,
            // The decision saw no method: any method now is one the policy did not judge.
            Some(None) => kind == Capture::Method,
            // The decision judged a tools/call without its tool.
            Some(Some(mcp)) => {
                kind == Capture::Tool && mcp.method == "tools/call" && mcp.tool.is_none()
            }
        };
        if late {
            return Err(BodyRefused(
                "the body's JSON-RPC method or tool came after the policy decided on the first \
                 part of the body; put `method` and `params.name` first"
                    .into(),
            ));
        }
        let slot = if kind == Capture::Method {
            &mut self.method
        } else {
            &mut self.tool
        };
        if slot.is_some() {
            return Err(BodyRefused(
                "the JSON-RPC body gives its method or tool twice; Deputy refuses it".into(),
            ));
        }
        *slot = Some(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(body: &[u8]) -> Inspector {
        let mut inspector = Inspector::new();
        inspector.feed(body).expect("accepted");
        inspector
    }

    fn call(method: &str, tool: Option<&str>) -> Seen {
        Seen::Call(Mcp {
            method: method.into(),
            tool: tool.map(Into::into),
        })
    }

    #[test]
    fn the_call_is_known_as_soon_as_method_and_tool_have_passed() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"refund","arguments":{"amount":"#;
        assert_eq!(fed(body).seen(), call("tools/call", Some("refund")));
        let list = br#"{"jsonrpc":"2.0","method":"tools/list","id":1"#;
        assert_eq!(fed(list).seen(), call("tools/list", None));
        // Order of members does not matter; escapes are decoded.
        let reordered = br#"{"params":{"arguments":{"name":"decoy"},"name":"re\u0066und"},"method":"tools/call"}"#;
        assert_eq!(fed(reordered).seen(), call("tools/call", Some("refund")));
    }

    #[test]
    fn a_call_split_across_chunks_reads_the_same() {
        let body = br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"search_tickets"}}"#;
        for split in 1..body.len() {
            let mut inspector = Inspector::new();
            inspector.feed(&body[..split]).expect("first part");
            inspector.feed(&body[split..]).expect("second part");
            assert_eq!(
                inspector.seen(),
                call("tools/call", Some("search_tickets")),
                "split at {split}"
            );
            inspector.finish().expect("complete");
        }
    }

    #[test]
    fn other_bodies_are_not_json_rpc() {
        assert_eq!(fed(b"plain text").seen(), Seen::NotJsonRpc);
        assert_eq!(fed(br#"{"amount": 5}"#).seen(), Seen::NotJsonRpc);
        assert_eq!(fed(br#"[1, {"a": 2}]"#).seen(), Seen::NotJsonRpc);
        assert_eq!(fed(br#"{"a": {"method": "x"}}"#).seen(), Seen::NotJsonRpc);
        assert_eq!(fed(br#"{"a": "x"#).seen(), Seen::NeedMore);
    }

    #[test]
    fn duplicate_members_and_batches_are_refused() {
        for body in [
            &br#"{"method":"tools/list","method":"tools/call"}"#[..],
            br#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            br#"{"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}"#,
            br#"[{"jsonrpc":"2.0","method":"tools/call"}]"#,
            br#"[{}, {"method":"tools/call"}]"#,
        ] {
            let mut inspector = Inspector::new();
            let refused = inspector.feed(body);
            assert!(refused.is_err(), "{}", String::from_utf8_lossy(body));
            assert!(inspector.feed(b" ").is_err(), "a refusal is final");
        }
    }

    #[test]
    fn nothing_after_the_decision_may_change_what_was_decided() {
        // Decided with no method in sight (padding first), then a method arrives.
        let mut inspector = fed(br#"{"pad":"xxxxxxxx","#);
        assert_eq!(inspector.decide(), None);
        assert!(inspector.feed(br#""method":"tools/call"}"#).is_err());

        // Decided on a tools/call whose tool was beyond the bound: the tool may not follow.
        let mut inspector = fed(br#"{"method":"tools/call","pad":"#);
        assert_eq!(
            inspector.decide(),
            Some(Mcp {
                method: "tools/call".into(),
                tool: None
            })
        );
        assert!(
            inspector
                .feed(br#""x","params":{"name":"refund"}}"#)
                .is_err()
        );

        // Decided on the whole call: the rest streams.
        let mut inspector = fed(br#"{"method":"tools/call","params":{"name":"search"#);
        inspector.feed(br#"_tickets","#).expect("still the same");
        inspector.decide();
        inspector
            .feed(br#""arguments":{"q":"late \"method\": 1"}}}"#)
            .expect("arguments stream");
        inspector.finish().expect("complete");
    }

    #[test]
    fn a_json_rpc_body_cut_short_is_refused_at_the_end() {
        let mut inspector = fed(br#"{"method":"tools/list","#);
        assert!(inspector.finish().is_err());
        let mut inspector = fed(br#"{"amount": "#);
        inspector
            .finish()
            .expect("not JSON-RPC: the server judges it");
    }

    #[test]
    fn json_in_other_encodings_is_refused_and_a_utf8_bom_is_read_through() {
        let text = r#"{"method":"tools/call","params":{"name":"drop_database"}}"#;
        let utf16le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf16be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let utf32be: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_be_bytes())
            .collect();
        for body in [utf16le, utf16be, utf32be] {
            let mut inspector = Inspector::new();
            assert!(inspector.feed(&body).is_err(), "{body:02x?}");
        }
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice(text.as_bytes());
        assert_eq!(fed(&bom).seen(), call("tools/call", Some("drop_database")));
        // A control byte inside JSON is not JSON a strict parser accepts.
        let mut inspector = Inspector::new();
        assert!(inspector.feed(b"{\"method\":\"tools/\x00call\"}").is_err());
        // Binary bodies (a gRPC frame starts with a zero byte) are not JSON and pass.
        assert_eq!(fed(&[0, 0, 0, 0, 0x1a, 1, 2]).seen(), Seen::NotJsonRpc);
        // Too short to tell at the decision: a zero byte is refused, anything else is read.
        let mut inspector = fed(&[0]);
        inspector.decide();
        assert!(inspector.finish().is_err());
        let mut inspector = fed(b"{");
        assert_eq!(inspector.decide(), None);
        assert!(inspector.feed(br#""method":"x"}"#).is_err(), "late method");
    }

    #[test]
    fn keys_a_server_reads_without_regard_to_case_and_lenient_json_are_refused() {
        for body in [
            &br#"{"method":"tools/call","params":{"name":"search","NAME":"drop_database"}}"#[..],
            br#"{"method":"tools/list","Method":"tools/call"}"#,
            "{\"METHOD\":\"tools/call\",\"param\u{17F}\":{\"name\":\"x\"}}".as_bytes(),
            br#"[{"JSONRPC":"2.0"}]"#,
            br#"{method:"tools/call",params:{name:"drop_database"}}"#,
            br#"{'method':'tools/call'}"#,
            br#"{"method":"tools/list" /* ,"method":"tools/call" */}"#,
            br#"{"id": NaN, "method": "tools/list"}"#,
        ] {
            let mut inspector = Inspector::new();
            assert!(
                inspector.feed(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Case matters only for the members Deputy reads; other keys and values are free.
        let fine = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"Name":"N","METHOD":true,"v":[1.5e3,-2,null,false]}}}"#;
        assert_eq!(fed(fine).seen(), call("tools/call", Some("x")));
        // A byte-order mark split across the decision point is refused.
        let mut inspector = fed(&[0xEF, 0xBB]);
        inspector.decide();
        assert!(inspector.feed(br#"\xBF{"method":"tools/call"}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_followed() {
        let mut inspector = Inspector::new();
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(inspector.feed(deep.as_bytes()).is_err());
    }
}
