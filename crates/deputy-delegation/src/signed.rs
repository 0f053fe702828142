//! Compact JWS documents signed with an X.509-SVID, the SVID chain in `x5c`: delegation links,
//! and the other statements one deputyd makes to another (a revocation). Verified offline
//! against the trust bundles.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use deputy_identity::TrustAnchors;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::de::DeserializeOwned;
use spiffe::SpiffeId;
use x509_parser::prelude::FromDer;

use crate::link::{KeyKind, public_key_kind};

/// Why a signed document does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// Not a compact JWS of the expected type, or its claims or certificates cannot be read.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The x5c chain is not a valid SVID of a trusted trust domain.
    #[error("the signer is not trusted: {0}")]
    Untrusted(String),
    /// The signature does not match.
    #[error("the signature does not verify")]
    BadSignature,
}

/// A document whose signature and SVID verified at the time given.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    /// Its claims.
    pub claims: T,
    /// The SPIFFE ID of the SVID that signed it.
    pub signer: SpiffeId,
    /// Validity window of the x5c chain (latest start, earliest end), unix seconds.
    pub certs_valid_from: i64,
    /// See `certs_valid_from`.
    pub certs_valid_until: i64,
}

/// Verifies `compact`, a JWS of type `typ` signed with an SVID (its chain in `x5c`) that
/// `anchors` trust at `now`; returns its claims, unchecked otherwise.
pub fn verify_signed<T: DeserializeOwned>(
    compact: &str,
    typ: &str,
    anchors: &TrustAnchors,
    now: SystemTime,
) -> Result<Signed<T>, SignedError> {
    let malformed = SignedError::Malformed;
    let header = jsonwebtoken::decode_header(compact)
        .map_err(|e| malformed(format!("not a compact JWS: {e}")))?;
    if header.typ.as_deref() != Some(typ) {
        return Err(malformed(format!(
            "typ is {:?}, not {typ:?}",
            header.typ.unwrap_or_default()
        )));
    }
    let x5c = header
        .x5c
        .filter(|c| !c.is_empty())
        .ok_or_else(|| malformed("the header has no x5c certificate chain".into()))?;
    let chain: Vec<CertificateDer<'static>> = x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|e| malformed(format!("x5c is not standard base64: {e}")))?;
    let verify_at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let signer = anchors
        .verify_svid(
            &chain[0],
            &chain[1..],
            verify_at,
            webpki::KeyUsage::client_auth(),
        )
        .map_err(|e| SignedError::Untrusted(e.to_string()))?;
    let (valid_from, valid_until, kind, public_key) =
        leaf_facts(&chain).map_err(|e| malformed(format!("x5c cannot be parsed: {e}")))?;
    let (algorithm, key) = match (header.alg, kind) {
        (Algorithm::ES256, KeyKind::P256) => {
            (Algorithm::ES256, DecodingKey::from_ec_der(&public_key))
        }
        (Algorithm::EdDSA, KeyKind::Ed25519) => {
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&public_key))
        }
        (alg, _) => {
            return Err(malformed(format!(
                "alg {alg:?} does not match the x5c leaf's key (ES256 for P-256, EdDSA for Ed25519)"
            )));
        }
    };
    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<T>(compact, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => SignedError::BadSignature,
            _ => malformed(format!("claims: {e}")),
        })?
        .claims;
    Ok(Signed {
        claims,
        signer,
        certs_valid_from: valid_from,
        certs_valid_until: valid_until,
    })
}

/// The validity window of the whole chain, and the leaf's key kind and raw public key.
fn leaf_facts(chain: &[CertificateDer<'_>]) -> Result<(i64, i64, KeyKind, Vec<u8>), String> {
    let mut from = i64::MIN;
    let mut until = i64::MAX;
    let mut leaf = None;
    for der in chain {
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        from = from.max(cert.validity().not_before.timestamp());
        until = until.min(cert.validity().not_after.timestamp());
        if leaf.is_none() {
            leaf = Some((
                public_key_kind(&cert),
                cert.public_key().subject_public_key.data.to_vec(),
            ));
        }
    }
    let (kind, key) = leaf.ok_or("empty chain")?;
    Ok((from, until, kind, key))
}
