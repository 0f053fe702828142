//! A test PKI: trust domains with CAs, agents with SVIDs that sign links.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deputy_delegation::{ChainVerifier, Grant, LinkClaims, VerifyOptions};
use deputy_identity::TrustAnchors;
use spiffe::X509BundleSet;

pub use deputy_delegation::testing::{TestAgent as Agent, TestDomain as Domain};

/// Anchors trusting `domains`.
pub fn anchors(domains: &[&Domain]) -> Arc<TrustAnchors> {
    let mut set = X509BundleSet::new();
    for d in domains {
        set.add_bundle(d.bundle());
    }
    Arc::new(TrustAnchors::from_bundles(&set))
}

pub fn verifier() -> ChainVerifier {
    ChainVerifier::new(VerifyOptions::default())
}

pub fn grant(to: &Agent, scopes: &[&str], budget: Option<u64>, ttl_secs: u64) -> Grant {
    Grant {
        delegate: to.id.clone(),
        scopes: Some(scopes.iter().map(|s| (*s).to_owned()).collect()),
        budget_calls: budget,
        ttl: Duration::from_secs(ttl_secs),
    }
}

pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Claims to sign by hand, for links the extension API would refuse to make.
pub fn claims(
    iss: &Agent,
    aud: &Agent,
    scopes: &[&str],
    exp_in: i64,
    prev: Option<String>,
) -> LinkClaims {
    let iat = deputy_now();
    LinkClaims {
        iss: iss.id.to_string(),
        aud: aud.id.to_string(),
        sub: "user:alice@example.org".into(),
        task: "task-1".into(),
        scope: scopes.iter().map(|s| (*s).to_owned()).collect(),
        budget: None,
        iat,
        exp: iat + exp_in,
        jti: format!("jti-{}", rand_suffix()),
        prev,
    }
}

pub fn deputy_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
