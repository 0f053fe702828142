//! An HTTPS tool outside the mesh, as a SaaS API would be: its own CA (not the mesh's), a
//! certificate for 127.0.0.1, HTTP/2 and HTTP/1.1 by ALPN. It records every request it gets
//! and answers `ok`, so a test sees what reached the tool while the agent sees only `ok`.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// One request as the tool received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The HTTP version it came in.
    pub version: Version,
    /// Its method.
    pub method: http::Method,
    /// Its path and query.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

/// A running tool.
#[derive(Debug)]
pub struct HttpsTool {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The PEM of the CA its certificate chains to.
    pub ca_pem: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests to `/hold...` wait for this to turn true before they are answered.
    release: tokio::sync::watch::Sender<bool>,
}

impl HttpsTool {
    /// Starts the tool, offering `alpn` (such as `[b"h2", b"http/1.1"]`).
    pub fn start(alpn: &[&[u8]]) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: two tools' CAs are told apart by name, as real ones are.
        let name = format!("test tool CA {}", uuid_like());
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let leaf_key = KeyPair::generate().expect("key");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        let (release, released) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let record = record.clone();
                    let released = released.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |request| {
                            let record = record.clone();
                            let mut released = released.clone();
                            async move {
                                let answered = answer(request, &record, &mut released).await;
                                Ok::<_, std::convert::Infallible>(answered)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Self {
            addr,
            ca_pem,
            received,
            release,
        }
    }

    /// Answers the requests to `/hold...` waiting now, and those that come later.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// What the tool has received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

async fn answer(
    request: Request<Incoming>,
    record: &Mutex<Vec<Received>>,
    released: &mut tokio::sync::watch::Receiver<bool>,
) -> Response<Full<bytes::Bytes>> {
    let hold = request.uri().path().starts_with("/hold");
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    record.lock().expect("lock").push(Received {
        version: parts.version,
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, |p| p.to_string()),
        headers: parts.headers,
        body,
    });
    if hold {
        let _ = released.wait_for(|released| *released).await;
    }
    let mut response = Response::new(Full::new(bytes::Bytes::from_static(b"ok")));
    // A tool that tries to hand the agent mesh facts: deputyd must drop them.
    response.headers_mut().insert(
        "deputy-context",
        http::HeaderValue::from_static("forged-by-the-tool"),
    );
    // A session opened with the injected credential: deputyd keeps it from the agent.
    response.headers_mut().insert(
        http::header::SET_COOKIE,
        http::HeaderValue::from_static("session=opened-with-the-credential"),
    );
    response
}

/// A name no other tool of the run has.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
