//! The real `spiffe` crate clients against `deputy issuer` over a real unix socket.

mod common;

use std::time::{Duration, SystemTime};

use deputy_issuer::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use deputy_issuer::proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use deputy_issuer::testing::{TestIssuer, my_uid};
use futures::StreamExt as _;
use spiffe::{JwtSource, JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient, X509Source, X509Svid};

fn leaf_not_after(svid: &X509Svid) -> SystemTime {
    let (_, cert) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).expect("leaf");
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            cert.validity()
                .not_after
                .timestamp()
                .try_into()
                .expect("after epoch"),
        )
}

#[tokio::test]
async fn x509_source_receives_a_valid_svid_that_verifies_against_the_bundle() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let source = X509Source::builder()
        .endpoint(issuer.workload_endpoint())
        .build()
        .await
        .expect("X509Source accepts what the issuer serves");
    let svid = source.svid().expect("svid");
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload/me"
    );

    // The leaf chains to the served bundle and satisfies the X.509-SVID profile.
    let bundle = source
        .try_bundle_for_trust_domain(&TrustDomain::new("example.org").expect("td"))
        .expect("bundle for own trust domain");
    let ca = bundle.authorities()[0].as_bytes();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca).expect("ca");
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).expect("leaf");
    leaf.verify_signature(Some(ca_cert.public_key()))
        .expect("leaf is signed by the bundle's CA");
    let report = deputy_identity::inspect::inspect_chain(
        &[svid.leaf().as_bytes().to_vec()],
        time::OffsetDateTime::now_utc(),
    )
    .expect("inspect");
    assert!(report.is_valid(), "{:?}", report.problems);
    let remaining = leaf_not_after(&svid)
        .duration_since(SystemTime::now())
        .expect("not expired");
    assert!(
        remaining > Duration::from_secs(3500),
        "TTL is the entry's 1h: {remaining:?}"
    );
    source.shutdown().await;
}

#[tokio::test]
async fn a_rotated_svid_arrives_on_the_stream_before_the_old_one_expires() {
    let issuer = TestIssuer::start(&common::entries_for_me("4s")).await;
    let client = WorkloadApiClient::connect_to(issuer.workload_endpoint())
        .await
        .expect("connect");
    let mut stream = client.stream_x509_svids().await.expect("stream");
    let first = stream.next().await.expect("first").expect("svid");
    let first_received = std::time::Instant::now();
    let first_expiry = leaf_not_after(&first);
    let second = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("rotation within 20s")
        .expect("item")
        .expect("svid");
    assert!(
        SystemTime::now() < first_expiry,
        "the new SVID must arrive while the old one is still valid"
    );
    // Not before half-life (4s TTL: about 2s; the certificate's whole seconds allow 1s).
    assert!(
        first_received.elapsed() >= Duration::from_secs(1),
        "rotated too early: {:?}",
        first_received.elapsed()
    );
    assert_eq!(first.spiffe_id(), second.spiffe_id());
    assert_ne!(
        first.leaf().as_bytes(),
        second.leaf().as_bytes(),
        "rotation pushes a new certificate"
    );
}

#[tokio::test]
async fn bundle_updates_are_pushed_when_a_federated_bundle_is_added() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let client = WorkloadApiClient::connect_to(issuer.workload_endpoint())
        .await
        .expect("connect");
    let mut bundles = client.stream_x509_bundles().await.expect("stream");
    let initial = bundles.next().await.expect("first").expect("bundle set");
    assert_eq!(initial.len(), 1, "only the own trust domain at first");

    // A partner trust domain's CA, federated through the entries file and a reload.
    let partner = TestIssuer::start(&common::entries_for_me("1h")).await;
    let partner_ca = deputy_issuer::authority::to_pem(
        "CERTIFICATE",
        partner.running.issuer().authority().bundle_der(),
    );
    std::fs::write(issuer.dir.path().join("partner.pem"), partner_ca).expect("write");
    let entries = format!(
        "{}\n[[federation]]\ntrust_domain = \"partner.org\"\nbundle = \"partner.pem\"\n",
        common::entries_for_me("1h")
    );
    std::fs::write(issuer.entries_path(), entries).expect("write");
    issuer.running.reload().expect("reload");

    let updated = tokio::time::timeout(Duration::from_secs(5), bundles.next())
        .await
        .expect("update pushed")
        .expect("item")
        .expect("bundle set");
    let partner_td = TrustDomain::new("partner.org").expect("td");
    let pushed = updated.get(&partner_td).expect("federated bundle pushed");
    assert_eq!(
        pushed.authorities()[0].as_bytes(),
        partner.running.issuer().authority().bundle_der()
    );
    // The X.509 context carries it as a federated bundle too.
    let context = client.fetch_x509_context().await.expect("context");
    assert!(context.bundle_set().get(&partner_td).is_some());
}

#[tokio::test]
async fn jwt_svids_validate_offline_and_through_the_api() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let client = WorkloadApiClient::connect_to(issuer.workload_endpoint())
        .await
        .expect("connect");
    let me: SpiffeId = "spiffe://example.org/workload/me".parse().expect("id");
    let svid = client
        .fetch_jwt_svid(["billing"], Some(&me))
        .await
        .expect("JWT-SVID");
    let bundles = client.fetch_jwt_bundles().await.expect("JWT bundles");

    let offline = JwtSvid::parse_and_validate(svid.token(), &bundles, &["billing"])
        .expect("the spiffe crate accepts the JWT-SVID with the served JWKS");
    assert_eq!(offline.spiffe_id(), &me);
    let online = client
        .validate_jwt_token("billing", svid.token())
        .await
        .expect("ValidateJWTSVID agrees");
    assert_eq!(online.spiffe_id(), &me);

    // Both refuse another audience and a tampered token.
    assert!(JwtSvid::parse_and_validate(svid.token(), &bundles, &["other"]).is_err());
    let err = client
        .validate_jwt_token("other", svid.token())
        .await
        .expect_err("wrong audience");
    assert!(err.to_string().contains("audience"), "{err}");
    let mut tampered = svid.token().to_owned();
    tampered.insert(tampered.rfind('.').expect("jws") + 1, 'A');
    assert!(JwtSvid::parse_and_validate(&tampered, &bundles, &["billing"]).is_err());
    assert!(
        client
            .validate_jwt_token("billing", &tampered)
            .await
            .is_err()
    );

    // JwtSource, the long-lived client, works too.
    let source = JwtSource::builder()
        .endpoint(issuer.workload_endpoint())
        .build()
        .await
        .expect("JwtSource");
    let from_source = source.fetch_jwt_svid(["billing"]).await.expect("svid");
    JwtSvid::parse_and_validate(
        from_source.token(),
        &*source.bundle_set().expect("bundles"),
        &["billing"],
    )
    .expect("valid");
}

#[tokio::test]
async fn calls_without_the_security_header_are_invalid_arguments() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let channel = common::raw_channel(issuer.dir.path().join("workload.sock")).await;
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let status = raw
        .fetch_x509svid(X509svidRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("security header missing"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_caller_without_an_entry_is_denied_with_an_explanation() {
    let other_uid = my_uid() + 4242;
    let issuer = TestIssuer::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/someone/else\"\nselectors = [\"unix:uid:{other_uid}\"]\n"
    ))
    .await;
    let client = WorkloadApiClient::connect_to(issuer.workload_endpoint())
        .await
        .expect("connect");
    // The SPIFFE client recognises SPIRE's wording and reports "no identity issued".
    let err = client.fetch_x509_svid().await.expect_err("no entry");
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    // The full status also says why and what to do.
    let channel = common::raw_channel(issuer.dir.path().join("workload.sock")).await;
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let request = common::workload_request(X509svidRequest::default());
    let status = raw.fetch_x509svid(request).await.expect_err("no entry");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let message = status.message();
    assert!(
        message.contains("no registration entry matches"),
        "{message}"
    );
    assert!(
        message.contains(&format!("unix:uid:{}", my_uid())),
        "{message}"
    );
}

#[tokio::test]
async fn removing_an_entry_ends_the_open_stream() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let client = WorkloadApiClient::connect_to(issuer.workload_endpoint())
        .await
        .expect("connect");
    let mut stream = client.stream_x509_svids().await.expect("stream");
    stream.next().await.expect("first").expect("svid");
    std::fs::write(issuer.entries_path(), "").expect("write");
    issuer.running.reload().expect("reload");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream reacts");
    assert!(
        matches!(end, Some(Err(_)) | None),
        "no more SVIDs after the entry is gone"
    );
}

#[tokio::test]
async fn a_delegated_only_entry_is_never_served_on_the_workload_api() {
    // This process matches triage's entry by uid, but the entry is delegated-only: the agent
    // must not hold its own key. Its delegate still gets the SVID, by selectors.
    let uid = my_uid();
    let issuer = TestIssuer::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/agent/triage\"\n\
         selectors = [\"unix:uid:{uid}\"]\ndelegated_only = true\n\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/agent/billing\"\n\
         selectors = [\"deputy:agent:billing\"]\n\n\
         [[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n"
    ))
    .await;
    let channel = common::raw_channel(issuer.dir.path().join("workload.sock")).await;
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let request = common::workload_request(X509svidRequest::default());
    let status = raw.fetch_x509svid(request).await.expect_err("withheld");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let message = status.message();
    for expected in [
        "spiffe://example.org/agent/triage is delegated-only",
        "Delegated Identity API",
        "outbound listener",
    ] {
        assert!(message.contains(expected), "{message}\nmissing: {expected}");
    }
    // Every other Workload API call is refused the same way, a JWT-SVID asked for by ID too.
    let refusals = [
        raw.fetch_jwtsvid(common::workload_request(JwtsvidRequest {
            audience: vec!["vault".into()],
            spiffe_id: "spiffe://example.org/agent/triage".into(),
        }))
        .await
        .expect_err("no JWT-SVID"),
        raw.fetch_x509_bundles(common::workload_request(X509BundlesRequest {}))
            .await
            .expect_err("no X.509 bundles"),
        raw.fetch_jwt_bundles(common::workload_request(JwtBundlesRequest {}))
            .await
            .expect_err("no JWT bundles"),
    ];
    for status in refusals {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("triage is delegated-only"),
            "{status:?}"
        );
    }

    let delegated = spire_api::DelegatedIdentityClient::connect_to(issuer.admin_endpoint())
        .await
        .expect("connect");
    for (kind, value, id) in [
        (
            "unix",
            format!("uid:{uid}"),
            "spiffe://example.org/agent/triage",
        ),
        (
            "deputy",
            "agent:billing".to_owned(),
            "spiffe://example.org/agent/billing",
        ),
    ] {
        let request = spire_api::DelegateAttestationRequest::for_selectors(vec![
            spire_api::selectors::Selector::Generic((kind.into(), value)),
        ])
        .expect("selectors");
        let svid = delegated
            .fetch_x509_svid(request)
            .await
            .expect("served to the delegate");
        assert_eq!(svid.spiffe_id().to_string(), id);
    }
}
