//! Revocation through real deputyd processes: `deputy revoke` on a node's operator socket cuts
//! the streams in flight under what it revokes, refuses new calls under it at that end (the
//! calling or the receiving one), and leaves every other task alone; a task's revocation
//! follows it down the chain of nodes it crossed (tests/src/chain.rs), and a revocation from a
//! node that did not extend the task is refused.

/// Where a node takes revocations from other nodes.
const PATH: &str = "/.well-known/deputy/revocation";

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deputy_tests::chain::{Chain, agent_id};
use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::Mesh;
use deputy_tests::sse::{first_event, next_event, read_events};
use deputy_tests::tls_client::{self, ClientCert};
use deputy_tests::{audit_records, binary, my_uid, run};
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
    assert_eq!(applied["applied"]["calls_cut"], 1, "{applied}");
    assert_eq!(
        applied["applied"]["revocation"]["subject"]["value"],
        "t-revoked"
    );
    expect_cut(&mut revoked, "the revoked task's stream").await;
    next_event(&mut other).await;

    // A new call in the task is refused before it leaves, and says why.
    let refused = call_in(&mesh, ALICE, "t-revoked", "/").await;
    client::expect_problem(
        refused,
        StatusCode::FORBIDDEN,
        "revoked",
        "task t-revoked was revoked (rev_",
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

/// A minute of c's events, streamed to b in the task behind `context`, open end to end.
async fn c_stream(chain: &Chain, context: &str) -> Incoming {
    let response = chain.b_calls_c(context, "/events?count=600").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    first_event(&mut body).await;
    body
}

/// A revocation of `task` as a node would send it, signed with `signer`'s key and carrying
/// `key`.
fn forged_revocation(signer: &ClientCert, task: &str, key: &str) -> String {
    let signer =
        deputy_delegation::LinkSigner::new(&[signer.0.to_vec()], &signer.1.serialize_der())
            .expect("a signer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": signer.spiffe_id().to_string(), "task": task, "principal": ALICE,
        "originator": agent_id("a"), "key": key, "reason": "forged", "by": "nobody",
        "until": now + 600, "round": "forged", "iat": now, "jti": "forged-1",
    });
    signer
        .sign_document("deputy-revocation+jwt", &claims)
        .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_revoked_at_its_origin_is_cut_on_every_node_it_reached_and_nowhere_else() {
    let chain = Chain::start();
    let revoked_context = chain.b_context(ALICE, "t-revoked").await;
    let other_context = chain.b_context(ALICE, "t-other").await;
    let mut revoked = c_stream(&chain, &revoked_context).await;
    let mut other = c_stream(&chain, &other_context).await;

    // The operator of A revokes the task; A tells B (it extended the task to B), B tells C.
    let asked = Instant::now();
    let (ok, out) = deputy(
        &[
            "revoke",
            "--task",
            "t-revoked",
            "--reason",
            "prompt injection",
        ],
        &chain.sockets[0],
    );
    let answered = Instant::now();
    assert!(ok, "{out}");
    let outcome: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let to_b = &outcome["relayed"][0];
    assert_eq!(
        (to_b["service"].as_str(), to_b["status"].as_u64()),
        (Some("b"), Some(200)),
        "{outcome}"
    );
    assert_eq!(
        (to_b["reached"].as_u64(), to_b["failed"].as_u64()),
        (Some(2), Some(0)),
        "B and C: {outcome}"
    );

    // The last hop's stream is closed within a second of the operator's answer.
    let (_, clean) = tokio::time::timeout(Duration::from_secs(1), read_events(&mut revoked))
        .await
        .expect("the last hop's stream still open a second after `deputy revoke` answered");
    assert!(!clean, "the last hop's stream ended as if whole");
    println!(
        "revoke to last hop closed: {:?} (deputy revoke answered after {:?})",
        asked.elapsed(),
        answered - asked
    );

    // Every node holds the revocation, and says who sent it on; the other task goes on.
    let listed = deputy(&["revocations", "list"], &chain.sockets[2]);
    assert!(
        listed.0
            && listed.1.contains("task t-revoked")
            && listed
                .1
                .contains("relayed by spiffe://example.org/deputyd/"),
        "{listed:?}"
    );
    next_event(&mut other).await;
    let refused = chain.b_calls_c(&revoked_context, "/").await;
    client::expect_problem(
        refused,
        StatusCode::FORBIDDEN,
        "context-refused",
        "prompt injection",
    )
    .await;
    let going_on = chain.b_calls_c(&other_context, "/").await;
    assert_eq!(going_on.status(), StatusCode::OK);

    // A revocation of the other task that no node which extended it sent is refused at C:
    // from a node of the trust domain that never had the task, from an agent's key, or signed
    // by one SVID and sent with another.
    let ca = tls_client::real_ca_in(chain.dir.path());
    let intruder = tls_client::signed(
        &tls_client::svid_params(&["spiffe://example.org/deputyd/intruder"]),
        &ca,
    );
    let stolen_agent = tls_client::signed(&tls_client::svid_params(&[&agent_id("b")]), &ca);
    let c_inbound = chain.nodes[2].inbound.clone().expect("C's inbound");
    let guessed_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (sender, signer, refused_because) in [
        (&intruder, &intruder, "did not arrive here with the key"),
        (&stolen_agent, &stolen_agent, "is not one"),
        (&intruder, &stolen_agent, "but sent by"),
    ] {
        let body = forged_revocation(signer, "t-other", guessed_key);
        let answer = tls_client::post(&c_inbound, "c", tls_client::copy_cert(sender), PATH, &body)
            .await
            .expect("C answers");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(
            answer.contains(refused_because),
            "{refused_because:?} not in {answer}"
        );
    }
    next_event(&mut other).await;
    let listed = deputy(&["revocations", "list"], &chain.sockets[2]);
    assert!(listed.0 && !listed.1.contains("t-other"), "{listed:?}");
    // Each refusal is in C's audit trail, naming the verified sender.
    let refused = audit_records(&chain.dir.path().join("state-c"), "revocation_refused");
    let senders: Vec<_> = refused.iter().map(|r| r["peer"].clone()).collect();
    assert_eq!(
        senders,
        [
            "spiffe://example.org/deputyd/intruder".into(),
            serde_json::Value::from(agent_id("b")),
            "spiffe://example.org/deputyd/intruder".into(),
        ],
        "{refused:?}"
    );
    assert!(refused.iter().all(|r| r["status"] == 403), "{refused:?}");

    // The principal revoked at the origin: both of alice's tasks went A -> B -> C, and each is
    // sent on, though one round carries both.
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
        &chain.sockets[0],
    );
    assert!(ok, "{out}");
    let outcome: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let reached: Vec<u64> = outcome["relayed"]
        .as_array()
        .expect("relayed")
        .iter()
        .map(|r| r["reached"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(reached, [2, 2], "{outcome}");
    expect_cut(&mut other, "alice's other task, at the last hop").await;
    let listed = deputy(&["revocations", "list"], &chain.sockets[2]);
    assert!(listed.0 && listed.1.contains("task t-other"), "{listed:?}");
}
