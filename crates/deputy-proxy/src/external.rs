//! Tools outside the mesh (`[[external]]`): deputyd calls them over HTTPS itself, their server
//! certificate checked against the configured roots (or the system's) and their host name,
//! HTTP/2 or HTTP/1.1 as ALPN settles, connections pooled per tool.
//!
//! Such a tool cannot verify a delegation chain, so it gets none: it gets the task's id in a
//! header, the call's id, and the credential deputyd injects; the decision was the policy's,
//! at this end.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Arc;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::{External, Limits, Reach, Service, Timeouts};
use crate::problem::ProblemKind;

/// One pooled HTTPS client per external tool, by name.
#[derive(Debug, Default)]
pub(crate) struct Externals(HashMap<String, Client<HttpsConnector<HttpConnector>, Body>>);

impl Externals {
    /// Clients for every external tool among `services`.
    pub(crate) fn new(
        services: &[Service],
        timeouts: &Timeouts,
        limits: &Limits,
    ) -> Result<Self, String> {
        let mut clients = HashMap::new();
        for service in services {
            if let Reach::External(external) = &service.reach {
                let client = client(external, timeouts, limits)
                    .map_err(|e| format!("external service {}: {e}", service.name))?;
                clients.insert(service.name.clone(), client);
            }
        }
        Ok(Self(clients))
    }

    /// The client of the external tool `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Client<HttpsConnector<HttpConnector>, Body>> {
        self.0.get(name)
    }
}

fn client(
    external: &External,
    timeouts: &Timeouts,
    limits: &Limits,
) -> Result<Client<HttpsConnector<HttpConnector>, Body>, String> {
    let roots = if external.roots.is_empty() {
        system_roots().ok_or_else(|| {
            "this host has no system CA roots; set ca_file to the roots the tool's certificate \
             chains to"
                .to_owned()
        })?
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for root in &external.roots {
            roots
                .add(root.clone())
                .map_err(|e| format!("a certificate of ca_file is not a usable root: {e}"))?;
        }
        roots
    };
    let tls = tls_client(roots)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(timeouts.idle)
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(limits.keepalive_interval)
        .http2_keep_alive_timeout(limits.keepalive_timeout)
        .build(https))
}

/// The system's CA roots, if it has any.
pub(crate) fn system_roots() -> Option<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    (!roots.is_empty()).then_some(roots)
}

/// A TLS client (the workspace's aws-lc-rs provider, TLS 1.2 and 1.3, no client certificate)
/// that checks servers against `roots`.
pub(crate) fn tls_client(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Where an agent's request for `path_and_query` goes: under the base URL's path
/// (`https://api.example.com/v2` and `/items?x=1` give `https://api.example.com/v2/items?x=1`).
///
/// The base URL's path is a boundary: a dot segment (`..`, `.`, or their percent-encodings) or
/// an encoded slash, which the tool or a CDN in front of it would resolve above that path, is
/// refused rather than sent with the credential.
pub(crate) fn request_uri(base: &Uri, path_and_query: &str) -> Result<Uri, String> {
    if !path_and_query.starts_with('/') {
        return Err(format!(
            "the request target {path_and_query:?} is not a path; send /PATH to the tool's name"
        ));
    }
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path);
    if path.split('/').any(is_dot_segment) || contains_ignore_case(path, "%2f") {
        return Err(format!(
            "the path {path:?} has a dot segment or an encoded slash, which could leave the \
             tool's base path {:?}; send the path without them",
            base.path()
        ));
    }
    let prefix = base.path().trim_end_matches('/');
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(
        base.authority()
            .cloned()
            .ok_or_else(|| format!("the base URL {base} has no host"))?,
    );
    parts.path_and_query = Some(
        format!("{prefix}{path_and_query}")
            .parse()
            .map_err(|e| format!("bad request target {path_and_query:?}: {e}"))?,
    );
    Uri::from_parts(parts).map_err(|e| format!("bad request target {path_and_query:?}: {e}"))
}

/// `.` or `..`, written plainly or percent-encoded (`%2e`, `%2E`).
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

fn contains_ignore_case(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase().contains(needle)
}

/// What the agent is told when the tool could not be reached: the problem and its detail.
pub(crate) fn failure(
    service: &str,
    base: &Uri,
    error: &hyper_util::client::legacy::Error,
) -> (ProblemKind, String) {
    // The rustls error, if the handshake is what failed, sits deep in the source chain.
    let mut causes = Vec::new();
    let mut certificate = false;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(tls) = rustls_error(cause) {
            certificate |= matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.dedup();
    let why = if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    };
    if certificate {
        (
            ProblemKind::PeerNotTrusted,
            format!(
                "refused to send the request to {service} at {base}: its server certificate \
                 does not verify ({why}); set the external service's ca_file to the roots its \
                 certificate chains to, or check its url"
            ),
        )
    } else {
        (
            ProblemKind::UpstreamUnavailable,
            format!("{service} at {base} did not answer: {why}"),
        )
    }
}

/// The rustls error `error` is or wraps. An io::Error's `source` skips the error it wraps (and
/// the TLS stack wraps its errors in io::Errors twice), so those are unwrapped here.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut error = error;
    loop {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        error = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(base: &str, path: &str) -> String {
        request_uri(&base.parse().expect("base"), path)
            .expect("uri")
            .to_string()
    }

    #[test]
    fn the_agents_path_goes_under_the_base_urls_path() {
        assert_eq!(
            uri("https://api.example.com", "/items?x=1"),
            "https://api.example.com/items?x=1"
        );
        assert_eq!(
            uri("https://api.example.com/v2/", "/items"),
            "https://api.example.com/v2/items"
        );
        assert_eq!(
            uri("https://api.example.com:8443/v2", "/"),
            "https://api.example.com:8443/v2/"
        );
    }

    #[test]
    fn a_target_that_is_not_a_path_is_refused() {
        let base = "https://api.example.com".parse().expect("base");
        assert!(
            request_uri(&base, "*")
                .expect_err("refused")
                .contains("not a path")
        );
    }

    #[test]
    fn a_path_that_could_leave_the_base_path_is_refused() {
        let base = "https://api.example.com/repos/org/repo"
            .parse()
            .expect("base");
        for path in [
            "/../other",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/./x",
            "/a%2Fb",
            "/..",
        ] {
            let error = request_uri(&base, path).expect_err(path);
            assert!(error.contains("dot segment"), "{path}: {error}");
        }
        // Dots inside a segment, and in the query, are ordinary text.
        assert_eq!(
            request_uri(&base, "/v1.2/..x?next=../a")
                .expect("uri")
                .to_string(),
            "https://api.example.com/repos/org/repo/v1.2/..x?next=../a"
        );
    }
}
