//! Pure decisions of the data path: which service a request is for, and which headers cross.
//! No I/O here; the listeners call these and act on the result.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Uri};

use crate::config::Service;
use crate::problem::ProblemKind;

/// The header carrying the delegation chain: the one `Deputy-*` header a peer may send (it is
/// verified, then replaced by the facts it proves).
pub const DELEGATION: &str = "deputy-delegation";
/// The verified SPIFFE ID of the calling peer, set by the receiving deputyd only; on the answer
/// of an A2A service, that of the agent that answered, set by the calling deputyd only.
pub const PEER_ID: &str = "deputy-peer-id";
/// The request's id: a join key of both ends' logs, not a fact. The receiving deputyd takes a
/// peer's only when it is a UUID, and the agent hears it from its own deputyd.
pub const REQUEST_ID: &str = "deputy-request-id";

/// The request id a peer sent, if it is one (a UUID, written as deputyd writes them).
pub fn peer_request_id(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(REQUEST_ID).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let id = uuid::Uuid::try_parse(value).ok()?.to_string();
    (id == value).then_some(id)
}

/// Services by name.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_name: HashMap<String, Arc<Service>>,
}

impl Routes {
    /// Routes to `services`.
    pub fn new(services: &[Service]) -> Self {
        Self {
            by_name: services
                .iter()
                .map(|s| (s.name.clone(), Arc::new(s.clone())))
                .collect(),
        }
    }

    /// The service a request is for: the host of an absolute-form URI (what HTTP proxies
    /// receive, so `HTTP_PROXY` works), else the Host header (or HTTP/2 `:authority`). A port
    /// is ignored: the service name alone picks the route.
    pub fn target_of<B>(
        &self,
        request: &Request<B>,
    ) -> Result<Arc<Service>, (ProblemKind, String)> {
        let host = request
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| strip_port(h).to_owned())
            })
            .ok_or_else(|| {
                (
                    ProblemKind::MissingTarget,
                    "the request names no service: send it to http://SERVICE/... (Host header or \
                     absolute URI)"
                        .to_owned(),
                )
            })?;
        let host = host.to_ascii_lowercase();
        self.by_name.get(&host).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.sort_unstable();
            (
                ProblemKind::UnknownService,
                format!(
                    "no service named {host:?} is configured on this node; known services: {}. \
                     Add a [[service]] to deputyd's config to reach it",
                    known.join(", ")
                ),
            )
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those the Connection header
/// names: they describe one connection, not the message.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Removes every `Deputy-*` header, and every `Deputy_*` one: CGI-style servers (WSGI's
/// `HTTP_DEPUTY_PRINCIPAL`) read `_` and `-` alike, so an underscore spelling would pass for
/// the fact.
pub fn strip_all_deputy_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with("deputy-") || name.starts_with("deputy_")
        })
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The URI of a request as forwarded to `base` (`http://127.0.0.1:8081`): its path and query
/// on the upstream's scheme and authority.
pub fn upstream_uri(base: &Uri, request: &Uri) -> Result<Uri, http::Error> {
    let path = request.path_and_query().map_or("/", |p| p.as_str());
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    let base_path = base.path().trim_end_matches('/');
    parts.path_and_query = Some(format!("{base_path}{path}").parse()?);
    Ok(Uri::from_parts(parts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_request_id_is_taken_only_as_a_uuid() {
        let headers = |values: &[&str]| {
            let mut map = http::HeaderMap::new();
            for v in values {
                map.append(REQUEST_ID, v.parse().expect("value"));
            }
            map
        };
        let id = "019a8f9e-1c2b-7d3e-8f4a-5b6c7d8e9f01";
        assert_eq!(peer_request_id(&headers(&[id])), Some(id.to_owned()));
        for refused in [
            &[][..],
            &["not-a-uuid"],
            &["019A8F9E-1C2B-7D3E-8F4A-5B6C7D8E9F01"],
            &["{019a8f9e-1c2b-7d3e-8f4a-5b6c7d8e9f01}"],
            &[id, id],
            &["019a8f9e-1c2b-7d3e-8f4a-5b6c7d8e9f01 forged=1"],
        ] {
            assert_eq!(peer_request_id(&headers(refused)), None, "{refused:?}");
        }
    }

    fn routes() -> Routes {
        Routes::new(&[Service::mesh(
            "billing",
            "spiffe://example.org/agent/billing".parse().expect("id"),
            "127.0.0.1:15008",
        )])
    }

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn picks_the_service_from_the_uri_or_the_host() {
        let routes = routes();
        for (uri, host) in [
            ("http://billing/invoices", None),
            ("http://billing:8080/invoices", None),
            ("/invoices", Some("billing")),
            ("/invoices", Some("billing:80")),
            ("/invoices", Some("BILLING")),
            // Seed 1's routing convention: the scheme names no protocol, the host the service.
            ("mcp://billing/tools/call", None),
        ] {
            let service = routes.target_of(&request(uri, host)).expect(uri);
            assert_eq!(service.name, "billing", "{uri} {host:?}");
        }
    }

    #[test]
    fn refuses_unknown_and_missing_targets_with_their_kind() {
        let routes = routes();
        let (kind, detail) = routes
            .target_of(&request("/x", Some("payments")))
            .expect_err("unknown");
        assert_eq!(kind, ProblemKind::UnknownService);
        assert!(detail.contains("known services: billing"), "{detail}");
        let (kind, _) = routes.target_of(&request("/x", None)).expect_err("missing");
        assert_eq!(kind, ProblemKind::MissingTarget);
    }

    #[test]
    fn deputy_headers_are_removed_and_others_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "deputy-peer-id",
            "spiffe://evil/forged".parse().expect("value"),
        );
        headers.insert("Deputy-Principal", "user:mallory".parse().expect("value"));
        headers.insert("deputy-delegation", "a.b.c".parse().expect("value"));
        headers.insert("x-other", "kept".parse().expect("value"));
        headers.insert("deputy_principal", "user:mallory".parse().expect("value"));
        strip_all_deputy_headers(&mut headers);
        assert!(headers.get("deputy_principal").is_none());
        assert!(headers.get(PEER_ID).is_none());
        assert!(headers.get("deputy-principal").is_none());
        assert!(headers.get(DELEGATION).is_none());
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().expect("v"),
        );
        headers.insert("x-secret-hop", "1".parse().expect("v"));
        headers.insert("keep-alive", "timeout=5".parse().expect("v"));
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().expect("v"));
        headers.insert(header::UPGRADE, "h2c".parse().expect("v"));
        headers.insert("x-end-to-end", "1".parse().expect("v"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-end-to-end"));
    }

    #[test]
    fn upstream_uris_keep_path_and_query() {
        let base: Uri = "http://127.0.0.1:8081".parse().expect("uri");
        let uri =
            upstream_uri(&base, &"https://billing/a/b?x=1".parse().expect("uri")).expect("uri");
        assert_eq!(uri.to_string(), "http://127.0.0.1:8081/a/b?x=1");
        let prefixed: Uri = "http://127.0.0.1:8081/api/".parse().expect("uri");
        let uri = upstream_uri(&prefixed, &"/v1".parse().expect("uri")).expect("uri");
        assert_eq!(uri.to_string(), "http://127.0.0.1:8081/api/v1");
    }
}
