//! The inbound mTLS port refuses every client certificate that is not a valid SVID of a
//! trusted trust domain, and an SNI that names no local agent; each refusal is counted with its
//! reason.

use std::sync::Arc;
use std::time::Duration;

use deputy_tests::mesh::Mesh;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A client certificate and its key.
type ClientCert = (CertificateDer<'static>, KeyPair);

/// The test plays a client; the server's own identity is not under test here.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
async fn call(
    addr: &str,
    sni: &str,
    cert: Option<(CertificateDer<'static>, KeyPair)>,
) -> Result<String, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer));
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
    tls.write_all(
        format!("GET /whoami HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
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
fn real_ca(mesh: &Mesh) -> Issuer<'static, KeyPair> {
    let ca = mesh.dir.path().join("ca");
    let key = KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca.key")).expect("ca key"))
        .expect("key");
    Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca.join("ca.pem")).expect("ca pem"),
        key,
    )
    .expect("issuer")
}

fn svid_params(uris: &[&str]) -> CertificateParams {
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

fn signed(
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.der().clone(), key)
}

const ALPHA: &str = "spiffe://example.org/agent/alpha";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_svids_of_trusted_domains_get_through() {
    let mesh = Mesh::start("1h");
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let ca = real_ca(&mesh);

    // Control: a valid SVID signed by the trust domain's CA is accepted.
    let answer = call(&inbound, "beta", Some(signed(&svid_params(&[ALPHA]), &ca)))
        .await
        .expect("a valid SVID is accepted");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(ALPHA), "{answer}");

    let other_ca = {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        Issuer::new(params, key)
    };
    let mut expired = svid_params(&[ALPHA]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut ca_leaf = svid_params(&[ALPHA]);
    ca_leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_leaf.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];

    let cases: Vec<(&str, Option<ClientCert>, &str)> = vec![
        ("no client certificate", None, "no_client_certificate"),
        (
            "another CA",
            Some(signed(&svid_params(&[ALPHA]), &other_ca)),
            "untrusted_chain",
        ),
        (
            "an expired SVID",
            Some(signed(&expired, &ca)),
            "untrusted_chain",
        ),
        (
            "no URI SAN",
            Some(signed(&svid_params(&[]), &ca)),
            "not_an_svid",
        ),
        (
            "two URI SANs",
            Some(signed(
                &svid_params(&[ALPHA, "spiffe://example.org/agent/x"]),
                &ca,
            )),
            "not_an_svid",
        ),
        (
            "a CA certificate",
            Some(signed(&ca_leaf, &ca)),
            "not_an_svid",
        ),
        (
            "a foreign trust domain",
            Some(signed(&svid_params(&["spiffe://partner.org/agent/x"]), &ca)),
            "unknown_trust_domain",
        ),
    ];
    for (what, cert, reason) in cases {
        let result = call(&inbound, "beta", cert).await;
        assert!(result.is_err(), "{what} must be refused, got {result:?}");
        let metrics = mesh.node2.metrics();
        assert!(
            metrics.contains(&format!(
                "deputy_tls_handshake_failures_total{{direction=\"inbound\",reason=\"{reason}\"}}"
            )),
            "{what}: no {reason} failure counted\n{metrics}"
        );
    }
    let log = mesh.node2.process.output.text();
    assert!(log.contains("CertExpired"), "the log says the SVID expired");
    assert!(
        log.contains("2 URI SANs"),
        "the log says why a certificate is not an SVID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_for_an_agent_not_on_the_node_gets_unrecognized_name() {
    let mesh = Mesh::start("1h");
    let inbound = mesh.node2.inbound.clone().expect("inbound");
    let cert = signed(&svid_params(&[ALPHA]), &real_ca(&mesh));
    let error = call(&inbound, "alpha", Some(cert))
        .await
        .expect_err("alpha is on node1");
    assert!(error.contains("UnrecognisedName"), "{error}");
    assert!(mesh.node2.metrics().contains("reason=\"unknown_sni\""));
}
