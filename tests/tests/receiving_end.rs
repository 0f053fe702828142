//! The receiving deputyd enforces what the sending side was supposed to: a client that holds a
//! real agent SVID and speaks TLS itself, signing its own first link, gets no further than the
//! rules of the node it calls; and a node without `[policy]` serves no peer it was not told to.

use std::time::Duration;

use deputy_tests::mesh::{Mesh, Node};
use deputy_tests::tls_client::{ClientCert, call_with_first_link, real_ca, signed, svid_params};

const ALPHA: &str = "spiffe://example.org/agent/alpha";
const BETA: &str = "spiffe://example.org/agent/beta";
const GAMMA: &str = "spiffe://example.org/agent/gamma";

/// Calls beta on `inbound` over raw TLS with `cert` and a first link `cert` signed for
/// `principal`; returns the whole HTTP answer.
async fn call_signed(inbound: &str, cert: &ClientCert, principal: &str) -> String {
    call_with_first_link(inbound, "beta", cert, BETA, principal, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_policy_a_hand_signed_first_link_is_judged_where_it_arrives() {
    // node2 has no [policy]: it serves example.org's agents (allow_peers) and knows that alpha
    // may start tasks for user:* ([[originate]]), nothing more.
    let mesh = Mesh::start("1h");
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let ca = real_ca(&mesh);
    let alpha = signed(&svid_params(&[ALPHA]), &ca);

    // Control: a link alpha may sign is served, and beta hears the principal.
    let answer = call_signed(&inbound, &alpha, "user:alice@example.org").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("user:alice@example.org"), "{answer}");

    // alpha's own key, a principal it may not serve: refused as a chain, saying why.
    let answer = call_signed(&inbound, &alpha, "service:batch").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("urn:deputy:problem:origination-refused"),
        "{answer}"
    );
    assert!(
        answer.contains("which its originate rules on this node do not allow"),
        "{answer}"
    );

    // gamma has a real SVID, and no rule lets it start tasks at all.
    let gamma = signed(&svid_params(&[GAMMA]), &ca);
    let answer = call_signed(&inbound, &gamma, "user:alice@example.org").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("urn:deputy:problem:origination-refused"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("knows no originate rules for {GAMMA}")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_policy_and_without_an_allow_list_no_peer_is_served() {
    let mesh = Mesh::start("1h");
    // node2's configuration with its allow-list taken out, as a new node (its own listeners).
    let path = mesh.node2_variant("node2-closed", |l| l.starts_with("allow_peers"), "");
    let closed = std::fs::read_to_string(&path).expect("read");
    assert!(!closed.contains("allow_peers"), "{closed}");
    let node2 = std::fs::read_to_string(mesh.dir.path().join("node2.toml")).expect("read");
    assert!(
        node2.contains("allow_peers"),
        "the allow-list was in node2's file"
    );
    let node = Node::start(&path);
    node.process.output.wait_for(
        "every inbound call will be refused",
        Duration::from_secs(20),
    );
    node.wait_ready();

    let ca = real_ca(&mesh);
    let alpha = signed(&svid_params(&[ALPHA]), &ca);
    let answer = call_signed(
        node.inbound.as_deref().expect("inbound"),
        &alpha,
        "user:alice@example.org",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("urn:deputy:problem:peer-not-allowed"),
        "{answer}"
    );
    assert!(answer.contains("configure [policy]"), "{answer}");
    assert!(answer.contains("allow_peers"), "{answer}");

    // The same call to the node under its allow-list is served.
    let answer = call_signed(
        mesh.node2.inbound.as_deref().expect("inbound"),
        &alpha,
        "user:alice@example.org",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_hand_the_caller_deputy_headers() {
    // beta answers /forge with a context handle, a principal and a peer id of its own making,
    // as a compromised agent would to mislead its caller; alpha hears only its own deputyd.
    use deputy_tests::client::{self, Protocol};
    let mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");
    let response = client::send(
        &alpha,
        Protocol::Http1,
        client::get("beta", "/forge", Protocol::Http1),
    )
    .await
    .expect("call");
    assert_eq!(response.status(), http::StatusCode::OK);
    let headers = response.headers().clone();
    for forged in ["deputy-context", "deputy-principal", "deputy-peer-id"] {
        assert!(
            headers.get(forged).is_none(),
            "{forged} reached the caller: {headers:?}"
        );
    }
    // What deputyd itself vouches for still arrives.
    assert!(headers.contains_key("deputy-request-id"), "{headers:?}");
    let body = client::json(response).await;
    assert_eq!(body["agent"], "beta", "{body}");
}
