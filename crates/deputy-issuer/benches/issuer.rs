//! Issuer benchmarks: how fast the CA mints X.509-SVIDs, and what a FetchX509SVID costs a
//! workload over the unix socket with the real `spiffe` client.
//!
//! Run: `cargo bench -p deputy-issuer --bench issuer`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deputy_issuer::Authority;
use deputy_issuer::testing::{TestIssuer, my_uid};
use spiffe::{SpiffeId, TrustDomain, WorkloadApiClient};
use spire_api::selectors::Selector;
use spire_api::{DelegateAttestationRequest, DelegatedIdentityClient};

fn entries() -> String {
    let uid = my_uid();
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/bench/me\"\nselectors = [\"unix:uid:{uid}\"]\n\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/agent/triage\"\nselectors = [\"systemd:id:triage.service\"]\n\n\
         [[delegate]]\nselectors = [\"unix:uid:{uid}\"]\n"
    )
}

fn minting(c: &mut Criterion) {
    let td = TrustDomain::new("example.org").expect("td");
    let authority = Authority::ephemeral(&td).expect("CA");
    let id: SpiffeId = "spiffe://example.org/agent/triage".parse().expect("id");
    let mut group = c.benchmark_group("mint");
    group.throughput(Throughput::Elements(1));
    group.bench_function("x509_svid", |b| {
        b.iter(|| black_box(authority.mint_x509_svid(&id, Duration::from_secs(3600))))
    });
    let audience = ["billing".to_owned()];
    group.bench_function("jwt_svid", |b| {
        b.iter(|| black_box(authority.mint_jwt_svid(&id, &audience, Duration::from_secs(300))))
    });
    group.finish();
}

fn fetching(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let issuer = runtime.block_on(TestIssuer::start(&entries()));
    let endpoint = issuer.workload_endpoint();
    let client = runtime
        .block_on(WorkloadApiClient::connect_to(&endpoint))
        .expect("client");
    let delegated = runtime
        .block_on(DelegatedIdentityClient::connect_to(issuer.admin_endpoint()))
        .expect("delegated client");

    let mut group = c.benchmark_group("workload_api");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fetch_x509_svid/open_connection", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(client.fetch_x509_svid().await.expect("svid")) })
    });
    group.bench_function("fetch_x509_svid/new_connection", |b| {
        b.to_async(&runtime).iter(|| async {
            let client = WorkloadApiClient::connect_to(&endpoint)
                .await
                .expect("client");
            black_box(client.fetch_x509_svid().await.expect("svid"))
        })
    });
    group.bench_function("fetch_jwt_svid", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(client.fetch_jwt_svid(["billing"], None).await.expect("jwt"))
        })
    });
    group.bench_function("delegated_fetch_x509_svid", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = DelegateAttestationRequest::for_selectors(vec![Selector::Generic((
                "systemd".into(),
                "id:triage.service".into(),
            ))])
            .expect("selectors");
            black_box(delegated.fetch_x509_svid(request).await.expect("svid"))
        })
    });
    group.finish();
    runtime.block_on(issuer.running.shutdown());
}

criterion_group!(benches, minting, fetching);
criterion_main!(benches);
