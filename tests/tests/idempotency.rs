//! Idempotency keys across real processes: alpha writes to a tool outside the mesh (a real
//! HTTPS server) that requires keys; a retry is answered with the first response without
//! reaching the tool, also after deputyd restarts; the same key with another request is 422, a
//! duplicate while the first is in flight is 409, and a write without a key is refused.

use std::path::Path;
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::https_tool::HttpsTool;
use deputy_tests::{IssuerProcess, NodeProcess, eventually, my_uid, write_entries};
use http::{Method, StatusCode};

fn config(dir: &Path, tool: &HttpsTool) -> std::path::PathBuf {
    let ca = dir.join("tool-ca.pem");
    std::fs::write(&ca, &tool.ca_pem).expect("write CA");
    let text = format!(
        r#"{head}
[[agent]]
name = "alpha"
spiffe_id = "spiffe://example.org/agent/alpha"
outbound = "127.0.0.1:0"
uids = [{uid}]
originate = ["user:*"]

[[external]]
name = "orders"
url = "https://{tool}"
ca_file = "{ca}"
callers = ["alpha"]
require_idempotency_key = true
"#,
        head = deputy_tests::node_config_head(dir),
        uid = my_uid(),
        tool = tool.addr,
        ca = ca.display(),
    );
    let path = dir.join("deputyd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn start(config: &Path) -> NodeProcess {
    let node = NodeProcess::start(config);
    eventually("alpha's SVID", Duration::from_secs(20), || {
        (node.identity("alpha")["state"] == "available").then_some(())
    });
    node
}

/// alpha's write to `path` in alice's task `order-7`, with `key` and `body`.
async fn write(
    node: &NodeProcess,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> http::Response<hyper::body::Incoming> {
    write_in(node, Some("order-7"), path, key, body).await
}

/// [`write`] in alice's task `task` (`None`: one alpha does not name, a new one on every call).
async fn write_in(
    node: &NodeProcess,
    task: Option<&str>,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> http::Response<hyper::body::Incoming> {
    let mut call = client::get("orders", path, Protocol::Http1);
    *call.method_mut() = Method::POST;
    *call.body_mut() = client::full(body);
    let headers = [
        ("deputy-principal", Some("user:alice@example.org")),
        ("deputy-scope", Some("orders:write")),
        ("deputy-task", task),
        ("content-type", Some("application/json")),
        ("idempotency-key", key),
    ];
    for (name, value) in headers {
        if let Some(value) = value {
            call.headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
    }
    client::send(&node.outbound("alpha"), Protocol::Http1, call)
        .await
        .expect("call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_answered_once_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tool = HttpsTool::start(&[b"h2", b"http/1.1"]);
    write_entries(dir.path(), &["alpha"], "1h", "1h");
    let _issuer = IssuerProcess::start(dir.path());
    let config = config(dir.path(), &tool);
    let node = start(&config);

    // The tool requires keys: a write without one is refused, never sent.
    let response = write(&node, "/orders", None, r#"{"sku": 1}"#).await;
    client::expect_problem(
        response,
        StatusCode::BAD_REQUEST,
        "idempotency-key-required",
        "Idempotency-Key",
    )
    .await;
    assert!(tool.received().is_empty());

    // The first write is sent; its retry is answered with the first response.
    let first = write(&node, "/orders", Some("k-1"), r#"{"sku": 1}"#).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!first.headers().contains_key("deputy-idempotent-replay"));
    let first_id = first.headers()["deputy-request-id"].clone();
    assert_eq!(client::text(first).await, "ok");
    let retry = write(&node, "/orders", Some("k-1"), r#"{"sku": 1}"#).await;
    assert_eq!(retry.status(), StatusCode::OK);
    // The replay is this call's answer: its own request id, not the first's.
    assert_ne!(retry.headers()["deputy-request-id"], first_id);
    assert!(
        retry.headers().contains_key("deputy-idempotent-replay"),
        "{:?}\n{}",
        retry.headers(),
        node.process.output.text()
    );
    assert_eq!(client::text(retry).await, "ok");
    assert_eq!(tool.received().len(), 1, "the retry reached the tool");

    // A task alpha does not name is a new task on every call: its retry is still a replay.
    for _ in 0..2 {
        let unnamed = write_in(&node, None, "/orders", Some("k-u"), r#"{"sku": 9}"#).await;
        assert_eq!(unnamed.status(), StatusCode::OK);
    }
    assert_eq!(
        tool.received().len(),
        2,
        "an unnamed task's retry reached the tool"
    );
    // The same key in another task is another write.
    let other_task = write_in(
        &node,
        Some("order-8"),
        "/orders",
        Some("k-1"),
        r#"{"sku": 1}"#,
    )
    .await;
    assert!(
        !other_task
            .headers()
            .contains_key("deputy-idempotent-replay")
    );
    assert_eq!(tool.received().len(), 3);

    // The same key for another request is refused.
    let other = write(&node, "/orders", Some("k-1"), r#"{"sku": 2}"#).await;
    client::expect_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "another request",
    )
    .await;

    // deputyd restarts: the first response is still the answer.
    assert!(node.process.stop().success());
    let node = start(&config);
    let retry = write(&node, "/orders", Some("k-1"), r#"{"sku": 1}"#).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["deputy-idempotent-replay"], "true");
    assert_eq!(tool.received().len(), 3, "the retry reached the tool");
    // The audit trail marks each replay as such: nothing was done again.
    let trail = std::fs::read_to_string(dir.path().join("state/audit/audit.jsonl")).expect("trail");
    let replays = trail
        .lines()
        .filter(|l| l.contains("\"replayed\":true"))
        .count();
    assert!(replays >= 3, "{replays} replays marked: {trail}");

    // A duplicate while the first is still in flight is told so.
    let held = {
        let outbound = node.outbound("alpha");
        tokio::spawn(async move {
            let mut call = client::get("orders", "/hold/orders", Protocol::Http1);
            *call.method_mut() = Method::POST;
            *call.body_mut() = client::full(r#"{"sku": 3}"#);
            for (name, value) in [
                ("deputy-principal", "user:alice@example.org"),
                ("deputy-scope", "orders:write"),
                ("deputy-task", "order-7"),
                ("content-type", "application/json"),
                ("idempotency-key", "k-2"),
            ] {
                call.headers_mut()
                    .insert(name, value.parse().expect("header value"));
            }
            let response = client::send(&outbound, Protocol::Http1, call)
                .await
                .expect("call");
            (response.status(), client::text(response).await)
        })
    };
    eventually(
        "the held write reached the tool",
        Duration::from_secs(10),
        || (tool.received().len() == 4).then_some(()),
    );
    let duplicate = write(&node, "/hold/orders", Some("k-2"), r#"{"sku": 3}"#).await;
    client::expect_problem(
        duplicate,
        StatusCode::CONFLICT,
        "idempotency-conflict",
        "still in flight",
    )
    .await;
    tool.release();
    assert_eq!(
        held.await.expect("the held write"),
        (StatusCode::OK, "ok".to_owned())
    );
    let retry = write(&node, "/hold/orders", Some("k-2"), r#"{"sku": 3}"#).await;
    assert_eq!(retry.headers()["deputy-idempotent-replay"], "true");
    assert_eq!(tool.received().len(), 4);
}
