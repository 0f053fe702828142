//! The inbound mTLS port refuses every client certificate that is not a valid SVID of a
//! trusted trust domain, and an SNI that names no local agent; each refusal is counted with its
//! reason.

use std::time::Duration;

use deputy_tests::mesh::Mesh;
use deputy_tests::tls_client::{ClientCert, call, real_ca, signed, svid_params};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const ALPHA: &str = "spiffe://example.org/agent/alpha";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_svids_of_trusted_domains_get_through() {
    let mesh = Mesh::start("1h");
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let ca = real_ca(&mesh);

    // Control: a valid SVID signed by the trust domain's CA is accepted.
    let answer = call(&inbound, "beta", Some(signed(&svid_params(&[ALPHA]), &ca)))
        .await
        .expect("a valid SVID is accepted");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(ALPHA), "{answer}");
    assert!(
        !answer.contains("mallory") && !answer.contains("forged"),
        "forged headers never reach the agent: {answer}"
    );

    // A chain from a trust domain node2 does not trust is refused before the agent sees it.
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/delegation-vectors/vectors.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(vectors).expect("vectors")).expect("json");
    let foreign_chain = cases[0]["header"].as_str().expect("header").to_owned();
    let answer = deputy_tests::tls_client::call_with_headers(
        &inbound,
        "beta",
        Some(signed(&svid_params(&[ALPHA]), &ca)),
        &[("Deputy-Delegation", foreign_chain.as_str())],
    )
    .await
    .expect("answered");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("urn:deputy:problem:chain-rejected"),
        "{answer}"
    );

    let other_ca = {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        Issuer::new(params, key)
    };
    let mut expired = svid_params(&[ALPHA]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut ca_leaf = svid_params(&[ALPHA]);
    ca_leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_leaf.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];

    let cases: Vec<(&str, Option<ClientCert>, &str)> = vec![
        ("no client certificate", None, "no_client_certificate"),
        (
            "another CA",
            Some(signed(&svid_params(&[ALPHA]), &other_ca)),
            "untrusted_chain",
        ),
        (
            "an expired SVID",
            Some(signed(&expired, &ca)),
            "untrusted_chain",
        ),
        (
            "no URI SAN",
            Some(signed(&svid_params(&[]), &ca)),
            "not_an_svid",
        ),
        (
            "two URI SANs",
            Some(signed(
                &svid_params(&[ALPHA, "spiffe://example.org/agent/x"]),
                &ca,
            )),
            "not_an_svid",
        ),
        (
            "a CA certificate",
            Some(signed(&ca_leaf, &ca)),
            "not_an_svid",
        ),
        (
            "a foreign trust domain",
            Some(signed(&svid_params(&["spiffe://partner.org/agent/x"]), &ca)),
            "unknown_trust_domain",
        ),
    ];
    for (what, cert, reason) in cases {
        let result = call(&inbound, "beta", cert).await;
        assert!(result.is_err(), "{what} must be refused, got {result:?}");
        let metrics = mesh.node2.metrics();
        assert!(
            metrics.contains(&format!(
                "deputy_tls_handshake_failures_total{{direction=\"inbound\",reason=\"{reason}\"}}"
            )),
            "{what}: no {reason} failure counted\n{metrics}"
        );
    }
    // The log says the SVID expired, and why a certificate is not an SVID (the lines may reach
    // this test's reader after the metrics counted them).
    let log = &mesh.node2.process.output;
    log.wait_for("CertExpired", Duration::from_secs(10));
    log.wait_for("2 URI SANs", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_for_an_agent_not_on_the_node_gets_unrecognized_name() {
    let mesh = Mesh::start("1h");
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let cert = signed(&svid_params(&[ALPHA]), &real_ca(&mesh));
    let error = call(&inbound, "alpha", Some(cert))
        .await
        .expect_err("alpha is on node1");
    assert!(error.contains("UnrecognisedName"), "{error}");
    assert!(mesh.node2.metrics().contains("reason=\"unknown_sni\""));
}
