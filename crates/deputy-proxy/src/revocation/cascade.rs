//! Sending a revocation on: to every node a revoked task went to from here, signed with this
//! node's own SVID and carrying the key this node gave that node for the task, over mTLS made
//! with the same SVID to the same inbound listener (and SNI) the task's calls went to.

use std::sync::{Arc, Mutex};
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
/// Longest a node waits for the nodes after it before it answers (less than its sender waits
/// for it); the cascade goes on in the background after that.
const RELAY_WAIT: Duration = Duration::from_secs(8);
/// Attempts per node: a node that restarts or drops the connection is tried again.
const ATTEMPTS: u32 = 3;
/// Rounds remembered: a round that comes back (a cycle, a retry) is not sent on again.
const ROUNDS: usize = 4096;
/// Revocations from other nodes being applied and sent on at once: past it a node is asked
/// to retry (it does, with a backoff), so that a peer cannot start sendings without bound.
pub(crate) const RELAYS_AT_ONCE: usize = 32;

/// What one node is told: signed by `iss` (this node's SPIFFE ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    /// The task, exactly: its id, principal and originator.
    pub(crate) task: String,
    pub(crate) principal: String,
    pub(crate) originator: String,
    /// The key the receiving node was given with the task.
    pub(crate) key: String,
    pub(crate) reason: String,
    /// Who revoked it first (an operator, on some node).
    pub(crate) by: String,
    pub(crate) until: i64,
    /// One operator's revocation, as it travels: a node sends a round on once.
    pub(crate) round: String,
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
    /// Nodes that applied it: that node and those after it, as far as they answered.
    pub reached: u64,
    /// Nodes after it that could not be told (or had not answered in time).
    pub failed: u64,
    /// Why it could not be told, or what it refused.
    pub error: Option<String>,
}

/// A revocation applied here, and how sending it on went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// What it did on this node.
    pub applied: super::Applied,
    /// The nodes it was sent on to (none when this round came here before: it was sent on
    /// then).
    pub relayed: Vec<Relayed>,
}

impl Outcome {
    /// What a node tells the node that sent it the revocation: counts, not where the task went
    /// from here (which is no business of the node before).
    pub(crate) fn summary(&self) -> serde_json::Value {
        let reached = self
            .relayed
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.reached));
        let failed = self.relayed.iter().fold(0u64, |n, r| {
            n.saturating_add(r.failed)
                .saturating_add(u64::from(r.status != Some(200)))
        });
        serde_json::json!({
            "revocation": self.applied.revocation.id,
            "already": self.applied.already,
            "calls_cut": self.applied.calls_cut,
            "reached": reached,
            "failed": failed,
        })
    }
}

/// Who asks for a revocation, and so whether it is sent on.
#[derive(Debug, Clone)]
pub enum Asked {
    /// An operator of this node: a new round, always sent on (a node that missed an earlier
    /// one is told again).
    ByOperator,
    /// The node before, in `round`: sent on unless this round came here before.
    ByNode {
        /// The round's id.
        round: String,
        /// One of the places for revocations from other nodes, held until the sending ends.
        place: Arc<tokio::sync::OwnedSemaphorePermit>,
    },
}

/// The rounds this node has sent on.
#[derive(Debug)]
pub(crate) struct Rounds(Mutex<lru::LruCache<String, ()>>);

impl Default for Rounds {
    fn default() -> Self {
        Self(Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(ROUNDS).unwrap_or(std::num::NonZeroUsize::MIN),
        )))
    }
}

impl Rounds {
    /// Whether `round` is new here (and remembers it).
    fn first_time(&self, round: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(round.to_owned(), ())
            .is_none()
    }
}

impl Revoker {
    /// Revokes `subject` here (as [`Revoker::revoke`], off the async workers: the record is
    /// committed to disk) and sends it on to the nodes its tasks went to, waiting a bounded
    /// time for their answers (the sending goes on in the background past it).
    pub async fn revoke_and_relay(
        self: &Arc<Self>,
        subject: deputy_state::Subject,
        reason: &str,
        by: &str,
        until: i64,
        asked: Asked,
    ) -> Result<Outcome, deputy_state::RevocationError> {
        let now = crate::unix(std::time::SystemTime::now());
        let relayed = matches!(asked, Asked::ByNode { .. });
        let revoke = || self.revoke(subject, reason, by, (now, until), relayed);
        let applied = if crate::may_block_in_place() {
            tokio::task::block_in_place(revoke)
        } else {
            revoke()
        }?;
        let (round, place) = match asked {
            Asked::ByOperator => (uuid::Uuid::now_v7().simple().to_string(), None),
            Asked::ByNode { round, place } => (round, Some(place)),
        };
        if !self.rounds.first_time(&round) {
            return Ok(Outcome {
                applied,
                relayed: Vec::new(),
            });
        }
        let revoker = self.clone();
        let revocation = applied.revocation.clone();
        let mut sending = tokio::spawn(async move {
            let relayed = revoker.cascade(&revocation, &round, now).await;
            drop(place);
            relayed
        });
        let relayed = match tokio::time::timeout(RELAY_WAIT, &mut sending).await {
            Ok(Ok(relayed)) => relayed,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sending a revocation on failed");
                vec![pending(
                    &applied,
                    "sending it on failed (see deputyd's log)".into(),
                )]
            }
            Err(_) => vec![pending(
                &applied,
                format!(
                    "the nodes after this one had not all answered within {RELAY_WAIT:?}; it is \
                     still being sent on (see deputyd's log)"
                ),
            )],
        };
        Ok(Outcome { applied, relayed })
    }

    /// Sends `revocation` to every node a task it covers went to from here, in `round`.
    async fn cascade(&self, revocation: &Revocation, round: &str, now: i64) -> Vec<Relayed> {
        let targets = self.hops.downstream_of(
            |task, facts| {
                let agents: Vec<&str> = facts.agents.iter().map(String::as_str).collect();
                revocation.covers(
                    &CallFacts {
                        task: Some(&task.id),
                        principal: Some(&task.principal),
                        originator: Some(&task.originator),
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
                .map(|(task, to)| relayed(&task.id, to, None, Err(why.clone())))
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
                task: task.id,
                principal: task.principal,
                originator: task.originator,
                key: to.key.clone(),
                reason: revocation.reason.clone(),
                by: revocation.by.clone(),
                until: revocation.until,
                round: round.to_owned(),
                iat: now,
                jti: uuid::Uuid::now_v7().simple().to_string(),
            };
            send(&material, &node.bundles, &signer, claims, to)
        });
        futures::future::join_all(sends).await
    }
}

/// A relay whose outcome is not known: counted as one node failed (its status is none).
fn pending(applied: &super::Applied, why: String) -> Relayed {
    Relayed {
        node: "-".into(),
        service: "-".into(),
        task: applied.revocation.subject.value().to_owned(),
        status: None,
        reached: 0,
        failed: 0,
        error: Some(why),
    }
}

/// How sending to `to` went: its status and answer, or why it could not be told.
fn relayed(
    task: &str,
    to: &Downstream,
    status: Option<u16>,
    answer: Result<serde_json::Value, String>,
) -> Relayed {
    let (reached, failed, error) = match (&answer, status) {
        (Ok(answer), Some(200)) => (
            answer["reached"].as_u64().unwrap_or(0).saturating_add(1),
            answer["failed"].as_u64().unwrap_or(0),
            None,
        ),
        (Ok(answer), _) => (
            0,
            0,
            Some(
                answer["error"]
                    .as_str()
                    .map_or_else(|| answer.to_string(), str::to_owned),
            ),
        ),
        (Err(why), _) => (0, 0, Some(why.clone())),
    };
    Relayed {
        node: to.address.clone(),
        service: to.server_name.clone(),
        task: task.to_owned(),
        status,
        reached,
        failed,
        error,
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
        Err(e) => return relayed(&claims.task, &to, None, Err(format!("cannot sign: {e}"))),
    };
    let mut failure = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        match tokio::time::timeout(ANSWER_WITHIN, post(material, bundles, &to, &compact)).await {
            // Busy with other nodes' revocations: asked to come back.
            Ok(Ok((503, answer))) => failure = format!("busy: {answer}"),
            Ok(Ok((status, answer))) => {
                tracing::info!(task = %claims.task, node = %to.address, service = %to.server_name,
                    status, "revocation sent on");
                return relayed(&claims.task, &to, Some(status), Ok(answer));
            }
            Ok(Err(e)) => failure = e,
            Err(_) => failure = format!("no answer within {ANSWER_WITHIN:?}"),
        }
        tracing::warn!(task = %claims.task, node = %to.address, attempt, error = %failure,
            "sending a revocation on failed");
    }
    relayed(&claims.task, &to, None, Err(failure))
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
