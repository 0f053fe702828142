//! A test PKI: trust domains with CAs, agents with SVIDs that sign links.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deputy_delegation::{ChainVerifier, Grant, LinkClaims, LinkSigner, VerifyOptions};
use deputy_identity::TrustAnchors;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet};

/// One trust domain's CA.
pub struct Domain {
    pub name: String,
    pub issuer: Issuer<'static, KeyPair>,
    pub ca_der: Vec<u8>,
}

impl Domain {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{name}").try_into().expect("uri"),
        )];
        let cert = params.self_signed(&key).expect("ca");
        Self {
            name: name.to_owned(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An agent of this domain: its SPIFFE ID, chain and key.
    pub fn agent(&self, path: &str) -> Agent {
        let id = format!("spiffe://{}/agent/{path}", self.name);
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(id.clone().try_into().expect("uri"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Agent {
            id: id.parse().expect("id"),
            chain: vec![cert.der().to_vec()],
            key: key.serialize_der(),
        }
    }

    pub fn bundle(&self) -> X509Bundle {
        X509Bundle::parse_from_der(TrustDomain::new(&self.name).expect("td"), &self.ca_der)
            .expect("bundle")
    }
}

/// An agent with its SVID.
pub struct Agent {
    pub id: SpiffeId,
    pub chain: Vec<Vec<u8>>,
    pub key: Vec<u8>,
}

impl Agent {
    pub fn signer(&self) -> LinkSigner {
        LinkSigner::new(&self.chain, &self.key).expect("signer")
    }
}

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
