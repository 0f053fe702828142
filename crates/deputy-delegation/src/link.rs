//! One link: a compact JWS signed with the delegator's X.509-SVID key, its SVID chain in `x5c`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use spiffe::SpiffeId;
use x509_parser::prelude::FromDer;

/// The JOSE `typ` of a link.
pub const LINK_TYP: &str = "deputy-link+jwt";

/// A spending limit carried down the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Calls the delegate may make under this link.
    pub calls: u64,
}

/// The claims of a link: "`iss` lets `aud` act, for `sub`, in `task`, with `scope`, until `exp`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkClaims {
    /// The delegator's SPIFFE ID.
    pub iss: String,
    /// The delegate's SPIFFE ID.
    pub aud: String,
    /// The principal the task acts for, such as `user:alice@example.org`.
    pub sub: String,
    /// The task id, fixed by the first link.
    pub task: String,
    /// What the delegate may do.
    pub scope: Vec<String>,
    /// How much it may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
    /// Unique id of the link.
    pub jti: String,
    /// base64url(SHA-256(previous link's compact serialization)); absent on the first link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// The claims of a compact link, decoded WITHOUT any verification: for display, and for a signer
/// reading back a link it just made. Never a basis for trust; use `ChainVerifier`.
pub fn unverified_claims(compact: &str) -> Option<LinkClaims> {
    let payload = compact.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The hash a next link's `prev` must carry: base64url without padding of SHA-256 of the
/// compact serialization.
pub fn link_hash(compact: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        compact.as_bytes(),
    ))
}

/// An SVID that can sign links.
pub struct LinkSigner {
    spiffe_id: SpiffeId,
    x5c: Vec<String>,
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// An SVID that cannot sign links.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The chain is empty or its leaf cannot be parsed.
    #[error("the SVID cannot sign links: {0}")]
    BadSvid(String),
    /// The key is neither P-256 (ES256) nor Ed25519 (EdDSA).
    #[error("links are signed with P-256 (ES256) or Ed25519 (EdDSA) keys; this SVID's key is {0}")]
    UnsupportedKey(String),
    /// Signing failed.
    #[error("signing the link failed: {0}")]
    Signing(String),
}

impl LinkSigner {
    /// A signer from an SVID: its chain (DER, leaf first) and PKCS#8 private key.
    pub fn new(chain_der: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Self, SignError> {
        let leaf = chain_der
            .first()
            .ok_or_else(|| SignError::BadSvid("the chain is empty".into()))?;
        let spiffe_id = spiffe::cert::spiffe_id_from_der(leaf)
            .map_err(|e| SignError::BadSvid(e.to_string()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|e| SignError::BadSvid(e.to_string()))?;
        let algorithm = match public_key_kind(&cert) {
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
            KeyKind::Other(oid) => return Err(SignError::UnsupportedKey(oid)),
        };
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_der(key_pkcs8),
            _ => EncodingKey::from_ec_der(key_pkcs8),
        };
        Ok(Self {
            spiffe_id,
            x5c: chain_der.iter().map(|der| STANDARD.encode(der)).collect(),
            key,
            algorithm,
        })
    }

    /// The SPIFFE ID links signed by this signer carry as `iss`.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Signs `claims` as a link.
    pub fn sign(&self, claims: &LinkClaims) -> Result<String, SignError> {
        self.sign_document(LINK_TYP, claims)
    }

    /// Signs `claims` as a document of type `typ` (verified with
    /// [`verify_signed`](crate::verify_signed)).
    pub fn sign_document(
        &self,
        typ: &str,
        claims: &impl serde::Serialize,
    ) -> Result<String, SignError> {
        let mut header = Header::new(self.algorithm);
        header.typ = Some(typ.into());
        header.x5c = Some(self.x5c.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| SignError::Signing(e.to_string()))
    }
}

pub(crate) enum KeyKind {
    P256,
    Ed25519,
    Other(String),
}

/// The kind of a certificate's public key, from its SubjectPublicKeyInfo.
pub(crate) fn public_key_kind(cert: &x509_parser::certificate::X509Certificate<'_>) -> KeyKind {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let spki = cert.public_key();
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_SIG_ED25519 {
        return KeyKind::Ed25519;
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&OID_EC_P256) {
            return KeyKind::P256;
        }
        return KeyKind::Other(format!("an EC key on curve {curve:?}"));
    }
    KeyKind::Other(algorithm.to_id_string())
}
