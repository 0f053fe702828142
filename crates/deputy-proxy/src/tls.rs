//! rustls configurations for SPIFFE mTLS.
//!
//! rustls' stock WebPKI verifiers expect DNS names and reject URI-only certificates, so
//! Deputy verifies the chain with webpki against the bundle of the peer's trust domain and then
//! checks the SPIFFE parts: the leaf is an X.509-SVID and (outbound) carries exactly the
//! SPIFFE ID of the service being called.
//!
//! Both sides speak TLS 1.3 only, and session resumption is off: SVIDs live for minutes to
//! hours and are rotated at half-life, and a resumed session would skip the certificate check
//! that a rotated or revoked identity must pass again. A full handshake costs one ECDSA
//! signature per side; connections are pooled, so this is paid per connection, not per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deputy_identity::{SvidVerifyError, TlsMaterial, TrustAnchors};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use spiffe::{SpiffeId, X509BundleSet};
use tokio::sync::watch;

/// Trust bundles as deputyd receives them from the Workload API.
pub type Bundles = watch::Receiver<Option<Arc<X509BundleSet>>>;
/// One identity's material, `None` while it has no valid SVID.
pub type Material = watch::Receiver<Option<Arc<TlsMaterial>>>;

/// Why a peer certificate was refused; carried inside rustls' error so that the data path can
/// tell the agent exactly what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerCertError {
    /// Not a valid X.509-SVID of a trusted trust domain.
    #[error("the peer {0}")]
    Svid(#[from] SvidVerifyError),
    /// A valid SVID, but not of the service that was called.
    #[error("the server presented {presented}, but the service is {expected}")]
    IdentityMismatch {
        /// The SPIFFE ID the configuration names.
        expected: String,
        /// The SPIFFE ID in the certificate.
        presented: String,
    },
}

fn refuse(error: PeerCertError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(error))))
}

/// Finds a [`PeerCertError`] inside an I/O error from a TLS handshake.
pub fn peer_cert_error(error: &std::io::Error) -> Option<&PeerCertError> {
    let rustls_error = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PeerCertError>()
        }
        _ => None,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Anchors and the bundle set they were built from.
type BuiltAnchors = (Option<Arc<X509BundleSet>>, Arc<TrustAnchors>);

/// Whether two bundle sets are the same one (by identity: each update is a new set).
pub(crate) fn same_bundle_set(
    a: Option<&Arc<X509BundleSet>>,
    b: Option<&Arc<X509BundleSet>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Trust anchors per trust domain, rebuilt only when the bundle set changes.
#[derive(Debug)]
pub(crate) struct Anchors {
    bundles: Bundles,
    /// The bundle set the anchors were built from, kept alive so that identity by pointer is
    /// sound (a freed set's address could be reused by a different one).
    cache: Mutex<Option<BuiltAnchors>>,
}

impl Anchors {
    pub(crate) fn new(bundles: Bundles) -> Self {
        Self {
            bundles,
            cache: Mutex::new(None),
        }
    }

    /// The anchors of the current bundle set.
    pub(crate) fn current(&self) -> Arc<TrustAnchors> {
        let set = self.bundles.borrow().clone();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, anchors)) = cache.as_ref()
            && same_bundle_set(built_from.as_ref(), set.as_ref())
        {
            return anchors.clone();
        }
        let anchors = Arc::new(
            set.as_deref()
                .map(TrustAnchors::from_bundles)
                .unwrap_or_default(),
        );
        *cache = Some((set, anchors.clone()));
        anchors
    }

    /// Verifies `end_entity` as an X.509-SVID of a trusted trust domain; returns its SPIFFE ID.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        self.current()
            .verify_svid(end_entity, intermediates, now, usage)
            .map_err(|e| refuse(e.into()))
    }
}

/// The certificates a peer presented, owned (kept with its connection to verify them again).
pub(crate) fn owned_chain(certs: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certs.map_or_else(Vec::new, |certs| {
        certs.iter().map(|c| c.clone().into_owned()).collect()
    })
}

/// The SPIFFE ID of a verified peer, from its leaf certificate.
pub fn peer_spiffe_id(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    spiffe::cert::spiffe_id_from_der(certs?.first()?.as_ref()).ok()
}

impl SpiffeClientVerifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl SpiffeServerVerifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

/// Inbound: requires a client SVID from any trust domain deputyd has a bundle for.
#[derive(Debug)]
struct SpiffeClientVerifier {
    anchors: Anchors,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.anchors.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// Outbound: requires the server's SVID to carry exactly the called service's SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Anchors,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The SNI is only a routing hint for the far deputyd; authorization is the SPIFFE ID.
        let presented = self.anchors.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if presented != self.expected {
            return Err(refuse(PeerCertError::IdentityMismatch {
                expected: self.expected.to_string(),
                presented: presented.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// Presents the SVID of the local agent the SNI names. Always reads the latest material, so
/// a rotation takes effect on the next handshake.
#[derive(Debug)]
struct SniResolver {
    agents: HashMap<String, Material>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let material = self
            .agents
            .get(client_hello.server_name()?)?
            .borrow()
            .clone()?;
        Some(material.certified_key.clone())
    }
}

/// The inbound server configuration: TLS 1.3, client SVID required, SVID chosen by SNI, ALPN
/// h2 then http/1.1, no resumption.
pub fn server_config(
    agents: HashMap<String, Material>,
    bundles: Bundles,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(SpiffeClientVerifier {
        anchors: Anchors::new(bundles),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SniResolver { agents }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The outbound client configuration for one (agent, service) pair: the agent's SVID as the
/// client certificate, the service's SPIFFE ID required of the server, ALPN h2, no resumption.
pub fn client_config(
    material: &TlsMaterial,
    expected: SpiffeId,
    bundles: Bundles,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        anchors: Anchors::new(bundles),
        expected,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(FixedClientCert(material.certified_key.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The TLS alert record `unrecognized_name` (RFC 8446 §5.1 record header, §6 alert): sent to a
/// client whose SNI names no local agent. rustls has no server API for this alert (its own
/// refusal would be `access_denied`, which says nothing useful), so it is written before any
/// handshake state exists, as a plaintext record.
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
