//! What both benches append: a call record as the data path writes one (about 600 bytes).

use deputy_audit::{CallRecord, Event};

/// The record of the `n`th call.
pub(crate) fn call(n: u64) -> Event {
    Event::Call(CallRecord {
        direction: "outbound".into(),
        agent: "alpha".into(),
        peer: "-".into(),
        service: "beta".into(),
        method: "GET".into(),
        path: "/tickets/4711".into(),
        status: 200,
        request_id: format!("01a242cd-69e3-74b7-b4ea-{n:012}"),
        decision_id: Some("01a242cd-69e3-74b7-b4ea-74fa261f230c".into()),
        problem: None,
        task: Some("t-4711".into()),
        principal: Some("user:alice@example.org".into()),
        originator: Some("spiffe://example.org/agent/alpha".into()),
        actors: vec![
            "spiffe://example.org/agent/alpha".into(),
            "spiffe://example.org/agent/beta".into(),
        ],
        dry_run: false,
        replayed: false,
        approval: None,
    })
}
