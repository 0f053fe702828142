//! The approval webhook (`[approvals] webhook`): when a call is held for approval, deputyd tells
//! a person (a chat hook, a paging service) with a JSON POST, off the call's path. What it sends
//! names the call (agent, service, method, path, principal, task, reason, the approval's id and
//! the command that decides it), never its query or body, which may carry secrets.

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
#[derive(Clone)]
pub struct ApprovalWebhook {
    url: Uri,
    /// `scheme://host:port`, for logs: chat webhooks carry their secret in the path.
    shown: String,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl std::fmt::Debug for ApprovalWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalWebhook")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl ApprovalWebhook {
    /// A webhook at `url` (https, or http to a loopback host), server certificates checked
    /// against the system's roots.
    pub fn new(url: Uri) -> Result<Self, String> {
        let shown = format!(
            "{}://{}",
            url.scheme_str().unwrap_or("?"),
            url.authority().map_or("?", |a| a.as_str())
        );
        // http (to loopback only, as the configuration allows) needs no roots.
        let roots = match crate::external::system_roots() {
            Some(roots) => roots,
            None if url.scheme_str() == Some("https") => {
                return Err(
                    "this host has no system CA roots to check the webhook's certificate with; \
                     install them (Debian: ca-certificates)"
                        .into(),
                );
            }
            None => rustls::RootCertStore::empty(),
        };
        let tls = crate::external::tls_client(roots)?;
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
            shown,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Announces a pending approval, in the background: a webhook that is down or slow is
    /// logged, never felt by the call.
    pub(crate) fn announce(&self, approval: &deputy_state::Approval) {
        let b = &approval.binding;
        // The chat line is read by a person: nothing an agent chose may format it, link from it
        // or pass for an instruction (its values go through `plain`, quoted).
        let message = serde_json::json!({
            "text": format!(
                "Approval {} pending: agent {} asks to {} {:?} on {} for {:?}, because {:?}. \
                 Look: deputy approvals show {}; decide: deputy approvals approve {} (or deny)",
                approval.id,
                plain(&b.agent),
                plain(&b.method),
                plain(&b.path),
                plain(&b.service),
                plain(b.principal.as_deref().unwrap_or("no principal")),
                plain(&approval.reason),
                approval.id,
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
        let (client, url, id) = (self.client.clone(), self.shown.clone(), approval.id.clone());
        tokio::spawn(async move {
            let request = match request {
                Ok(request) => request,
                Err(e) => {
                    tracing::warn!(approval = %id, error = %e, "the approval announcement could not be built");
                    return;
                }
            };
            match tokio::time::timeout(TIMEOUT, client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => {
                    tracing::info!(approval = %id, webhook = %url, "approval announced");
                }
                Ok(Ok(response)) => tracing::warn!(approval = %id, webhook = %url,
                    status = response.status().as_u16(), "the approval webhook refused the announcement"),
                Ok(Err(e)) => {
                    // hyper-util's error says "client error (Connect)"; the cause is below it.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        why.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    tracing::warn!(approval = %id, webhook = %url, error = %why,
                        "the approval webhook could not be reached");
                }
                Err(_) => tracing::warn!(approval = %id, webhook = %url,
                    "the approval webhook did not answer in time"),
            }
        });
    }
}

/// `text` as plain words for a chat line: printable ASCII without the characters chat formats
/// (markup, links, code), at most 200 characters.
fn plain(text: &str) -> String {
    const FORMATTING: &str = "`<>|*_~[]()#\\";
    text.chars()
        .take(200)
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !FORMATTING.contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn what_an_agent_chose_cannot_format_the_chat_line() {
        assert_eq!(plain("user:alice@example.org"), "user:alice@example.org");
        assert_eq!(
            plain("<https://evil|Approve> `deputy approvals approve apr_x`\n\u{202e}"),
            "?https://evil?Approve? ?deputy approvals approve apr?x???"
        );
        assert_eq!(plain(&"x".repeat(500)).len(), 200);
    }
}
