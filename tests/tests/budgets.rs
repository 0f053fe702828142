//! Budgets cannot be reset: the calls an agent makes under a received link are counted by the
//! link, durably, until it expires. Resending the link, flooding the node with new chains until
//! its contexts are evicted, and restarting deputyd all leave a spent budget spent; a call that
//! never left the node spends nothing.

use std::path::{Path, PathBuf};

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::{Mesh, Node};
use deputy_tests::tls_client::{
    ClientCert, call_with_headers, copy_cert, first_link, real_ca, signed, svid_params,
};
use http::StatusCode;

const ALPHA: &str = "spiffe://example.org/agent/alpha";
const BETA: &str = "spiffe://example.org/agent/beta";

/// node2's configuration as a node of its own: room for two contexts and three budgeted links,
/// and a service that is never reachable.
fn small_node_config(mesh: &Mesh) -> PathBuf {
    // Port 1 on loopback: nothing listens, so the connect is refused before anything is sent.
    mesh.node2_variant(
        "budgets",
        |_| false,
        "[[service]]\nname = \"nowhere\"\nspiffe_id = \"spiffe://example.org/agent/carol\"\n\
         address = \"127.0.0.1:1\"\n\
         [delegation]\nmax_contexts = 2\nmax_budgeted_links = 3\n",
    )
}

/// Delivers `link` to beta on `node` as alpha would (raw TLS with alpha's SVID); returns the
/// status and, when served, the facts beta received.
async fn deliver(node: &Node, alpha: &ClientCert, link: &str) -> (u16, serde_json::Value) {
    let answer = call_with_headers(
        node.inbound.as_deref().expect("inbound"),
        "beta",
        Some(copy_cert(alpha)),
        &[("Deputy-Delegation", link)],
    )
    .await
    .expect("answered");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer}"));
    let body = answer
        .find('{')
        .zip(answer.rfind('}'))
        .map(|(a, b)| serde_json::from_str(&answer[a..=b]).expect("json"))
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// beta, through its outbound listener on `node`, calls `service` under the context `handle`.
async fn call_under(node: &Node, handle: &str, service: &str) -> (StatusCode, serde_json::Value) {
    let mut request = client::get(service, "/", Protocol::Http1);
    request
        .headers_mut()
        .insert("deputy-context", handle.parse().expect("value"));
    let response = client::send(&node.outbound_of("beta"), Protocol::Http1, request)
        .await
        .expect("call");
    (response.status(), client::json(response).await)
}

fn handle_of(facts: &serde_json::Value) -> String {
    facts["deputy_headers"]["deputy-context"]
        .as_str()
        .unwrap_or_else(|| panic!("a context handle: {facts}"))
        .to_owned()
}

/// Asserts that beta, holding the context of `link`, has nothing left.
async fn assert_spent(node: &Node, alpha: &ClientCert, link: &str, when: &str) {
    let (status, facts) = deliver(node, alpha, link).await;
    assert_eq!(status, 200, "{when}: {facts}");
    assert_eq!(
        facts["deputy_headers"]["deputy-budget"], "0",
        "{when}: {facts}"
    );
    let (status, body) = call_under(node, &handle_of(&facts), "carol").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{when}: {body}");
    assert_eq!(
        body["type"], "urn:deputy:problem:budget-exhausted",
        "{body}"
    );
}

fn start(config: &Path) -> Node {
    let node = Node::start(config);
    node.wait_ready();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_stays_spent() {
    let mesh = Mesh::start("1h");
    let config = small_node_config(&mesh);
    let node = start(&config);
    let alpha = signed(&svid_params(&[ALPHA]), &real_ca(&mesh));
    let link = first_link(&alpha, BETA, "user:alice@example.org", Some(2));

    let (status, facts) = deliver(&node, &alpha, &link).await;
    assert_eq!(status, 200, "{facts}");
    assert_eq!(facts["deputy_headers"]["deputy-budget"], "2", "{facts}");
    let handle = handle_of(&facts);

    // A call that cannot leave the node spends nothing.
    let (status, body) = call_under(&node, &handle, "nowhere").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        body["type"], "urn:deputy:problem:upstream-unavailable",
        "{body}"
    );

    // Two calls, then the budget is spent.
    for _ in 0..2 {
        let (status, body) = call_under(&node, &handle, "carol").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["agent"], "carol", "{body}");
    }
    let (status, body) = call_under(&node, &handle, "carol").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // The same link resent: the same count.
    assert_spent(&node, &alpha, &link, "resent").await;

    // A flood of new budgeted chains: two fit beside the spent link, the next is refused, and
    // the contexts they took (room for two) pushed the first one out.
    for n in 0..2 {
        let flood = first_link(&alpha, BETA, &format!("user:flood{n}@example.org"), Some(1));
        let (status, facts) = deliver(&node, &alpha, &flood).await;
        assert_eq!(status, 200, "flood {n}: {facts}");
    }
    let past = first_link(&alpha, BETA, "user:past@example.org", Some(1));
    let (status, body) = deliver(&node, &alpha, &past).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:deputy:problem:overloaded", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("max_budgeted_links"),
        "{body}"
    );
    let (status, body) = call_under(&node, &handle, "carol").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the context was evicted: {body}"
    );
    assert_eq!(body["type"], "urn:deputy:problem:context-refused", "{body}");
    assert_spent(&node, &alpha, &link, "after the flood").await;

    // A restart of deputyd, on the same state directory.
    assert!(node.process.stop().success(), "SIGTERM stops deputyd");
    let node = start(&config);
    assert_spent(&node, &alpha, &link, "after a restart").await;
}
