//! The test vectors of docs/delegation.md: fixed chains, fixed time, expected outcome. Other
//! implementations can run the same files.
//!
//! Regenerate (only when the format changes) with
//! `cargo test -p deputy-delegation --test vectors -- --ignored write_test_vectors`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use deputy_delegation::testing::TestDomain;
use deputy_delegation::{Budget, ChainVerifier, LinkClaims, LinkSigner, VerifyOptions, link_hash};
use deputy_identity::TrustAnchors;
use serde::{Deserialize, Serialize};
use spiffe::{TrustDomain, X509Bundle, X509BundleSet};

/// Verification time of every vector: 2027-01-15T08:00:00Z.
const AT: u64 = 1_800_000_000;

#[derive(Serialize, Deserialize)]
struct Vector {
    name: String,
    description: String,
    header: String,
    peer: String,
    local: String,
    at_unix: u64,
    /// `ok`, or the code of the rule that fails.
    expect: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    actors: Vec<String>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/delegation-vectors")
}

#[test]
fn the_published_vectors_verify_as_documented() {
    let bundle_pem = std::fs::read(dir().join("example.org.bundle.pem")).expect("bundle");
    let der: Vec<u8> = x509_parser::pem::Pem::iter_from_buffer(&bundle_pem)
        .filter_map(Result::ok)
        .flat_map(|p| p.contents)
        .collect();
    let mut set = X509BundleSet::new();
    set.add_bundle(
        X509Bundle::parse_from_der(TrustDomain::new("example.org").expect("td"), &der)
            .expect("bundle"),
    );
    let anchors = Arc::new(TrustAnchors::from_bundles(&set));
    let vectors: Vec<Vector> =
        serde_json::from_slice(&std::fs::read(dir().join("vectors.json")).expect("vectors"))
            .expect("json");
    assert!(vectors.len() >= 8);
    for v in vectors {
        let verifier = ChainVerifier::new(VerifyOptions::default());
        let result = verifier.verify(
            &v.header,
            &anchors,
            &v.peer.parse().expect("peer"),
            &v.local.parse().expect("local"),
            UNIX_EPOCH + Duration::from_secs(v.at_unix),
        );
        match (&result, v.expect.as_str()) {
            (Ok(chain), "ok") => assert_eq!(chain.actors(), v.actors, "{}", v.name),
            (Err(e), code) => assert_eq!(e.code(), code, "{}: {e}", v.name),
            (Ok(_), code) => panic!("{}: verified, expected {code}", v.name),
        }
    }
}

fn ca() -> TestDomain {
    TestDomain::valid_between(
        "example.org",
        time::OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("2026"),
        time::OffsetDateTime::from_unix_timestamp(2_082_758_400).expect("2036"),
    )
}

fn agent(ca: &TestDomain, name: &str) -> LinkSigner {
    ca.agent(name).signer()
}

fn link(
    iss: &str,
    aud: &str,
    scope: &[&str],
    budget: Option<u64>,
    exp: i64,
    prev: Option<&str>,
) -> LinkClaims {
    LinkClaims {
        iss: format!("spiffe://example.org/agent/{iss}"),
        aud: format!("spiffe://example.org/agent/{aud}"),
        sub: "user:alice@example.org".into(),
        task: "0195f3a2-0000-7000-8000-000000000001".into(),
        scope: scope.iter().map(|s| (*s).to_owned()).collect(),
        budget: budget.map(|calls| Budget { calls }),
        iat: AT as i64 - 60,
        exp,
        jti: format!("{iss}-{aud}"),
        prev: prev.map(link_hash),
    }
}

#[test]
#[ignore = "writes docs/delegation-vectors; run by hand when the format changes"]
fn write_test_vectors() {
    let ca = ca();
    let (frontdoor, triage, billing) = (
        agent(&ca, "frontdoor"),
        agent(&ca, "triage"),
        agent(&ca, "billing"),
    );
    let at = AT as i64;
    let l1 = frontdoor
        .sign(&link(
            "frontdoor",
            "triage",
            &["tickets:*", "invoices:read"],
            Some(10),
            at + 600,
            None,
        ))
        .expect("l1");
    let l2 = triage
        .sign(&link(
            "triage",
            "billing",
            &["invoices:read"],
            Some(3),
            at + 300,
            Some(&l1),
        ))
        .expect("l2");
    let l3 = billing
        .sign(&link(
            "billing",
            "ledger",
            &["invoices:read"],
            Some(1),
            at + 120,
            Some(&l2),
        ))
        .expect("l3");
    let widened = billing
        .sign(&link(
            "billing",
            "ledger",
            &["invoices:write"],
            Some(1),
            at + 120,
            Some(&l2),
        ))
        .expect("w");
    let later = billing
        .sign(&link(
            "billing",
            "ledger",
            &["invoices:read"],
            Some(1),
            at + 900,
            Some(&l2),
        ))
        .expect("e");
    let richer = billing
        .sign(&link(
            "billing",
            "ledger",
            &["invoices:read"],
            Some(5),
            at + 120,
            Some(&l2),
        ))
        .expect("b");
    let id = |n: &str| format!("spiffe://example.org/agent/{n}");
    let v = |name: &str,
             description: &str,
             header: String,
             peer: &str,
             local: &str,
             at_unix: u64,
             expect: &str| Vector {
        name: name.into(),
        description: description.into(),
        header,
        peer: id(peer),
        local: id(local),
        at_unix,
        expect: expect.into(),
        actors: if expect == "ok" {
            ["frontdoor", "triage", "billing", "ledger"]
                .iter()
                .map(|n| id(n))
                .collect()
        } else {
            Vec::new()
        },
    };
    let vectors = vec![
        v(
            "valid-3-links",
            "frontdoor -> triage -> billing -> ledger, received by ledger from billing",
            format!("{l1}, {l2}, {l3}"),
            "billing",
            "ledger",
            AT,
            "ok",
        ),
        v(
            "peer-mismatch",
            "the same chain presented by triage",
            format!("{l1}, {l2}, {l3}"),
            "triage",
            "ledger",
            AT,
            "peer_mismatch",
        ),
        v(
            "not-for-this-agent",
            "the same chain presented to triage",
            format!("{l1}, {l2}, {l3}"),
            "billing",
            "triage",
            AT,
            "not_for_this_agent",
        ),
        v(
            "swapped",
            "links 2 and 3 swapped",
            format!("{l1}, {l3}, {l2}"),
            "triage",
            "billing",
            AT,
            "broken_prev",
        ),
        v(
            "middle-removed",
            "link 2 removed",
            format!("{l1}, {l3}"),
            "billing",
            "ledger",
            AT,
            "broken_prev",
        ),
        v(
            "expired",
            "verified 10 minutes after the last link expired",
            format!("{l1}, {l2}, {l3}"),
            "billing",
            "ledger",
            AT + 720,
            "expired",
        ),
        v(
            "scope-escalation",
            "the last link asks for invoices:write",
            format!("{l1}, {l2}, {widened}"),
            "billing",
            "ledger",
            AT,
            "scope_escalation",
        ),
        v(
            "expiry-widened",
            "the last link outlives its parent",
            format!("{l1}, {l2}, {later}"),
            "billing",
            "ledger",
            AT,
            "expiry_widened",
        ),
        v(
            "budget-widened",
            "the last link grants 5 calls out of 3",
            format!("{l1}, {l2}, {richer}"),
            "billing",
            "ledger",
            AT,
            "budget_widened",
        ),
    ];
    std::fs::create_dir_all(dir()).expect("dir");
    std::fs::write(
        dir().join("vectors.json"),
        serde_json::to_string_pretty(&vectors).expect("json"),
    )
    .expect("write");
    std::fs::write(dir().join("example.org.bundle.pem"), pem(&ca.ca_der)).expect("write");
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}
