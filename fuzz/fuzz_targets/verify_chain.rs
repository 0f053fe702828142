//! Fuzzes the delegation-chain parser and verifier with arbitrary header values, trusting the
//! CA of the published test vectors, at the vectors' verification time. Seeds: fuzz/seeds/verify_chain.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use deputy_delegation::{ChainVerifier, VerifyOptions};
use deputy_identity::TrustAnchors;
use libfuzzer_sys::fuzz_target;
use spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet};

struct State {
    verifier: ChainVerifier,
    anchors: Arc<TrustAnchors>,
    peer: SpiffeId,
    local: SpiffeId,
}

static STATE: LazyLock<State> = LazyLock::new(|| {
    let pem = include_bytes!("../../docs/delegation-vectors/example.org.bundle.pem");
    let der: Vec<u8> = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .flat_map(|p| p.contents)
        .collect();
    let mut set = X509BundleSet::new();
    set.add_bundle(
        X509Bundle::parse_from_der(TrustDomain::new("example.org").expect("td"), &der)
            .expect("bundle"),
    );
    State {
        verifier: ChainVerifier::new(VerifyOptions {
            cache_size: 64,
            ..VerifyOptions::default()
        }),
        anchors: Arc::new(TrustAnchors::from_bundles(&set)),
        peer: "spiffe://example.org/agent/billing".parse().expect("id"),
        local: "spiffe://example.org/agent/ledger".parse().expect("id"),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let state = &*STATE;
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(chain) = state
        .verifier
        .verify(header, &state.anchors, &state.peer, &state.local, at)
    {
        // Anything that verifies must satisfy the chain's own invariants.
        assert_eq!(chain.last().iss, state.peer.to_string());
        assert_eq!(chain.last().aud, state.local.to_string());
        assert!(chain.links.windows(2).all(|w| w[1].exp <= w[0].exp));
    }
});
