//! Revocation through real deputyd processes: `deputy revoke` on a node's operator socket cuts
//! the streams in flight under what it revokes, refuses new calls under it at that end (the
//! calling or the receiving one), and leaves every other task alone.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::Mesh;
use deputy_tests::sse::{first_event, next_event, read_events};
use deputy_tests::{binary, my_uid, run};
use http::StatusCode;
use hyper::body::Incoming;

const ALICE: &str = "user:alice@example.org";

/// The operator socket section for a node, with this test's uid as its operator.
fn operator_section(socket: &Path) -> String {
    format!(
        "[approvals]\nsocket = \"{}\"\noperators = [{}]\n",
        socket.display(),
        my_uid()
    )
}

/// `deputy ARGS --socket SOCKET`: whether it succeeded, and its output.
fn deputy(args: &[&str], socket: &Path) -> (bool, String) {
    let (status, output) = run(Command::new(binary("deputy"))
        .args(args)
        .arg("--socket")
        .arg(socket));
    (status.success(), output)
}

/// alpha's call to beta's `path` in `task`, for `principal`.
async fn call_in(mesh: &Mesh, principal: &str, task: &str, path: &str) -> http::Response<Incoming> {
    let mut request = client::get("beta", path, Protocol::Http1);
    for (name, value) in [
        ("deputy-principal", principal),
        ("deputy-scope", "events:read"),
        ("deputy-task", task),
    ] {
        request
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    client::send(&mesh.node1.outbound_of("alpha"), Protocol::Http1, request)
        .await
        .expect("call")
}

/// A minute of events from beta in `task`, open end to end.
async fn stream_in(mesh: &Mesh, principal: &str, task: &str) -> Incoming {
    let response = call_in(mesh, principal, task, "/events?count=600").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    first_event(&mut body).await;
    body
}

/// Reads `body` until it ends: it must be cut (an error), within 5 s.
async fn expect_cut(body: &mut Incoming, what: &str) {
    let (_, clean) = tokio::time::timeout(Duration::from_secs(5), read_events(body))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open 5 s after the revocation"));
    assert!(!clean, "{what}: ended cleanly, as if the answer were whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_cuts_what_it_covers_refuses_new_calls_and_leaves_the_rest_alone() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let (node1, node2) = (
        sockets.path().join("node1.sock"),
        sockets.path().join("node2.sock"),
    );
    let mesh = Mesh::start_configured(
        "1h",
        None,
        (&operator_section(&node1), &operator_section(&node2)),
    );
    let mut revoked = stream_in(&mesh, ALICE, "t-revoked").await;
    let mut other = stream_in(&mesh, ALICE, "t-other").await;

    // At the calling end: the task's stream is cut, the other task's goes on.
    let (ok, out) = deputy(
        &[
            "revoke",
            "--task",
            "t-revoked",
            "--reason",
            "leaked a token",
        ],
        &node1,
    );
    assert!(ok, "{out}");
    let applied: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(applied["calls_cut"], 1, "{applied}");
    assert_eq!(applied["revocation"]["subject"]["value"], "t-revoked");
    expect_cut(&mut revoked, "the revoked task's stream").await;
    next_event(&mut other).await;

    // A new call in the task is refused before it leaves, and says why.
    let refused = call_in(&mesh, ALICE, "t-revoked", "/").await;
    client::expect_problem(
        refused,
        StatusCode::FORBIDDEN,
        "revoked",
        "task t-revoked was revoked by uid",
    )
    .await;
    let listed = deputy(&["revocations", "list"], &node1);
    assert!(
        listed.0 && listed.1.contains("task t-revoked") && listed.1.contains("leaked a token"),
        "{listed:?}"
    );

    // At the receiving end: the principal's calls are cut and refused there, and another
    // principal's pass.
    let (ok, out) = deputy(
        &[
            "revoke",
            "--principal",
            ALICE,
            "--reason",
            "account closed",
            "--for",
            "10m",
        ],
        &node2,
    );
    assert!(ok, "{out}");
    expect_cut(&mut other, "alice's other stream, at beta's node").await;
    let refused = call_in(&mesh, ALICE, "t-new", "/").await;
    client::expect_problem(refused, StatusCode::FORBIDDEN, "revoked", "account closed").await;
    let bob = call_in(&mesh, "user:bob@example.org", "t-bob", "/").await;
    assert_eq!(bob.status(), StatusCode::OK);

    // An agent's revocation needs a bound; a caller that is not an operator is refused.
    let (ok, out) = deputy(
        &[
            "revoke",
            "--agent",
            "spiffe://example.org/agent/alpha",
            "--reason",
            "rogue",
        ],
        &node1,
    );
    assert!(!ok && out.contains("say how long"), "{out}");
}
