//! A test PKI: a trust domain's CA and agents with X.509-SVIDs that sign links.

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use spiffe::{SpiffeId, TrustDomain, X509Bundle};

use crate::LinkSigner;

/// One trust domain's CA.
pub struct TestDomain {
    /// The trust domain name.
    pub name: String,
    /// Signs the agents' SVIDs.
    pub issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
}

impl std::fmt::Debug for TestDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDomain")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An agent with its SVID.
#[derive(Debug)]
pub struct TestAgent {
    /// Its SPIFFE ID (`spiffe://DOMAIN/agent/NAME`).
    pub id: SpiffeId,
    /// Its SVID chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// Its PKCS#8 private key.
    pub key: Vec<u8>,
}

impl TestDomain {
    /// A CA for `name`, valid from now on (rcgen's defaults).
    pub fn new(name: &str) -> Self {
        Self::build(name, None)
    }

    /// A CA whose certificates (its own and its agents') are valid from `not_before` to
    /// `not_after`, for fixed test vectors.
    pub fn valid_between(
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Self {
        Self::build(name, Some((not_before, not_after)))
    }

    fn build(name: &str, validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = Self::params(validity);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{name}").try_into().expect("URI"),
        )];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            name: name.to_owned(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            validity,
        }
    }

    fn params(validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some((not_before, not_after)) = validity {
            params.not_before = not_before;
            params.not_after = not_after;
        }
        params
    }

    /// An agent of this domain with an X.509-SVID per the SPIFFE profile.
    pub fn agent(&self, name: &str) -> TestAgent {
        let id = format!("spiffe://{}/agent/{name}", self.name);
        let key = KeyPair::generate().expect("agent key");
        let mut params = Self::params(self.validity);
        params.subject_alt_names = vec![SanType::URI(id.clone().try_into().expect("URI"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("SVID");
        TestAgent {
            id: id.parse().expect("SPIFFE ID"),
            chain: vec![cert.der().to_vec()],
            key: key.serialize_der(),
        }
    }

    /// The domain's X.509 bundle.
    pub fn bundle(&self) -> X509Bundle {
        X509Bundle::parse_from_der(
            TrustDomain::new(&self.name).expect("trust domain"),
            &self.ca_der,
        )
        .expect("bundle")
    }
}

impl TestAgent {
    /// A signer for its links.
    pub fn signer(&self) -> LinkSigner {
        LinkSigner::new(&self.chain, &self.key).expect("signer")
    }
}
