//! A peer node partitioned from the caller's, and healed. node2 (agent beta) runs in a network
//! namespace of the test's own, a host of its own on a veth link; the partition drops every
//! packet node2 sends back (`deputy_tests::netns`), silently, as a cut cable or a dead router
//! does. Callers get a problem within the configured timeouts, never a hang, and once the link is
//! healed calls are served again, with neither deputyd restarted.

use std::time::{Duration, Instant};

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::Node;
use deputy_tests::netns::Namespace;
use deputy_tests::{IssuerProcess, Process, binary, my_uid, write_entries};

/// The node's timeouts: a TCP connect plus TLS handshake, and a response's headers.
const CONNECT: Duration = Duration::from_secs(2);
const REQUEST: Duration = Duration::from_secs(4);

/// A call of beta for user:alice through alpha's outbound listener: its status, its problem
/// type (if it is one), and how long it took.
async fn call_beta(alpha: &str) -> (http::StatusCode, String, Duration) {
    let request = client::alice_calls_beta("/");
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client::send(alpha, Protocol::Http1, request),
    )
    .await
    .expect("an answer within 30 s, not a hang")
    .expect("the call is answered");
    let status = response.status();
    let body = client::json(response).await;
    let kind = body["type"].as_str().unwrap_or_default().to_owned();
    (status, kind, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_peer_node_gets_timely_problems_and_is_served_again_once_healed() {
    // Declared first, dropped last: the processes in it end before it goes.
    let namespace = Namespace::create();
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &["alpha", "beta"], "1h", "1h");
    let _issuer = IssuerProcess::start(dir.path());
    let identity = format!(
        "trust_domain = \"example.org\"\n[identity]\nworkload_api = \"unix://{}\"\n\
         delegated_identity_api = \"unix://{}\"\nmin_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
         [timeouts]\nconnect = \"{}s\"\nrequest = \"{}s\"\n",
        dir.path().join("workload.sock").display(),
        dir.path().join("admin.sock").display(),
        CONNECT.as_secs(),
        REQUEST.as_secs(),
    );

    // node2, in the namespace: beta's demo agent on its loopback, the inbound listener and the
    // admin endpoints on the link.
    let beta = Process::spawn(namespace.command(&binary("deputy")).args([
        "demo-agent",
        "--name",
        "beta",
        "--listen",
        "127.0.0.1:18080",
    ]));
    beta.output
        .wait_for("listening on", Duration::from_secs(20));
    let node2_config = dir.path().join("node2.toml");
    std::fs::write(
        &node2_config,
        format!(
            "{identity}[admin]\nlisten = \"{ip}:18081\"\n[state]\ndir = \"{}\"\n\
             [inbound]\nlisten = \"{ip}:18443\"\nallow_peers = [\"spiffe://example.org/agent/*\"]\n\
             [[originate]]\nspiffe_id = \"spiffe://example.org/agent/alpha\"\nprincipals = [\"user:*\"]\n\
             [[agent]]\nname = \"beta\"\nspiffe_id = \"spiffe://example.org/agent/beta\"\n\
             upstream = \"http://127.0.0.1:18080\"\n",
            dir.path().join("state2").display(),
            ip = namespace.ip,
        ),
    )
    .expect("node2 config");
    let node2 = Node::of(Process::spawn(
        namespace
            .command(&binary("deputyd"))
            .arg("--config")
            .arg(&node2_config),
    ));
    node2.wait_ready();

    // node1, on the test's side.
    let node1_config = dir.path().join("node1.toml");
    std::fs::write(
        &node1_config,
        format!(
            "{identity}[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n\
             [[agent]]\nname = \"alpha\"\nspiffe_id = \"spiffe://example.org/agent/alpha\"\n\
             outbound = \"127.0.0.1:0\"\nuids = [{}]\noriginate = [\"user:*\"]\n\
             [[service]]\nname = \"beta\"\nspiffe_id = \"spiffe://example.org/agent/beta\"\n\
             address = \"{}:18443\"\n",
            dir.path().join("state1").display(),
            my_uid(),
            namespace.ip,
        ),
    )
    .expect("node1 config");
    let mut node1 = Node::start(&node1_config);
    node1.wait_ready();
    let alpha = node1.outbound_of("alpha");

    // Served, over a pooled connection to node2.
    let (status, kind, _) = call_beta(&alpha).await;
    assert_eq!(status, http::StatusCode::OK, "{kind}");

    namespace.partition();
    // The pooled connection goes silent: each call ends at the request timeout, with a problem
    // (and a new connection would end at the connect timeout). The pool drops the silent
    // connection when its keepalive ping goes unanswered ([limits] keepalive_interval and
    // keepalive_timeout, 30 s and 10 s), later than this test looks.
    for _ in 0..2 {
        let (status, kind, took) = call_beta(&alpha).await;
        eprintln!("partitioned: {status} {kind} after {took:?}");
        assert_eq!(
            (status, kind.as_str()),
            (
                http::StatusCode::GATEWAY_TIMEOUT,
                "urn:deputy:problem:timeout"
            )
        );
        assert!(
            took >= REQUEST - Duration::from_millis(100)
                && took <= REQUEST + Duration::from_secs(3),
            "the problem came after {took:?}, the request timeout is {REQUEST:?}"
        );
    }

    // Healed: served again, by the same processes. (TCP's retransmissions of the last 8 s
    // back off to a second or two, so the pooled connection carries calls again soon.)
    namespace.heal();
    let healed = Instant::now();
    loop {
        let (status, kind, _) = call_beta(&alpha).await;
        if status == http::StatusCode::OK {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "still {status} {kind} 30 s after the heal"
        );
    }
    assert!(node1.process.is_running());
    drop(node2);
    drop(beta);
}
