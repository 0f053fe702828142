//! Delegation across processes: a task started by one agent, continued by others with the
//! `Deputy-Context` handles their deputyd gives them, verified at every hop.

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Mesh, delta_uid};
use http::StatusCode;

const ALPHA: &str = "spiffe://example.org/agent/alpha";
const BETA: &str = "spiffe://example.org/agent/beta";
const CAROL: &str = "spiffe://example.org/agent/carol";

/// A GET of `service` + `path` through `outbound`, with `headers`; the status and JSON body.
async fn call(
    outbound: &str,
    service: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    call_as(deputy_tests::my_uid(), outbound, service, path, headers).await
}

/// [`call`], from a process of user `uid`.
async fn call_as(
    uid: u32,
    outbound: &str,
    service: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut request = client::get(service, path, Protocol::Http1);
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    let response = client::send_as(uid, outbound, Protocol::Http1, request)
        .await
        .expect("call");
    (response.status(), client::json(response).await)
}

const TASK: [(&str, &str); 3] = [
    ("deputy-principal", "user:alice@example.org"),
    ("deputy-scope", "tickets:read, users:read"),
    ("deputy-task", "task-e2e"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_crosses_both_nodes_and_the_last_agent_sees_every_actor() {
    let mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");
    let budgeted = [TASK.as_slice(), &[("deputy-budget", "5")]].concat();

    // user -> alpha (node1) -> beta (node2) -> carol (node1): beta relays with its context,
    // narrowing the scope to what carol needs.
    let (status, body) = call(
        &alpha,
        "beta",
        "/relay?to=carol&path=/tickets&scope=tickets:read",
        &budgeted,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], 200, "beta's call to carol: {body}");
    let carol = &body["response"];
    assert_eq!(carol["agent"], "carol", "{body}");
    assert_eq!(carol["caller"], BETA, "{body}");
    let facts = &carol["deputy_headers"];
    assert_eq!(
        facts["deputy-chain-actors"],
        format!("{ALPHA}, {BETA}, {CAROL}"),
        "{body}"
    );
    assert_eq!(facts["deputy-principal"], "user:alice@example.org");
    assert_eq!(facts["deputy-task"], "task-e2e");
    assert_eq!(facts["deputy-scope"], "tickets:read", "narrowed by beta");
    // beta was granted 5 calls and made one: carol may make at most the 4 left.
    assert_eq!(facts["deputy-budget"], "4", "{body}");
    assert!(
        facts["deputy-context"]
            .as_str()
            .is_some_and(|h| h.starts_with("dctx_")),
        "carol can continue the task too: {body}"
    );
    assert!(facts.get("deputy-delegation").is_none(), "{body}");

    // Asking for more than was granted is refused, never trimmed.
    let (_, body) = call(
        &alpha,
        "beta",
        "/relay?to=carol&path=/&scope=tickets:write",
        &budgeted,
    )
    .await;
    assert_eq!(body["status"], 403, "{body}");
    assert_eq!(
        body["response"]["type"], "urn:deputy:problem:scope-escalation",
        "{body}"
    );
    assert!(
        body["response"]["detail"]
            .as_str()
            .expect("detail")
            .contains("tickets:write"),
        "{body}"
    );
    let (_, body) = call(
        &alpha,
        "beta",
        "/relay?to=carol&path=/&budget=50",
        &budgeted,
    )
    .await;
    assert_eq!(
        body["response"]["type"], "urn:deputy:problem:budget-escalation",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_works_only_for_its_agent_and_only_within_its_budget() {
    let mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");
    let beta = mesh.node2.outbound_of("beta");
    let delta = mesh.node2.outbound_of("delta");

    let one_call = [TASK.as_slice(), &[("deputy-budget", "1")]].concat();
    let (status, body) = call(&alpha, "beta", "/", &one_call).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let facts = &body["deputy_headers"];
    assert_eq!(facts["deputy-budget"], "1", "{body}");
    let handle = facts["deputy-context"]
        .as_str()
        .expect("beta got a handle")
        .to_owned();

    // The same call again reuses alpha's link: beta's deputyd finds the same context (and its
    // budget), and verifies nothing twice.
    let (_, again) = call(&alpha, "beta", "/", &one_call).await;
    assert_eq!(again["deputy_headers"]["deputy-context"], handle.as_str());
    let other_task = [TASK[0], TASK[1], ("deputy-task", "task-other")];
    let (_, other) = call(&alpha, "beta", "/", &other_task).await;
    assert_ne!(other["deputy_headers"]["deputy-context"], handle.as_str());
    let metrics = mesh.node2.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("deputy_chain_cache_hits_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Another agent of the same node holding beta's handle gets nowhere.
    let (status, body) = call_as(
        delta_uid(),
        &delta,
        "carol",
        "/",
        &[("deputy-context", &handle)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], "urn:deputy:problem:context-refused");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("issued to another agent"),
        "{body}"
    );
    // Nor does a handle taken to another node, or one that was never issued.
    for (outbound, handle) in [(&alpha, handle.as_str()), (&beta, "dctx_made-up")] {
        let (status, body) = call(outbound, "carol", "/", &[("deputy-context", handle)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["type"], "urn:deputy:problem:context-refused");
    }
    // A call starts a task or continues one, not both.
    let (status, body) = call(&beta, "carol", "/", &[("deputy-context", &handle), TASK[0]]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // beta itself may call once under its link; the second call is over budget.
    let (status, body) = call(&beta, "carol", "/", &[("deputy-context", &handle)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deputy_headers"]["deputy-budget"], "0", "{body}");
    assert_eq!(
        body["deputy_headers"]["deputy-chain-actors"],
        format!("{ALPHA}, {BETA}, {CAROL}")
    );
    let (status, body) = call(&beta, "carol", "/", &[("deputy-context", &handle)]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["type"], "urn:deputy:problem:budget-exhausted");

    let metrics = mesh.node2.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("deputy_contexts ")),
        "{metrics}"
    );
}
