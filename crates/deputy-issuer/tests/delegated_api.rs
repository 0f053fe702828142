//! The `spire-api` crate's Delegated Identity client against `deputy issuer`, unchanged.

mod common;

use deputy_issuer::proto::spire::api::agent::delegatedidentity::v1::SubscribeToX509sviDsRequest;
use deputy_issuer::proto::spire::api::agent::delegatedidentity::v1::delegated_identity_client::DelegatedIdentityClient as RawClient;
use deputy_issuer::proto::spire::api::types::Selector as ProtoSelector;
use deputy_issuer::testing::{TestIssuer, my_uid};
use futures::StreamExt as _;
use spiffe::{JwtSvid, TrustDomain};
use spire_api::selectors::Selector;
use spire_api::{DelegateAttestationRequest, DelegatedIdentityClient};

fn triage() -> DelegateAttestationRequest {
    DelegateAttestationRequest::for_selectors(vec![Selector::Generic((
        "systemd".into(),
        "id:triage.service".into(),
    ))])
    .expect("selectors")
}

#[tokio::test]
async fn an_authorized_delegate_receives_svids_bundles_and_jwts_by_selectors() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let client = DelegatedIdentityClient::connect_to(issuer.admin_endpoint())
        .await
        .expect("connect");

    let svid = client.fetch_x509_svid(triage()).await.expect("X.509-SVID");
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/agent/triage"
    );

    let bundles = client.fetch_x509_bundles().await.expect("bundles");
    let td = TrustDomain::new("example.org").expect("td");
    assert_eq!(
        bundles.get(&td).expect("own bundle").authorities()[0].as_bytes(),
        issuer.running.issuer().authority().bundle_der()
    );

    let jwts = client
        .fetch_jwt_svids(&["billing"], triage())
        .await
        .expect("JWT-SVIDs");
    let jwt_bundles = client.fetch_jwt_bundles().await.expect("JWT bundles");
    let valid = JwtSvid::parse_and_validate(jwts[0].token(), &jwt_bundles, &["billing"])
        .expect("valid JWT-SVID");
    assert_eq!(
        valid.spiffe_id().to_string(),
        "spiffe://example.org/agent/triage"
    );

    // The stream stays open and is the one deputyd follows.
    let mut stream = client.stream_x509_svids(triage()).await.expect("stream");
    let first = stream.next().await.expect("item").expect("svid");
    assert_eq!(first.spiffe_id(), svid.spiffe_id());
}

#[tokio::test]
async fn a_delegate_may_subscribe_by_pid_and_the_issuer_attests_it() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let client = DelegatedIdentityClient::connect_to(issuer.admin_endpoint())
        .await
        .expect("connect");
    let request = DelegateAttestationRequest::for_pid(std::process::id()).expect("pid");
    let svid = client.fetch_x509_svid(request).await.expect("by pid");
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload/me"
    );
}

#[tokio::test]
async fn selectors_and_pid_together_are_refused() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let mut raw = RawClient::new(common::raw_channel(issuer.dir.path().join("admin.sock")).await);
    let status = raw
        .subscribe_to_x509svi_ds(SubscribeToX509sviDsRequest {
            selectors: vec![ProtoSelector {
                r#type: "unix".into(),
                value: format!("uid:{}", my_uid()),
            }],
            pid: std::process::id() as i32,
        })
        .await
        .expect_err("both");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not both"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_caller_that_is_not_a_delegate_is_denied() {
    let other_uid = my_uid() + 4242;
    let issuer = TestIssuer::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/agent/triage\"\nselectors = [\"systemd:id:triage.service\"]\n\
         [[delegate]]\nselectors = [\"unix:uid:{other_uid}\"]\n"
    ))
    .await;
    let client = DelegatedIdentityClient::connect_to(issuer.admin_endpoint())
        .await
        .expect("connect");
    let err = client
        .fetch_x509_svid(triage())
        .await
        .expect_err("not a delegate");
    let message = err.to_string();
    assert!(message.contains("not an authorized delegate"), "{message}");
    assert!(
        client.fetch_x509_bundles().await.is_err(),
        "bundles are refused too"
    );
}

#[tokio::test]
async fn selectors_no_entry_matches_are_denied() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let client = DelegatedIdentityClient::connect_to(issuer.admin_endpoint())
        .await
        .expect("connect");
    let request = DelegateAttestationRequest::for_selectors(vec![Selector::Generic((
        "systemd".into(),
        "id:unknown.service".into(),
    ))])
    .expect("selectors");
    let err = client.fetch_x509_svid(request).await.expect_err("no entry");
    assert!(
        err.to_string().contains("no registration entry matches"),
        "{err}"
    );
}
