//! The issuer's CA survives restarts; bad entries files are refused and the previous entries
//! keep serving.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use deputy_issuer::testing::TestIssuer;
use deputy_issuer::{IssuerError, RunningIssuer};
use spiffe::WorkloadApiClient;

#[tokio::test]
async fn the_ca_persists_with_private_files_and_survives_a_restart() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let before = issuer.running.issuer().authority().bundle_der().to_vec();
    for key in ["ca.key", "jwt.key"] {
        let mode = std::fs::metadata(issuer.dir.path().join("ca").join(key))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} is private");
    }
    let TestIssuer { running, dir } = issuer;
    running.shutdown().await;
    let restarted = RunningIssuer::start(TestIssuer::config_in(dir.path()))
        .await
        .expect("restart");
    assert_eq!(
        restarted.issuer().authority().bundle_der(),
        before.as_slice()
    );
    restarted.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_of_another_trust_domain_is_refused() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let TestIssuer { running, dir } = issuer;
    running.shutdown().await;
    let mut config = TestIssuer::config_in(dir.path());
    config.trust_domain = spiffe::TrustDomain::new("other.org").expect("td");
    std::fs::write(&config.entries, "").expect("write");
    let err = RunningIssuer::start(config)
        .await
        .expect_err("wrong trust domain");
    assert!(
        err.to_string()
            .contains("is for trust domain example.org, not other.org"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_reload_keeps_the_previous_entries_serving() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    std::fs::write(
        issuer.entries_path(),
        "[[entry]]\nspiffe_id = \"spiffe://example.org/a/../b\"\nselectors = [\"unix:uid:1\"]\n",
    )
    .expect("write");
    let err = issuer.running.reload().expect_err("bad file");
    assert!(err.to_string().contains("line 2"), "{err}");
    let client = WorkloadApiClient::connect_to(issuer.workload_endpoint())
        .await
        .expect("connect");
    let svid = client.fetch_x509_svid().await.expect("still served");
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload/me"
    );
}

#[tokio::test]
async fn a_live_socket_is_never_taken_over() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let second = RunningIssuer::start(TestIssuer::config_in(issuer.dir.path())).await;
    assert!(
        matches!(&second, Err(IssuerError::Socket { reason, .. }) if reason.contains("another process is serving")),
        "{second:?}"
    );
}
