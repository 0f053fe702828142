//! The approval webhook (`[approvals] webhook`): when a call is held for approval, deputyd tells
//! a person (a chat hook, a paging service) with a JSON POST, off the call's path. What it sends
//! names the call (agent, service, method, path, principal, task, reason, the approval's id and
//! the command that decides it), never its query or body, which may carry secrets.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, full};

/// How long a notification may take; it never holds a call.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where pending approvals are announced.
#[derive(Debug, Clone)]
pub struct ApprovalWebhook {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl ApprovalWebhook {
    /// A webhook at `url` (https, or http to a loopback host), server certificates checked
    /// against the system's roots.
    pub fn new(url: Uri) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Announces a pending approval, in the background: a webhook that is down or slow is
    /// logged, never felt by the call.
    pub(crate) fn announce(&self, approval: &deputy_state::Approval) {
        let b = &approval.binding;
        let message = serde_json::json!({
            "text": format!(
                "{} asks to {} {} on {} for {}: {} (approve with `deputy approvals approve {}`)",
                b.agent,
                b.method,
                b.path,
                b.service,
                b.principal.as_deref().unwrap_or("no principal"),
                approval.reason,
                approval.id
            ),
            "approval_id": approval.id,
            "agent": b.agent,
            "service": b.service,
            "method": b.method,
            "path": b.path,
            "principal": b.principal,
            "task": b.task,
            "reason": approval.reason,
            "expires_at": approval.expires_at,
            "decide": format!("deputy approvals approve {}", approval.id),
        });
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "deputyd")
            .body(full(message.to_string().into()));
        let (client, url, id) = (self.client.clone(), self.url.clone(), approval.id.clone());
        tokio::spawn(async move {
            let Ok(request) = request else { return };
            match tokio::time::timeout(TIMEOUT, client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => {
                    tracing::info!(approval = %id, webhook = %url, "approval announced");
                }
                Ok(Ok(response)) => tracing::warn!(approval = %id, webhook = %url,
                    status = response.status().as_u16(), "the approval webhook refused the announcement"),
                Ok(Err(e)) => tracing::warn!(approval = %id, webhook = %url, error = %e,
                    "the approval webhook could not be reached"),
                Err(_) => tracing::warn!(approval = %id, webhook = %url,
                    "the approval webhook did not answer in time"),
            }
        });
    }
}
