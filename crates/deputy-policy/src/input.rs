//! The input document, version 1: everything a policy may look at, and nothing it may not
//! (headers outside the allowlist never enter; secrets in allowed headers are redacted).
//!
//! The JSON Schema is `policies/input.schema.json`; a test checks that every field here is in it.

use std::collections::BTreeMap;

use chrono::{Datelike as _, TimeZone as _, Timelike as _};
use serde::{Deserialize, Serialize};

/// The version of the input document this crate builds.
pub const INPUT_VERSION: u32 = 1;

/// Attributes configured per SPIFFE ID (team, environment, kind of work...).
pub type Attributes = BTreeMap<String, serde_json::Value>;

/// Which end of a call is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The calling agent's deputyd: may this agent make this call?
    Outbound,
    /// The called agent's deputyd: may this peer make this request of this agent?
    Inbound,
}

impl Direction {
    /// `outbound` or `inbound`, as in the input.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// The whole input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Always [`INPUT_VERSION`].
    pub version: u32,
    /// Which end asks.
    pub direction: Direction,
    /// The local agent (the caller outbound, the callee inbound).
    pub agent: Agent,
    /// The mTLS peer (inbound only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// The service called (outbound only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// The principal the task acts for, if the call is part of a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// The verified chain so far, oldest link first (empty when none).
    #[serde(default)]
    pub chain: Vec<ChainLink>,
    /// The HTTP request.
    pub request: RequestInfo,
    /// When.
    pub time: TimeInfo,
    /// What is decided: the call itself (absent), or one item of an MCP list answer
    /// (`"list"`: may this caller see it, that is, call it?).
    #[serde(default, skip_serializing_if = "Phase::is_call")]
    pub phase: Phase,
}

/// What a decision is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The call in the request.
    #[default]
    Call,
    /// One item of a `tools/list`, `prompts/list` or `resources/list` answer, shown as the call
    /// that would use it (`request.mcp`).
    List,
}

impl Phase {
    /// The decision is on the call itself.
    pub fn is_call(&self) -> bool {
        *self == Self::Call
    }
}

/// The local agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its configured name.
    pub name: String,
    /// Its configured attributes.
    #[serde(default)]
    pub attributes: Attributes,
}

/// The peer of an inbound call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its SPIFFE ID (from its verified SVID).
    pub spiffe_id: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// Attributes configured for its SPIFFE ID.
    #[serde(default)]
    pub attributes: Attributes,
}

/// The service of an outbound call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    /// The name the agent called.
    pub name: String,
    /// The SPIFFE ID the service must present; absent for a tool outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The HTTPS base URL of a tool outside the mesh (`[[external]]`); absent for the mesh's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// Attributes configured for that SPIFFE ID.
    #[serde(default)]
    pub attributes: Attributes,
}

/// The task a call belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Calls the local agent may still make under its link, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_left: Option<u64>,
    /// Whether this call starts the task (origination).
    #[serde(default)]
    pub new: bool,
    /// The scopes the next link would carry (outbound) or the last link carries (inbound).
    #[serde(default)]
    pub scope: Vec<String>,
    /// Who started the task, for whom. Deputy always sends it with a task, so that a policy
    /// judges origination at every hop, not only where the task starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The start of a task: the agent that signed the first link, and the principal it named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The SPIFFE ID of the agent that started the task.
    pub agent: String,
    /// The principal it started the task for.
    pub principal: String,
}

/// One link of the chain, as a policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    /// The delegator.
    pub iss: String,
    /// The delegate.
    pub aud: String,
    /// Its scopes.
    pub scope: Vec<String>,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// The HTTP request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInfo {
    /// The method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query parameters, decoded as servers decode them, each name with every value it
    /// was given, in order (a server may act on any of them: Go and Flask read the first).
    #[serde(default)]
    pub query: BTreeMap<String, Vec<String>>,
    /// Allowlisted headers, lower-case names; secret-bearing ones redacted.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The MCP call, when the body is MCP JSON-RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Mcp>,
    /// The A2A call, when the service is marked as A2A and the body is JSON-RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<A2a>,
}

/// An MCP JSON-RPC request, as read from the start of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    /// The JSON-RPC method (`tools/call`, `resources/read`...).
    pub method: String,
    /// The tool name for `tools/call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The prompt name for `prompts/get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The resource URI for `resources/read`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The tool arguments of a `tools/call` the service declared (`arguments` in its
    /// stanza), by JSON pointer: strings, numbers, booleans and nulls, present when given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

/// An A2A JSON-RPC request, as read from the start of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2a {
    /// The JSON-RPC method (`message/send`, `message/stream`, `tasks/get`, `tasks/cancel`...).
    pub method: String,
    /// The skill the message names (`params.message.metadata.skill`), when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
}

/// The time of the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeInfo {
    /// Unix seconds.
    pub unix: i64,
    /// RFC 3339 in the configured time zone.
    pub rfc3339: String,
    /// The configured time zone (IANA name).
    pub zone: String,
    /// Day of the week in that zone: `Monday` ... `Sunday` (as OPA's `time.weekday`).
    pub weekday: String,
    /// Hour of the day in that zone, 0-23.
    pub hour: u32,
}

impl TimeInfo {
    /// The time `unix` seen in `zone`.
    pub fn at(unix: i64, zone: chrono_tz::Tz) -> Self {
        let utc = chrono::Utc
            .timestamp_opt(unix, 0)
            .single()
            .unwrap_or_default();
        let local = utc.with_timezone(&zone);
        Self {
            unix,
            rfc3339: local.to_rfc3339(),
            zone: zone.name().to_owned(),
            weekday: weekday_name(local.weekday()).to_owned(),
            hour: local.hour(),
        }
    }
}

fn weekday_name(day: chrono::Weekday) -> &'static str {
    match day {
        chrono::Weekday::Mon => "Monday",
        chrono::Weekday::Tue => "Tuesday",
        chrono::Weekday::Wed => "Wednesday",
        chrono::Weekday::Thu => "Thursday",
        chrono::Weekday::Fri => "Friday",
        chrono::Weekday::Sat => "Saturday",
        chrono::Weekday::Sun => "Sunday",
    }
}

/// Headers a policy may see. Anything else (cookies, arbitrary agent headers) stays out of
/// policy input and the decision log.
pub const HEADER_ALLOWLIST: &[&str] = &[
    "accept",
    "authorization",
    "content-length",
    "content-type",
    "mcp-session-id",
    "user-agent",
    "x-request-id",
];

/// Headers whose value is a credential: present to policy as `"[redacted]"` only.
const SECRET_HEADERS: &[&str] = &["authorization"];

/// The value a secret header shows.
pub const REDACTED: &str = "[redacted]";

/// Picks the allowlisted headers from `(name, value)` pairs, redacting secrets.
pub fn policy_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, String> {
    headers
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            HEADER_ALLOWLIST.contains(&name.as_str()).then(|| {
                let value = if SECRET_HEADERS.contains(&name.as_str()) {
                    REDACTED.to_owned()
                } else {
                    value.to_owned()
                };
                (name, value)
            })
        })
        .collect()
}

/// Query parameters of `query` (`a=1&b=2&a=3`), decoded as
/// `application/x-www-form-urlencoded` (`+` is a space, percent-escapes decoded, invalid UTF-8
/// shown as U+FFFD), as the servers behind Deputy read them: a policy that matches `customer`
/// also matches `%63ustomer`. Every value of a repeated name is kept, in order.
pub fn query_params(query: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    params
}

/// The MCP call in a whole body (the data path reads it while the body streams, with
/// [`crate::mcp::Inspector`]). `None` when the body is not a complete JSON-RPC call or is
/// refused (duplicate members, a batch).
pub fn mcp_from_body(body: &[u8]) -> Option<Mcp> {
    let mut inspector = crate::mcp::Inspector::new();
    inspector.feed(body).ok()?;
    inspector.finish().ok()?;
    match inspector.seen() {
        crate::mcp::Seen::Call(crate::mcp::Call::Mcp(mcp)) => Some(mcp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_given_in_the_configured_zone() {
        // 2026-11-23T08:30:00Z is a Monday; in Tokyo it is 17:30 the same day.
        let t = TimeInfo::at(1_795_422_600, chrono_tz::Asia::Tokyo);
        assert_eq!(t.weekday, "Monday");
        assert_eq!(t.hour, 17);
        assert!(t.rfc3339.ends_with("+09:00"), "{}", t.rfc3339);
        let t = TimeInfo::at(1_795_422_600, chrono_tz::America::Los_Angeles);
        assert_eq!((t.weekday.as_str(), t.hour), ("Monday", 0));
    }

    #[test]
    fn only_allowlisted_headers_enter_and_credentials_are_redacted() {
        let headers = policy_headers([
            ("Authorization", "Bearer s3cret"),
            ("Cookie", "session=abc"),
            ("Content-Type", "application/json"),
        ]);
        assert_eq!(
            headers.get("authorization").map(String::as_str),
            Some(REDACTED)
        );
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert!(!headers.contains_key("cookie"));
        assert!(!format!("{headers:?}").contains("s3cret"));
    }

    #[test]
    fn mcp_calls_are_read_from_a_whole_json_rpc_body_only() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"refund","arguments":{}}}"#;
        assert_eq!(
            mcp_from_body(body),
            Some(Mcp {
                method: "tools/call".into(),
                tool: Some("refund".into()),
                prompt: None,
                resource: None,
                arguments: Default::default(),
            })
        );
        assert_eq!(
            mcp_from_body(&body[..40]),
            None,
            "cut off by the peek bound"
        );
        assert_eq!(mcp_from_body(b"not json"), None);
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(mcp_from_body(list).and_then(|m| m.tool), None);
    }

    #[test]
    fn query_parameters_are_decoded_and_repeats_keep_every_value() {
        let q = query_params(Some("a=1&b=x%20y+z&flag&%63ustomer=c-2&a=evil"));
        assert_eq!(
            q["a"],
            ["1", "evil"],
            "a repeated name keeps both values, in order"
        );
        assert_eq!(q["b"], ["x y z"]);
        assert_eq!(q["flag"], [""]);
        assert_eq!(
            q["customer"],
            ["c-2"],
            "names are decoded as the server decodes them"
        );
        assert!(query_params(None).is_empty());
        assert_eq!(query_params(Some("k=%FF"))["k"], ["\u{fffd}"]);
    }
}
