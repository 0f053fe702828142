//! Sending a revocation on: to every node a revoked task went to from here, signed with this
//! node's own SVID and carrying the key this node gave that node for the task, over mTLS made
//! with the same SVID to the same inbound listener (and SNI) the task's calls went to.

use std::sync::Arc;
use std::time::Duration;

use deputy_delegation::LinkSigner;
use deputy_identity::TlsMaterial;
use deputy_state::{CallFacts, Revocation};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};

use super::Revoker;
use super::hops::Downstream;
use crate::tls::{Bundles, Material};

/// The `typ` of a revocation statement.
pub(crate) const TYP: &str = "deputy-revocation+jwt";
/// Where a node's inbound listener takes revocations (never delivered to an agent).
pub const PATH: &str = "/.well-known/deputy/revocation";
/// Largest revocation accepted: the claims and the signer's certificate chain.
pub(crate) const MAX_BYTES: usize = 64 * 1024;
/// Longest wait for one node's answer (which includes its own cascade to the nodes after it).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Attempts per node: a node that restarts or drops the connection is tried again.
const ATTEMPTS: u32 = 3;

/// What one node is told: signed by `iss` (this node's SPIFFE ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) task: String,
    /// The key the receiving node was given with the task.
    pub(crate) key: String,
    pub(crate) reason: String,
    /// Who revoked it first (an operator, on some node).
    pub(crate) by: String,
    pub(crate) until: i64,
    pub(crate) iat: i64,
    pub(crate) jti: String,
}

/// This node's own identity, for sending revocations on.
#[derive(Debug, Clone)]
pub(crate) struct NodeIdentity {
    pub(crate) material: Material,
    pub(crate) bundles: Bundles,
}

/// How sending a revocation to one node went.
#[derive(Debug, Clone, Serialize)]
pub struct Relayed {
    /// The node's inbound listener.
    pub node: String,
    /// The service the task's calls reached there by.
    pub service: String,
    /// The task.
    pub task: String,
    /// Its HTTP status, if it answered.
    pub status: Option<u16>,
    /// Its answer (what it revoked and relayed in turn), or why it could not be told.
    pub answer: serde_json::Value,
}

/// A revocation applied here, and how sending it on went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// What it did on this node.
    pub applied: super::Applied,
    /// The nodes it was sent on to (none when the task was revoked here before: it was sent
    /// on then).
    pub relayed: Vec<Relayed>,
}

impl Revoker {
    /// Revokes `subject` here (as [`Revoker::revoke`], off the async workers: the record is
    /// committed to disk) and sends it on to the nodes its tasks went to. `always_relay`: an
    /// operator's revocation is sent on even when it was in force already (a node that missed
    /// it is told again); one from another node only the first time (a cycle ends).
    pub async fn revoke_and_relay(
        &self,
        subject: deputy_state::Subject,
        reason: &str,
        by: &str,
        until: i64,
        always_relay: bool,
    ) -> Result<Outcome, deputy_state::RevocationError> {
        let now = crate::unix(std::time::SystemTime::now());
        let revoke = || self.revoke(subject, reason, by, now, until);
        let applied = if crate::may_block_in_place() {
            tokio::task::block_in_place(revoke)
        } else {
            revoke()
        }?;
        let relayed = if always_relay || !applied.already {
            self.cascade(&applied.revocation, now).await
        } else {
            Vec::new()
        };
        Ok(Outcome { applied, relayed })
    }

    /// Sends `revocation` to every node a task it covers went to from here; waits for each
    /// node's answer (which includes the nodes after it), bounded.
    pub async fn cascade(&self, revocation: &Revocation, now: i64) -> Vec<Relayed> {
        let targets = self.hops.downstream_of(
            |task, facts| {
                let agents: Vec<&str> = facts.agents.iter().map(String::as_str).collect();
                revocation.covers(
                    &CallFacts {
                        task: Some(task),
                        principal: Some(&facts.principal),
                        agents: &agents,
                    },
                    now,
                )
            },
            now,
        );
        if targets.is_empty() {
            return Vec::new();
        }
        let unsent = |why: String| {
            tracing::error!(revocation = %revocation.id, %why, "a revocation was not sent on");
            targets
                .iter()
                .map(|(task, to)| relayed(task, to, None, why.clone().into()))
                .collect()
        };
        let Some(node) = &self.node else {
            return unsent("this deputyd has no identity of its own to sign with".into());
        };
        let Some(material) = node.material.borrow().clone() else {
            return unsent(
                "this deputyd holds no SVID of its own now (is the Workload API serving it?)"
                    .into(),
            );
        };
        let signer = match LinkSigner::new(&material.signing.chain_der, &material.signing.key_pkcs8)
        {
            Ok(signer) => Arc::new(signer),
            Err(e) => return unsent(format!("this deputyd's SVID cannot sign: {e}")),
        };
        let sends = targets.into_iter().map(|(task, to)| {
            let claims = Claims {
                iss: signer.spiffe_id().to_string(),
                task,
                key: to.key.clone(),
                reason: revocation.reason.clone(),
                by: revocation.by.clone(),
                until: revocation.until,
                iat: now,
                jti: uuid::Uuid::now_v7().simple().to_string(),
            };
            send(&material, &node.bundles, &signer, claims, to)
        });
        futures::future::join_all(sends).await
    }
}

fn relayed(task: &str, to: &Downstream, status: Option<u16>, answer: serde_json::Value) -> Relayed {
    Relayed {
        node: to.address.clone(),
        service: to.server_name.clone(),
        task: task.to_owned(),
        status,
        answer,
    }
}

async fn send(
    material: &TlsMaterial,
    bundles: &Bundles,
    signer: &LinkSigner,
    claims: Claims,
    to: Downstream,
) -> Relayed {
    let compact = match signer.sign_document(TYP, &claims) {
        Ok(compact) => compact,
        Err(e) => return relayed(&claims.task, &to, None, format!("cannot sign: {e}").into()),
    };
    let mut failure = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        match tokio::time::timeout(ANSWER_WITHIN, post(material, bundles, &to, &compact)).await {
            Ok(Ok((status, answer))) => {
                tracing::info!(task = %claims.task, node = %to.address, service = %to.server_name,
                    status, "revocation sent on");
                return relayed(&claims.task, &to, Some(status), answer);
            }
            Ok(Err(e)) => failure = e,
            Err(_) => failure = format!("no answer within {ANSWER_WITHIN:?}"),
        }
        tracing::warn!(task = %claims.task, node = %to.address, attempt, error = %failure,
            "sending a revocation on failed");
    }
    relayed(&claims.task, &to, None, failure.into())
}

/// POSTs `compact` to `to`'s revocation path: its status and JSON answer.
async fn post(
    material: &TlsMaterial,
    bundles: &Bundles,
    to: &Downstream,
    compact: &str,
) -> Result<(u16, serde_json::Value), String> {
    let config = crate::tls::client_config(material, to.spiffe_id.clone(), bundles.clone())
        .map_err(|e| format!("cannot build the TLS client: {e}"))?;
    let server_name = ServerName::try_from(to.server_name.clone())
        .map_err(|_| format!("{:?} cannot be sent as SNI", to.server_name))?;
    let tcp = tokio::net::TcpStream::connect(&to.address)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", to.address))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS with {} failed: {e}", to.address))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, crate::body::Body>(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .map_err(|e| format!("HTTP/2 with {} failed: {e}", to.address))?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("https://{}{PATH}", to.server_name))
        .header(http::header::CONTENT_TYPE, "application/jwt")
        .body(crate::body::full(bytes::Bytes::from(compact.to_owned())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{} did not answer: {e}", to.address))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("the answer of {} failed: {e}", to.address))?
        .to_bytes();
    let answer = serde_json::from_slice(&body)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into());
    Ok((status, answer))
}
