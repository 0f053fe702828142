//! Ready-to-use TLS material for one identity: what the data path hands to rustls.
//!
//! Built once per new SVID (the one entry point for new credentials), then shared as an
//! `Arc` through a `watch`, so handshakes never parse certificates or keys.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use spiffe::{SpiffeId, X509Svid};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

/// An SVID turned into a rustls `CertifiedKey`, with the facts the manager reports.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The SPIFFE ID of the SVID.
    pub spiffe_id: SpiffeId,
    /// Certificate chain (leaf first) and signing key, ready for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// Serial number of the leaf, hexadecimal.
    pub serial: String,
    /// Start of the leaf's validity.
    pub not_before: OffsetDateTime,
    /// End of the leaf's validity: after it the material is withdrawn.
    pub not_after: OffsetDateTime,
    /// The SVID chain and key in the form delegation links are signed with.
    pub signing: Arc<SigningMaterial>,
}

/// An SVID's chain (DER, leaf first) and PKCS#8 private key, for signing delegation links.
pub struct SigningMaterial {
    /// The certificate chain, DER, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningMaterial")
            .field("chain_len", &self.chain_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// An SVID that cannot be turned into TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterialError {
    /// The leaf certificate cannot be parsed.
    #[error("the SVID leaf certificate cannot be parsed: {0}")]
    Leaf(String),
    /// The private key is of a type rustls cannot sign with.
    #[error("the SVID private key cannot be used for TLS: {0}")]
    Key(rustls::Error),
}

impl TlsMaterial {
    /// Builds material from an SVID delivered by the Workload or Delegated Identity API.
    pub fn from_svid(svid: &X509Svid) -> Result<Self, MaterialError> {
        let chain: Vec<CertificateDer<'static>> = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(svid.leaf().as_bytes())
            .map_err(|e| MaterialError::Leaf(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key().as_bytes().to_vec(),
        ));
        let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(MaterialError::Key)?;
        let signing = Arc::new(SigningMaterial {
            chain_der: svid
                .cert_chain()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
            key_pkcs8: svid.private_key().as_bytes().to_vec(),
        });
        Ok(Self {
            signing,
            spiffe_id: svid.spiffe_id().clone(),
            certified_key: Arc::new(CertifiedKey::new(chain, signing_key)),
            serial: leaf.raw_serial_as_string(),
            not_before: leaf.validity().not_before.to_datetime(),
            not_after: leaf.validity().not_after.to_datetime(),
        })
    }

    /// Whether the leaf is still valid at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}
