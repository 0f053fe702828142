//! Filtering MCP list answers: a list in an answer (`result.tools`, `result.prompts`,
//! `result.resources`, `result.resourceTemplates`) keeps only the items the caller may use,
//! each judged as the call that would use it.
//!
//! Lists are found by what an answer holds, not by the request it answers: a client matches an
//! answer to its request by JSON-RPC id, on whatever stream it arrives, so a server could send a
//! list as the answer of another request, or on a stream opened by a GET. Every message is read
//! as the protocol says, or refused: duplicate members and members a case-insensitive client
//! (Go's encoding/json) would read as a list member are refused, not guessed at, and an answer
//! that cannot be read is never passed on unfiltered. Items kept are passed on byte for byte;
//! only the list around them is rewritten, and a message without a list passes untouched.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use super::BodyRefused;
use super::watch::folded;
use crate::input::Mcp;

/// Largest answer (a JSON body, or one event's data) read: a larger one is refused rather than
/// passed on unfiltered.
pub const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// A kind of list an answer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools`: each tool judged as `tools/call` of it.
    Tools,
    /// `prompts`: each prompt judged as `prompts/get` of it.
    Prompts,
    /// `resources`: each resource judged as `resources/read` of its URI.
    Resources,
    /// `resourceTemplates`: each template judged as `resources/read` of its URI template.
    ResourceTemplates,
}

const KINDS: [ListKind; 4] = [
    ListKind::Tools,
    ListKind::Prompts,
    ListKind::Resources,
    ListKind::ResourceTemplates,
];

/// Whether an MCP method asks for a list (its answer must then be one deputyd can read).
pub fn list_kind(method: &str) -> Option<ListKind> {
    match method {
        "tools/list" => Some(ListKind::Tools),
        "prompts/list" => Some(ListKind::Prompts),
        "resources/list" => Some(ListKind::Resources),
        "resources/templates/list" => Some(ListKind::ResourceTemplates),
        _ => None,
    }
}

impl ListKind {
    /// The member of `result` holding the items.
    pub fn member(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The member of an item naming it.
    fn id_member(self) -> &'static str {
        match self {
            Self::Tools | Self::Prompts => "name",
            Self::Resources => "uri",
            Self::ResourceTemplates => "uriTemplate",
        }
    }

    /// The call that would use an item named `id`.
    fn call(self, id: String) -> Mcp {
        let (method, tool, prompt, resource) = match self {
            Self::Tools => ("tools/call", Some(id), None, None),
            Self::Prompts => ("prompts/get", None, Some(id), None),
            Self::Resources | Self::ResourceTemplates => ("resources/read", None, None, Some(id)),
        };
        Mcp {
            method: method.to_owned(),
            tool,
            prompt,
            resource,
            arguments: Default::default(),
        }
    }

    /// The item's name (its URI, or URI template).
    fn id(self, item: &RawValue) -> Result<String, BodyRefused> {
        let members = object(item.get().as_bytes(), &[self.id_member()])?.ok_or_else(|| {
            unreadable(&format!("an item of `{}` is not an object", self.member()))
        })?;
        let id = members
            .iter()
            .find(|(key, _)| key == self.id_member())
            .and_then(|(_, value)| serde_json::from_str::<String>(value.get()).ok());
        id.ok_or_else(|| {
            unreadable(&format!(
                "an item of `{}` has no string `{}`",
                self.member(),
                self.id_member()
            ))
        })
    }
}

/// How many items answers listed, and how many were kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    /// Items in the server's answers.
    pub listed: usize,
    /// Items passed on.
    pub kept: usize,
}

fn unreadable(why: &str) -> BodyRefused {
    // The server's text stays out of the message: it is the server's word, and this is logged.
    BodyRefused(format!(
        "an MCP answer deputyd cannot read as the protocol says ({why}); it is refused rather \
         than passed on unfiltered"
    ))
}

/// An object's members, in order.
type Pairs = Vec<(String, Box<RawValue>)>;

/// An object's members in order, duplicates kept (to be refused).
struct Members(Pairs);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(pair) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(pair);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// The members of `json` when it is an object (`None` for another JSON value), refused when one
/// of `watched` is given twice or spelt so a case-insensitive reader takes it for one.
fn object(json: &[u8], watched: &[&str]) -> Result<Option<Pairs>, BodyRefused> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map_err(|_| unreadable("not JSON"))?;
        return Ok(None);
    }
    let Members(members) =
        serde_json::from_slice(json).map_err(|_| unreadable("not a JSON object"))?;
    for (i, (key, _)) in members.iter().enumerate() {
        let key_folded = folded(key);
        for member in watched {
            if key_folded != folded(member) {
                continue;
            }
            if key != member {
                return Err(unreadable(&format!(
                    "a member {key:?}, which case-insensitive readers take for `{member}`"
                )));
            }
            if members[..i].iter().any(|(other, _)| other == key) {
                return Err(unreadable(&format!("`{member}` given twice")));
            }
        }
    }
    Ok(Some(members))
}

/// Filters one JSON-RPC message (or a batch of them): every list in a `result` keeps the items
/// `keep` allows. A message without a list passes as it came.
pub fn filter_message<'a>(
    message: &'a [u8],
    keep: &mut dyn FnMut(Mcp) -> bool,
    listed: &mut Listed,
) -> Result<Cow<'a, [u8]>, BodyRefused> {
    if message.len() > MAX_LIST_BYTES {
        return Err(unreadable(&format!("larger than {MAX_LIST_BYTES} bytes")));
    }
    if cannot_hold_a_list(message) {
        return Ok(Cow::Borrowed(message));
    }
    match message.iter().find(|b| !b.is_ascii_whitespace()) {
        // No message (a 202 to a notification): nothing a client reads.
        None => return Ok(Cow::Borrowed(message)),
        Some(b'[') => {}
        Some(_) => return filter_object(message, keep, listed),
    }
    // A batch (MCP before 2025-06-18): each element as a message.
    let elements: Vec<Box<RawValue>> =
        serde_json::from_slice(message).map_err(|_| unreadable("not JSON"))?;
    let mut changed = false;
    let mut out = Vec::with_capacity(elements.len());
    for element in &elements {
        let filtered = filter_message(element.get().as_bytes(), keep, listed)?;
        changed |= matches!(filtered, Cow::Owned(_));
        let text = String::from_utf8(filtered.into_owned()).map_err(|_| unreadable("not UTF-8"))?;
        out.push(RawValue::from_string(text).map_err(|_| unreadable("cannot be written back"))?);
    }
    Ok(if changed {
        Cow::Owned(to_vec(&out)?)
    } else {
        Cow::Borrowed(message)
    })
}

/// Whether `message` cannot hold a list however a client reads it: no list member's name in
/// any case, no escape that could spell one, none of the Unicode letters Go folds to ASCII
/// (`ſ`, `K`), and no zero byte (JSON in UTF-16 or UTF-32, which Python's `json.loads`
/// decodes). Most answers (a tool's result) pass this byte scan and are not parsed.
///
/// One pass over the bytes (answers run to 16 MiB): each position is looked at by its first
/// byte, and only a byte that starts one of the needles is compared further.
pub fn cannot_hold_a_list(message: &[u8]) -> bool {
    let at = |i: usize, needle: &[u8]| {
        message
            .get(i..i + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    !(0..message.len()).any(|i| match message[i].to_ascii_lowercase() {
        0 => true,
        b'\\' => at(i, b"\\u"),
        0xC5 => at(i, "\u{17F}".as_bytes()),
        0xE2 => at(i, "\u{212A}".as_bytes()),
        b't' => at(i, b"tools"),
        b'p' => at(i, b"prompts"),
        b'r' => at(i, b"resource"),
        _ => false,
    })
}

/// [`filter_message`] of one message that is not a batch.
fn filter_object<'a>(
    message: &'a [u8],
    keep: &mut dyn FnMut(Mcp) -> bool,
    listed: &mut Listed,
) -> Result<Cow<'a, [u8]>, BodyRefused> {
    let Some(mut top) = object(message, &["result"])? else {
        return Ok(Cow::Borrowed(message));
    };
    let Some(at) = top.iter().position(|(key, _)| key == "result") else {
        return Ok(Cow::Borrowed(message));
    };
    let members: Vec<&str> = KINDS.iter().map(|k| k.member()).collect();
    let Some(mut result) = object(top[at].1.get().as_bytes(), &members)? else {
        return Ok(Cow::Borrowed(message));
    };
    let mut changed = false;
    for (key, value) in &mut result {
        let Some(kind) = KINDS.iter().copied().find(|k| k.member() == key) else {
            continue;
        };
        let items: Vec<Box<RawValue>> = serde_json::from_str(value.get())
            .map_err(|_| unreadable(&format!("`{key}` is not an array")))?;
        listed.listed += items.len();
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            if keep(kind.call(kind.id(&item)?)) {
                kept.push(item);
            }
        }
        listed.kept += kept.len();
        *value = raw(&kept)?;
        changed = true;
    }
    if !changed {
        return Ok(Cow::Borrowed(message));
    }
    top[at].1 = raw(&Ordered(&result))?;
    Ok(Cow::Owned(to_vec(&Ordered(&top))?))
}

/// Members written back as an object, in their order, each value as it came.
struct Ordered<'a>(&'a [(String, Box<RawValue>)]);

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn raw(value: &impl serde::Serialize) -> Result<Box<RawValue>, BodyRefused> {
    serde_json::value::to_raw_value(value).map_err(|_| unreadable("cannot be written back"))
}

fn to_vec(value: &impl serde::Serialize) -> Result<Vec<u8>, BodyRefused> {
    serde_json::to_vec(value).map_err(|_| unreadable("cannot be written back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan's definition, written plainly: no needle anywhere, in any ASCII case.
    fn holds_no_needle(message: &[u8]) -> bool {
        let has = |needle: &[u8]| {
            message
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        };
        !message.contains(&0)
            && !has(b"\\u")
            && !has("\u{17F}".as_bytes())
            && !has("\u{212A}".as_bytes())
            && !has(b"tools")
            && !has(b"prompts")
            && !has(b"resource")
    }

    #[test]
    fn the_one_pass_scan_agrees_with_its_definition() {
        // Messages made of needles, their halves, case changes and near misses, at every
        // position and cut at the end: a seeded generator, so a failure is reproducible.
        let parts: &[&[u8]] = &[
            b"tools",
            b"TOOLS",
            b"tOoLs",
            b"tool",
            b"ools",
            b"prompts",
            b"Prompt",
            b"resource",
            b"RESOURCES",
            b"resourc",
            b"\\u",
            b"\\U",
            b"\\",
            b"u",
            b"\0",
            "\u{17F}".as_bytes(),
            &"\u{17F}".as_bytes()[..1],
            "\u{212A}".as_bytes(),
            &"\u{212A}".as_bytes()[..2],
            "é".as_bytes(),
            b"{\"result\":",
            b"x",
            b" ",
            b"t",
            b"p",
            b"r",
            b"\xC5",
            b"\xE2\x84",
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut message = Vec::new();
            for _ in 0..next() % 6 {
                message.extend_from_slice(parts[(next() % parts.len() as u64) as usize]);
            }
            assert_eq!(
                cannot_hold_a_list(&message),
                holds_no_needle(&message),
                "{:?}",
                String::from_utf8_lossy(&message)
            );
        }
    }

    fn allow(names: &'static [&'static str]) -> impl FnMut(Mcp) -> bool {
        move |call: Mcp| {
            let id = call
                .tool
                .or(call.prompt)
                .or(call.resource)
                .unwrap_or_default();
            names.contains(&id.as_str())
        }
    }

    #[test]
    fn a_tools_list_keeps_the_allowed_tools_byte_for_byte() {
        let answer = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"lookup_customer","inputSchema":{"type":"object","maximum":18446744073709551616}},{"name":"refund"},{"name":"search_tickets","description":"S\u00e9arch"}],"nextCursor":"p2"}}"#;
        let mut listed = Listed::default();
        let out = filter_message(
            answer,
            &mut allow(&["lookup_customer", "search_tickets"]),
            &mut listed,
        )
        .expect("filtered");
        let text = String::from_utf8(out.into_owned()).expect("utf-8");
        assert!(text.contains(r#"{"name":"lookup_customer","inputSchema":{"type":"object","maximum":18446744073709551616}}"#), "{text}");
        assert!(
            text.contains(r#"{"name":"search_tickets","description":"S\u00e9arch"}"#),
            "{text}"
        );
        assert!(!text.contains("refund"), "{text}");
        assert!(text.contains(r#""nextCursor":"p2""#), "{text}");
        assert_eq!(listed, Listed { listed: 3, kept: 2 });
    }

    #[test]
    fn prompts_and_resources_are_judged_as_their_use() {
        let mut calls = Vec::new();
        let mut keep = |call: Mcp| {
            calls.push(call);
            false
        };
        let mut listed = Listed::default();
        filter_message(
            br#"{"id":1,"result":{"prompts":[{"name":"p"}]}}"#,
            &mut keep,
            &mut listed,
        )
        .expect("filtered");
        filter_message(
            br#"{"id":2,"result":{"resources":[{"uri":"crm://c/1","name":"c1"}]}}"#,
            &mut keep,
            &mut listed,
        )
        .expect("filtered");
        assert_eq!(
            (calls[0].method.as_str(), calls[0].prompt.as_deref()),
            ("prompts/get", Some("p"))
        );
        assert_eq!(
            (calls[1].method.as_str(), calls[1].resource.as_deref()),
            ("resources/read", Some("crm://c/1"))
        );
    }

    #[test]
    fn messages_without_a_list_pass_untouched_and_unreadable_ones_are_refused() {
        let mut listed = Listed::default();
        for message in [
            &br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"tools"}]}}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            br#"["not", "a", "message"]"#,
            // The empty answer of a 202.
            b"",
        ] {
            let passed = filter_message(message, &mut allow(&[]), &mut listed).expect("passes");
            assert!(
                matches!(passed, Cow::Borrowed(_)),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        for answer in [
            &b"not json, but it names tools"[..],
            b"\xEF\xBB\xBF{\"id\":1,\"result\":{\"tools\":[{\"name\":\"refund\"}]}}",
            br#"{"id":1,"result":{"tools":{"name":"refund"}}}"#,
            br#"{"id":1,"result":{"tools":[{"title":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":[{"name":"a","name":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":[{"name":"a","NAME":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":[{"name":7}]}}"#,
            br#"{"id":1,"RESULT":{"tools":[{"name":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":[]},"result":{"tools":[{"name":"refund"}]}}"#,
            "{\"id\":1,\"result\":{\"tools\":[],\"tool\u{17F}\":[{\"name\":\"refund\"}]}}"
                .as_bytes(),
        ] {
            let refused = filter_message(answer, &mut allow(&["a"]), &mut listed);
            assert!(refused.is_err(), "{}", String::from_utf8_lossy(answer));
            let why = refused.expect_err("refused").0;
            assert!(
                !why.contains("refund"),
                "the server's text is not repeated: {why}"
            );
        }
    }

    #[test]
    fn lists_are_found_by_what_an_answer_holds_batches_and_templates_too() {
        let mut listed = Listed::default();
        let batch = br#"[{"id":1,"result":{"tools":[{"name":"refund"},{"name":"a"}]}},{"id":2,"result":{}}]"#;
        let out = filter_message(batch, &mut allow(&["a"]), &mut listed).expect("filtered");
        assert_eq!(
            String::from_utf8(out.into_owned()).expect("utf-8"),
            r#"[{"id":1,"result":{"tools":[{"name":"a"}]}},{"id":2,"result":{}}]"#
        );
        let templates = br#"{"id":3,"result":{"resourceTemplates":[{"uriTemplate":"crm://c/{id}","name":"c"},{"uriTemplate":"crm://secret/{id}","name":"s"}]}}"#;
        let out = filter_message(templates, &mut allow(&["crm://c/{id}"]), &mut listed)
            .expect("filtered");
        let text = String::from_utf8(out.into_owned()).expect("utf-8");
        assert!(
            text.contains("crm://c/{id}") && !text.contains("secret"),
            "{text}"
        );
    }
}
