//! Filtering MCP list answers: a `tools/list`, `prompts/list` or `resources/list` answer keeps
//! only the items the caller may use, each judged as the call that would use it.
//!
//! The answer is read as the protocol says (one JSON-RPC message, or server-sent events whose
//! data are JSON-RPC messages), or refused: an answer that cannot be read is never passed on
//! unfiltered. Items kept are passed on byte for byte; only the list around them is rewritten.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::BodyRefused;
use crate::input::Mcp;

/// Largest list answer (a JSON body, or one event's data) read: a list larger than this is
/// refused rather than passed on unfiltered.
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// A list method whose answer is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list`: each tool judged as `tools/call` of it.
    Tools,
    /// `prompts/list`: each prompt judged as `prompts/get` of it.
    Prompts,
    /// `resources/list`: each resource judged as `resources/read` of it.
    Resources,
}

/// The list an MCP method asks for, if its answer is filtered.
pub fn list_kind(method: &str) -> Option<ListKind> {
    match method {
        "tools/list" => Some(ListKind::Tools),
        "prompts/list" => Some(ListKind::Prompts),
        "resources/list" => Some(ListKind::Resources),
        _ => None,
    }
}

impl ListKind {
    /// The member of `result` holding the items.
    fn items(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
        }
    }

    /// The call that would use an item named `id`.
    fn call(self, id: String) -> Mcp {
        let (method, tool, prompt, resource) = match self {
            Self::Tools => ("tools/call", Some(id), None, None),
            Self::Prompts => ("prompts/get", None, Some(id), None),
            Self::Resources => ("resources/read", None, None, Some(id)),
        };
        Mcp {
            method: method.to_owned(),
            tool,
            prompt,
            resource,
            arguments: BTreeMap::new(),
        }
    }

    /// The item's name (its URI for a resource).
    fn id(self, item: &RawValue) -> Result<String, BodyRefused> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        #[derive(Deserialize)]
        struct Located {
            uri: String,
        }
        let parsed = match self {
            Self::Tools | Self::Prompts => {
                serde_json::from_str::<Named>(item.get()).map(|n| n.name)
            }
            Self::Resources => serde_json::from_str::<Located>(item.get()).map(|l| l.uri),
        };
        parsed.map_err(|e| {
            BodyRefused(format!(
                "an item of the {} list cannot be read ({e}); the answer is refused rather than \
                 passed on unfiltered",
                self.items()
            ))
        })
    }
}

/// How many items an answer listed, and how many it kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    /// Items in the server's answer.
    pub listed: usize,
    /// Items passed on.
    pub kept: usize,
}

type Members = BTreeMap<String, Box<RawValue>>;

/// Filters one JSON-RPC message of a list answer: a response's `result` keeps the items `keep`
/// allows. A message without a `result` (an error, a notification, a server's request) passes
/// as it is.
pub fn filter_message(
    kind: ListKind,
    message: &[u8],
    keep: &mut dyn FnMut(Mcp) -> bool,
    listed: &mut Listed,
) -> Result<Vec<u8>, BodyRefused> {
    let unreadable = |e: serde_json::Error| {
        BodyRefused(format!(
            "the answer to {} is not one JSON-RPC message ({e}); it is refused rather than passed \
             on unfiltered",
            kind.items()
        ))
    };
    if message.len() > MAX_LIST_BYTES {
        return Err(BodyRefused(format!(
            "the {} list answer is larger than {MAX_LIST_BYTES} bytes, the most deputyd filters",
            kind.items()
        )));
    }
    let mut top: Members = serde_json::from_slice(message).map_err(unreadable)?;
    let Some(result) = top.get("result") else {
        return Ok(message.to_vec());
    };
    let mut result: Members = serde_json::from_str(result.get()).map_err(unreadable)?;
    let items = result.get(kind.items()).ok_or_else(|| {
        BodyRefused(format!(
            "the answer's result has no `{}` array; it is refused rather than passed on \
             unfiltered",
            kind.items()
        ))
    })?;
    let items: Vec<Box<RawValue>> = serde_json::from_str(items.get()).map_err(unreadable)?;
    listed.listed += items.len();
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if keep(kind.call(kind.id(&item)?)) {
            kept.push(item);
        }
    }
    listed.kept += kept.len();
    result.insert(kind.items().to_owned(), raw(&kept)?);
    top.insert("result".to_owned(), raw(&result)?);
    serde_json::to_vec(&top).map_err(|e| BodyRefused(e.to_string()))
}

fn raw(value: &impl serde::Serialize) -> Result<Box<RawValue>, BodyRefused> {
    serde_json::value::to_raw_value(value).map_err(|e| BodyRefused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ListKind::Tools,
            answer,
            &mut allow(&["lookup_customer", "search_tickets"]),
            &mut listed,
        )
        .expect("filtered");
        let text = String::from_utf8(out).expect("utf-8");
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
            ListKind::Prompts,
            br#"{"id":1,"result":{"prompts":[{"name":"p"}]}}"#,
            &mut keep,
            &mut listed,
        )
        .expect("filtered");
        filter_message(
            ListKind::Resources,
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
    fn errors_pass_and_unreadable_answers_are_refused() {
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#;
        let mut listed = Listed::default();
        let passed = filter_message(ListKind::Tools, error, &mut allow(&[]), &mut listed);
        assert_eq!(passed.expect("passes"), error.to_vec());
        for answer in [
            &b"not json"[..],
            br#"[{"id":1,"result":{"tools":[{"name":"refund"}]}}]"#,
            br#"{"id":1,"result":{"items":[{"name":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":{"name":"refund"}}}"#,
            br#"{"id":1,"result":{"tools":[{"title":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":[{"name":"a","name":"refund"}]}}"#,
            br#"{"id":1,"result":{"tools":[{"name":7}]}}"#,
        ] {
            let refused = filter_message(ListKind::Tools, answer, &mut allow(&["a"]), &mut listed);
            assert!(refused.is_err(), "{}", String::from_utf8_lossy(answer));
        }
    }
}
