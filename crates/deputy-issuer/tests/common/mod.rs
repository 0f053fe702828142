//! Shared by the issuer's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use deputy_issuer::testing::my_uid;

/// Entries that register this test process (by uid) and make it a delegate.
pub fn entries_for_me(x509_ttl: &str) -> String {
    let uid = my_uid();
    format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/workload/me"
selectors = ["unix:uid:{uid}"]
x509_ttl = "{x509_ttl}"

[[entry]]
spiffe_id = "spiffe://example.org/agent/triage"
selectors = ["systemd:id:triage.service"]
x509_ttl = "{x509_ttl}"

[[delegate]]
selectors = ["unix:uid:{uid}"]
"#
    )
}

/// A gRPC channel to a unix socket that adds no metadata: what a careless client sends.
pub async fn raw_channel(path: PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .expect("static uri")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect")
}

/// A Workload API request carrying the security header every call needs.
pub fn workload_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("ascii"));
    request
}
