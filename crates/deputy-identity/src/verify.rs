//! Verifying a certificate chain as an X.509-SVID of a trusted trust domain.
//!
//! rustls' stock WebPKI verifiers expect DNS names and reject URI-only certificates, so Deputy
//! verifies the path with webpki against the bundle of the certificate's *own* trust domain
//! (named by its SPIFFE ID; federated bundles included) and checks the X.509-SVID profile. Used
//! for mTLS peers and for the `x5c` chains of delegation links alike.

use std::collections::HashMap;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use spiffe::{SpiffeId, TrustDomain, X509BundleSet};

/// The signature algorithms of the one crypto provider, built once rather than per handshake.
static ALGORITHMS: std::sync::LazyLock<rustls::crypto::WebPkiSupportedAlgorithms> =
    std::sync::LazyLock::new(|| {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
    });

/// Why a chain is not a valid X.509-SVID of a trusted trust domain.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SvidVerifyError {
    /// The leaf is not an X.509-SVID (no or several URI SANs, a CA certificate, ...).
    #[error("the certificate is not an X.509-SVID: {0}")]
    NotAnSvid(String),
    /// No bundle is known for the certificate's trust domain.
    #[error("no trust bundle for trust domain {0}: it is neither this trust domain nor federated")]
    UnknownTrustDomain(String),
    /// The path does not verify against the bundle (another CA, expired, bad signature).
    #[error("the certificate does not verify against the bundle of {trust_domain}: {reason}")]
    Chain {
        /// The certificate's trust domain.
        trust_domain: String,
        /// webpki's reason.
        reason: String,
    },
}

/// Trust anchors per trust domain, built once per bundle set.
#[derive(Debug, Default)]
pub struct TrustAnchors {
    by_domain: HashMap<TrustDomain, Vec<TrustAnchor<'static>>>,
}

impl TrustAnchors {
    /// The anchors of every bundle in `set`.
    pub fn from_bundles(set: &X509BundleSet) -> Self {
        let by_domain = set
            .iter()
            .map(|(td, bundle)| {
                let anchors = bundle
                    .authorities()
                    .iter()
                    .filter_map(|ca| {
                        webpki::anchor_from_trusted_cert(&CertificateDer::from(ca.as_bytes()))
                            .ok()
                            .map(|a| a.to_owned())
                    })
                    .collect();
                (td.clone(), anchors)
            })
            .collect();
        Self { by_domain }
    }

    /// Verifies `end_entity` (with `intermediates`) at `now` for `usage` as an X.509-SVID
    /// chaining to its trust domain's bundle; returns its SPIFFE ID.
    pub fn verify_svid(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, SvidVerifyError> {
        let id = svid_id(end_entity)?;
        let trust_domain = id.trust_domain();
        let roots = self
            .by_domain
            .get(trust_domain)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| SvidVerifyError::UnknownTrustDomain(trust_domain.to_string()))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| SvidVerifyError::NotAnSvid(format!("cannot parse: {e}")))?;
        cert.verify_for_usage(ALGORITHMS.all, roots, intermediates, now, usage, None, None)
            .map_err(|e| SvidVerifyError::Chain {
                trust_domain: trust_domain.to_string(),
                reason: format!("{e:?}"),
            })?;
        Ok(id)
    }
}

/// The SPIFFE ID of a leaf that satisfies the X.509-SVID profile. Validity in time is not
/// checked here: the path verification does it against the caller's clock.
pub fn svid_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidVerifyError> {
    let report = crate::inspect::inspect_chain(&[leaf.to_vec()], time::OffsetDateTime::now_utc())
        .map_err(|e| SvidVerifyError::NotAnSvid(e.to_string()))?;
    let profile_problems: Vec<&str> = report
        .problems
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with("expired") && !p.starts_with("not yet valid"))
        .collect();
    match (&report.spiffe_id, profile_problems.is_empty()) {
        (Some(id), true) => id
            .parse()
            .map_err(|e: spiffe::SpiffeIdError| SvidVerifyError::NotAnSvid(e.to_string())),
        _ => Err(SvidVerifyError::NotAnSvid(profile_problems.join("; "))),
    }
}
