//! A TLS client that plays a peer deputyd with any certificate, to test what the inbound port
//! accepts and what it presents.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::mesh::Mesh;

/// A client certificate and its key.
pub type ClientCert = (CertificateDer<'static>, KeyPair);

/// The test plays a client; the server's own identity is not under test here.
#[derive(Debug, Default)]
struct AnyServer {
    /// The leaf the server presented, kept for the test to inspect.
    presented: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(leaf.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects with `sni` and an optional client certificate, sends one HTTP/1.1 request and
/// returns the answer or the error.
pub async fn call(addr: &str, sni: &str, cert: Option<ClientCert>) -> Result<String, String> {
    call_inspecting(addr, sni, cert).await.0
}

/// Like [`call`], with extra request headers.
pub async fn call_with_headers(
    addr: &str,
    sni: &str,
    cert: Option<ClientCert>,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let request = whoami_request(sni, headers);
    exchange(addr, sni, cert, Arc::new(AnyServer::default()), &request).await
}

/// `GET /whoami` with `headers`, asking the server to close after answering.
fn whoami_request(sni: &str, headers: &[(&str, &str)]) -> String {
    format!(
        "GET /whoami HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n{}\r\n",
        headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect::<String>()
    )
}

/// POSTs `body` to `path` over TLS with `sni` and `cert`; returns the whole HTTP answer.
pub async fn post(
    addr: &str,
    sni: &str,
    cert: ClientCert,
    path: &str,
    body: &str,
) -> Result<String, String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(
        addr,
        sni,
        Some(cert),
        Arc::new(AnyServer::default()),
        &request,
    )
    .await
}

/// Like [`call`], and also returns the leaf certificate the server presented (DER).
pub async fn call_inspecting(
    addr: &str,
    sni: &str,
    cert: Option<ClientCert>,
) -> (Result<String, String>, Option<Vec<u8>>) {
    let verifier = Arc::new(AnyServer::default());
    let forged = [
        ("Deputy-Peer-Id", "spiffe://example.org/agent/forged"),
        ("Deputy-Principal", "user:mallory"),
    ];
    let request = whoami_request(sni, &forged);
    let result = exchange(addr, sni, cert, verifier.clone(), &request).await;
    let presented = verifier
        .presented
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    (result, presented)
}

async fn exchange(
    addr: &str,
    sni: &str,
    cert: Option<ClientCert>,
    verifier: Arc<AnyServer>,
    request: &str,
) -> Result<String, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .dangerous()
    .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).expect("sni");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// The mesh's real CA, to sign test certificates with.
pub fn real_ca(mesh: &Mesh) -> Issuer<'static, KeyPair> {
    real_ca_in(mesh.dir.path())
}

/// The real CA of the issuer serving from `dir`.
pub fn real_ca_in(dir: &std::path::Path) -> Issuer<'static, KeyPair> {
    let ca = dir.join("ca");
    let key = KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca.key")).expect("ca key"))
        .expect("key");
    Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca.join("ca.pem")).expect("ca pem"),
        key,
    )
    .expect("issuer")
}

pub fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("uri")))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

pub fn signed(
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.der().clone(), key)
}

/// A first link signed with `cert`'s key by hand, as a client holding an agent's SVID could sign
/// one without any deputyd: "`cert`'s SPIFFE ID lets `delegate` act for `principal`", for
/// `budget` calls if given.
pub fn first_link(
    cert: &ClientCert,
    delegate: &str,
    principal: &str,
    budget: Option<u64>,
) -> String {
    let signer = deputy_delegation::LinkSigner::new(&[cert.0.to_vec()], &cert.1.serialize_der())
        .expect("a signer from the SVID");
    let grant = deputy_delegation::Grant {
        delegate: delegate.parse().expect("delegate SPIFFE ID"),
        scopes: Some(vec!["tickets:read".into()]),
        budget_calls: budget,
        ttl: Duration::from_secs(300),
    };
    deputy_delegation::originate(
        &signer,
        principal,
        "task-signed-by-hand",
        &grant,
        std::time::SystemTime::now(),
    )
    .expect("sign")
}

/// A copy of `cert` (rcgen key pairs do not clone).
pub fn copy_cert(cert: &ClientCert) -> ClientCert {
    (
        cert.0.clone(),
        KeyPair::try_from(cert.1.serialize_der().as_slice()).expect("key"),
    )
}

/// Calls `sni` on `inbound` over raw TLS with `cert`, carrying a first link `cert` signed by hand
/// for `principal` (and `budget` calls); returns the whole HTTP answer.
pub async fn call_with_first_link(
    inbound: &str,
    sni: &str,
    cert: &ClientCert,
    delegate: &str,
    principal: &str,
    budget: Option<u64>,
) -> String {
    let link = first_link(cert, delegate, principal, budget);
    call_with_headers(
        inbound,
        sni,
        Some(copy_cert(cert)),
        &[("Deputy-Delegation", link.as_str())],
    )
    .await
    .expect("answered")
}
