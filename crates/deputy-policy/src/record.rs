//! The decision record: what the decision log says about one decision, field by field.
//!
//! The record is built from named facts of the input (who, for whom, in which task, which
//! method and path, which MCP method and tool) and of the decision; nothing else from the
//! request has a field to go in. Query values, header values, bodies, tool arguments, tokens
//! and session ids therefore never reach the log, and the input is never serialized for it.
//! Replaying decisions needs the whole input: `[policy] log_inputs` writes it as a separate
//! event (`deputy::decision::input`), off by default, for debugging only (it may hold secrets).

use std::sync::OnceLock;

use crate::input::{Direction, PolicyInput};
use crate::{DECISION_LOG_TARGET, DecisionRecord};

/// The version of the record's fields (`record_version`): bumped when a field changes meaning.
pub const DECISION_RECORD_VERSION: u32 = 1;

/// The log target of the whole inputs written under `[policy] log_inputs`.
pub const DECISION_INPUT_TARGET: &str = "deputy::decision::input";

/// Writes the record of `record`, decided on `input` for request `request_id`. With
/// `log_input`, the input follows as its own event, for `deputy policy eval --inputs`.
pub fn log_decision(
    record: &DecisionRecord,
    input: &PolicyInput,
    request_id: &str,
    log_input: bool,
) {
    let direction = match input.direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    let actors = actors(input);
    let mcp = input.request.mcp.as_ref();
    let a2a = input.request.a2a.as_ref();
    tracing::info!(
        target: DECISION_LOG_TARGET,
        record_version = DECISION_RECORD_VERSION,
        decision_id = %record.id,
        request_id,
        time = %input.time.rfc3339,
        direction,
        node = node(),
        agent = %input.agent.spiffe_id,
        peer = input.peer.as_ref().map(|p| p.spiffe_id.as_str()),
        service = input.service.as_ref().map(|s| s.name.as_str()),
        principal = input.principal.as_deref(),
        task = input.task.as_ref().map(|t| t.id.as_str()),
        actors = %actors,
        method = %input.request.method,
        // Quoted and escaped (a plain string field): the path is the caller's text.
        path = path_with_query_names(input).as_str(),
        mcp_method = mcp.map(|m| m.method.as_str()),
        mcp_tool = mcp.and_then(|m| m.tool.as_deref()),
        mcp_prompt = mcp.and_then(|m| m.prompt.as_deref()),
        // Without its query, which may carry what a path's query would.
        mcp_resource = mcp
            .and_then(|m| m.resource.as_deref())
            .map(|r| r.split(['?', '#']).next().unwrap_or_default()),
        // The declared arguments' pointers, never their values.
        mcp_arguments = mcp.filter(|m| !m.arguments.is_empty()).map(argument_names).as_deref(),
        a2a_method = a2a.map(|a| a.method.as_str()),
        a2a_skill = a2a.and_then(|a| a.skill.as_deref()),
        allow = record.decision.allow,
        reasons = %serde_json::to_string(&record.decision.reasons).unwrap_or_default(),
        obligations = %obligations(record),
        engine = record.engine,
        revision = %record.revision,
        eval_us = record.took.as_micros() as u64,
        "policy decision"
    );
    if log_input {
        tracing::info!(
            target: DECISION_INPUT_TARGET,
            decision_id = %record.id,
            input = %serde_json::to_string(input).unwrap_or_default(),
            "policy input (log_inputs is on: this may hold secrets)"
        );
    }
}

/// The pointers of the arguments a call gave: `/customer_id, /filter/team`.
fn argument_names(mcp: &crate::input::Mcp) -> String {
    mcp.arguments
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The chain's actors, oldest first, then the last delegate: `a, b, c`.
fn actors(input: &PolicyInput) -> String {
    let mut actors: Vec<&str> = input.chain.iter().map(|l| l.iss.as_str()).collect();
    actors.extend(input.chain.last().map(|l| l.aud.as_str()));
    actors.join(", ")
}

/// The path with the query's names and none of its values: `/tickets?api_key&page`. A name
/// that does not look like one (`token=s3cr3t` sent as `token%3Ds3cr3t`, a bare key, control
/// characters) may be a secret itself: it is written as `<redacted>`.
fn path_with_query_names(input: &PolicyInput) -> String {
    let request = &input.request;
    if request.query.is_empty() {
        return request.path.clone();
    }
    let names: Vec<&str> = request
        .query
        .keys()
        .map(|name| {
            if plain_name(name) {
                name.as_str()
            } else {
                "<redacted>"
            }
        })
        .collect();
    format!("{}?{}", request.path, names.join("&"))
}

/// A query parameter name as applications write them: short, letters, digits, `_ . - [ ]`.
fn plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-[]".contains(&b))
}

/// The obligations the decision set (approval, scope), as JSON; `{}` for none.
fn obligations(record: &DecisionRecord) -> String {
    let decision = &record.decision;
    let mut out = serde_json::Map::new();
    if let Some(approval) = &decision.approval {
        out.insert(
            "approval".into(),
            serde_json::to_value(approval).unwrap_or_default(),
        );
    }
    if let Some(scope) = &decision.scope {
        out.insert(
            "scope".into(),
            serde_json::to_value(scope).unwrap_or_default(),
        );
    }
    serde_json::Value::Object(out).to_string()
}

/// This node's name (its host name), read once.
fn node() -> &'static str {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::input;

    #[test]
    fn the_path_keeps_query_names_and_drops_their_values() {
        let mut input = input();
        assert_eq!(path_with_query_names(&input), "/customers/c-1001/orders");
        input
            .request
            .query
            .insert("api_key".into(), vec!["s3cr3t".into()]);
        input.request.query.insert("page".into(), vec!["2".into()]);
        assert_eq!(
            path_with_query_names(&input),
            "/customers/c-1001/orders?api_key&page"
        );
        for secret in [
            "token=s3cr3t",
            "sk_live_0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "a\nb",
        ] {
            input.request.query.insert(secret.into(), vec![]);
        }
        let path = path_with_query_names(&input);
        assert_eq!(path.matches("<redacted>").count(), 3, "{path}");
        assert!(
            !path.contains("s3cr3t") && !path.contains("sk_live"),
            "{path}"
        );
    }

    #[test]
    fn actors_are_every_delegator_then_the_last_delegate() {
        assert_eq!(
            actors(&input()),
            "spiffe://example.org/agent/frontdoor, spiffe://example.org/agent/support-eu"
        );
    }
}
