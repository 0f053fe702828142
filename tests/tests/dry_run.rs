//! Dry runs across real processes: `Deputy-Dry-Run: true` on a call user -> alpha -> beta ->
//! carol runs both ends (chain, budget, the receiving deputyd) and delivers nothing: the answer
//! says it would be delivered, carol is not called, and beta's two-call budget is still whole
//! for the real calls (a dry run the chain refuses gives nothing back); once spent, a dry run
//! says the real call would be refused.

use deputy_tests::client::{self, Protocol};
use deputy_tests::mesh::Mesh;
use http::StatusCode;

async fn call(
    outbound: &str,
    service: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut request = client::get(service, "/tickets", Protocol::Http1);
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    let response = client::send(outbound, Protocol::Http1, request)
        .await
        .expect("call");
    (response.status(), client::json(response).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_runs_both_ends_and_delivers_and_spends_nothing() {
    let mesh = Mesh::start("1h");
    let alpha = mesh.node1.outbound_of("alpha");
    let beta = mesh.node2.outbound_of("beta");

    // alice's task reaches beta with a budget of two calls.
    let (status, facts) = call(
        &alpha,
        "beta",
        &[
            ("deputy-principal", "user:alice@example.org"),
            ("deputy-scope", "tickets:read"),
            ("deputy-task", "task-dry"),
            ("deputy-budget", "2"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{facts}");
    let handle = facts["deputy_headers"]["deputy-context"]
        .as_str()
        .unwrap_or_else(|| panic!("beta got no context: {facts}"))
        .to_owned();
    let continued = [("deputy-context", handle.as_str())];
    let dry = [
        ("deputy-context", handle.as_str()),
        ("deputy-dry-run", "true"),
    ];

    // Twice, a dry run of beta's call to carol: both ends pass, nothing is delivered.
    for _ in 0..2 {
        let (status, report) = call(&beta, "carol", &dry).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["dry_run"], true, "{report}");
        assert_eq!(report["delivered"], false, "{report}");
        assert_eq!(report["outcome"], "would be delivered to carol", "{report}");
        assert_eq!(report["inbound"]["agent"], "carol", "{report}");
        assert_eq!(report["inbound"]["delivered"], false, "{report}");
        assert_eq!(report["inbound"]["chain"]["task"], "task-dry", "{report}");
        assert_eq!(report["inbound"]["chain"]["links"], 2, "{report}");
        // carol's answer (its whoami) is nowhere: it was not called.
        assert!(report.get("caller").is_none(), "{report}");
    }

    // The budget is whole: a real call goes through.
    let (status, carol) = call(&beta, "carol", &continued).await;
    assert_eq!(status, StatusCode::OK, "{carol}");
    assert_eq!(carol["agent"], "carol", "{carol}");

    // A dry run the chain refuses (a wider scope than beta holds) gives nothing back: the
    // budget has exactly one call left, not two.
    let wider = [
        ("deputy-context", handle.as_str()),
        ("deputy-dry-run", "true"),
        ("deputy-scope", "tickets:write"),
    ];
    let (status, report) = call(&beta, "carol", &wider).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{report}");
    assert_eq!(
        report["type"], "urn:deputy:problem:scope-escalation",
        "{report}"
    );
    let (status, carol) = call(&beta, "carol", &continued).await;
    assert_eq!(status, StatusCode::OK, "{carol}");
    let (status, spent) = call(&beta, "carol", &continued).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{spent}");

    // Now a dry run says the real call would be refused, as it would.
    let (status, report) = call(&beta, "carol", &dry).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{report}");
    assert_eq!(
        report["type"], "urn:deputy:problem:budget-exhausted",
        "{report}"
    );

    // A value other than true or false is refused.
    let (status, report) = call(&beta, "carol", &[("deputy-dry-run", "yes")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{report}");

    // The audit trails mark dry runs as such: carol's node recorded the two that reached it,
    // beta's node at least those.
    let marked = |node: &str| {
        let trail = std::fs::read_to_string(
            mesh.dir
                .path()
                .join(format!("state-{node}/audit/audit.jsonl")),
        )
        .expect("trail");
        trail
            .lines()
            .filter(|l| l.contains("\"dry_run\":true") && l.contains("\"service\":\"carol\""))
            .count()
    };
    assert_eq!(
        marked("node1"),
        2,
        "{}",
        std::fs::read_to_string(mesh.dir.path().join("state-node1/audit/audit.jsonl"))
            .unwrap_or_default()
    );
    assert!(marked("node2") >= 2);
}
