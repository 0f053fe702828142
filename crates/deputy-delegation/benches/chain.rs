//! Verifying 1-, 3- and 8-link chains, cold (a fresh verifier: every signature and certificate
//! checked) and cached (signatures and paths from the cache, times re-checked); extending a
//! chain by one link.
//!
//! Run: `cargo bench -p deputy-delegation --bench chain`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use deputy_delegation::testing::TestDomain;
use deputy_delegation::{ChainVerifier, Grant, LinkSigner, VerifyOptions, extend, originate};
use deputy_identity::TrustAnchors;
use spiffe::{SpiffeId, X509BundleSet};

struct Pki {
    anchors: Arc<TrustAnchors>,
    agents: Vec<(SpiffeId, LinkSigner)>,
}

fn pki(count: usize) -> Pki {
    let domain = TestDomain::new("example.org");
    let mut set = X509BundleSet::new();
    set.add_bundle(domain.bundle());
    let agents = (0..count)
        .map(|i| {
            let agent = domain.agent(&format!("a{i}"));
            let signer = agent.signer();
            (agent.id, signer)
        })
        .collect();
    Pki {
        anchors: Arc::new(TrustAnchors::from_bundles(&set)),
        agents,
    }
}

fn grant(to: &SpiffeId) -> Grant {
    Grant {
        delegate: to.clone(),
        scopes: Some(vec!["tickets:read".into()]),
        budget_calls: Some(100),
        ttl: Duration::from_secs(600),
    }
}

/// A chain of `links` links from agent 0 to agent `links`.
fn chain(pki: &Pki, links: usize) -> String {
    let now = SystemTime::now();
    let verifier = ChainVerifier::new(VerifyOptions::default());
    let mut header = originate(
        &pki.agents[0].1,
        "user:alice",
        "t",
        &grant(&pki.agents[1].0),
        now,
    )
    .expect("originate");
    for i in 1..links {
        let verified = verifier
            .verify(
                &header,
                &pki.anchors,
                &pki.agents[i - 1].0,
                &pki.agents[i].0,
                now,
            )
            .expect("verify");
        header = extend(
            &verified,
            &pki.agents[i].1,
            &grant(&pki.agents[i + 1].0),
            None,
            now,
        )
        .expect("extend");
    }
    header
}

fn verification(c: &mut Criterion) {
    let pki = pki(9);
    let mut group = c.benchmark_group("verify_chain");
    for links in [1usize, 3, 8] {
        let header = chain(&pki, links);
        let (peer, local) = (&pki.agents[links - 1].0, &pki.agents[links].0);
        let verifier = ChainVerifier::new(VerifyOptions::default());
        group.bench_with_input(BenchmarkId::new("cold", links), &header, |b, header| {
            b.iter(|| {
                verifier.clear_cache();
                black_box(verifier.verify(header, &pki.anchors, peer, local, SystemTime::now()))
            })
        });
        group.bench_with_input(BenchmarkId::new("cached", links), &header, |b, header| {
            b.iter(|| {
                black_box(verifier.verify(header, &pki.anchors, peer, local, SystemTime::now()))
            })
        });
    }
    group.finish();

    let header = chain(&pki, 3);
    let verifier = ChainVerifier::new(VerifyOptions::default());
    let verified = verifier
        .verify(
            &header,
            &pki.anchors,
            &pki.agents[2].0,
            &pki.agents[3].0,
            SystemTime::now(),
        )
        .expect("verify");
    c.bench_function("extend_chain/3_to_4", |b| {
        b.iter(|| {
            black_box(extend(
                &verified,
                &pki.agents[3].1,
                &grant(&pki.agents[4].0),
                None,
                SystemTime::now(),
            ))
        })
    });
}

/// The unit of the cold-verification goal: one ECDSA P-256 verification.
fn one_ecdsa_verification(c: &mut Criterion) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let message = b"a link's signing input";
    let sig = key.sign(&rng, message).expect("sign");
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        key.public_key().as_ref().to_vec(),
    );
    c.bench_function("ecdsa_p256_verify", |b| {
        b.iter(|| black_box(public.verify(message, sig.as_ref())))
    });
}

criterion_group!(benches, verification, one_ecdsa_verification);
criterion_main!(benches);
