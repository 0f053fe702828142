//! The admin listener: health, readiness, Prometheus metrics, identity status and the open
//! connections.
//!
//! It binds loopback by default: `/status` names every identity on the node.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use deputy_identity::{IdentityManager, IdentityState};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Every identity of the node.
    pub identities: Arc<IdentityManager>,
    /// Renders the metrics registry.
    pub metrics: PrometheusHandle,
    /// The trust domain, for `/status`.
    pub trust_domain: String,
    /// The serving policy, if one is configured.
    pub policy: Option<Arc<deputy_policy::Policy>>,
    /// The data path's open connections.
    pub connections: Arc<deputy_proxy::Registry>,
    /// The agents' Vault secrets, if `[vault]` is set.
    pub secrets: Option<Arc<deputy_secrets::SecretsManager>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/connections", get(connections))
        .route("/jwks.json", get(jwks))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.identities.is_ready() {
        return (StatusCode::OK, "ready\n".to_owned());
    }
    let waiting: Vec<String> = state
        .identities
        .statuses()
        .into_iter()
        .filter(|s| {
            !matches!(
                s.state,
                IdentityState::Available | IdentityState::SourceUnavailable
            )
        })
        .map(|s| {
            format!(
                "{} ({}): {:?}{}",
                s.name,
                s.spiffe_id,
                s.state,
                s.last_error.map(|e| format!(": {e}")).unwrap_or_default()
            )
        })
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready; waiting for SVIDs:\n{}\n", waiting.join("\n")),
    )
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    crate::logging::dropped_lines();
    crate::memory::record();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Serialize)]
struct StatusDocument {
    trust_domain: String,
    ready: bool,
    identities: Vec<deputy_identity::IdentityStatus>,
    /// `null` when no policy is configured.
    policy: Option<PolicyStatus>,
    /// Each agent's Vault login and secrets: states, expiries and Vault's reasons, never a
    /// value; empty without `[vault]`.
    secrets: Vec<deputy_secrets::AgentSecretsStatus>,
    /// The tasks holding credentials of their own (`per_task` secrets), until when.
    task_secrets: Vec<deputy_secrets::task::TaskStatus>,
    log: LogStatus,
    /// deputyd's Landlock sandbox; `null` when deputyd runs inside another program (`deputy
    /// dev`), which does not enter it.
    sandbox: Option<crate::sandbox::SandboxStatus>,
    /// The wall clock now, and its steps: links are judged by it.
    clock: crate::clock::ClockStatus,
}

#[derive(Serialize)]
struct LogStatus {
    /// Lines dropped because the log writer fell behind (the queue never blocks a call).
    dropped_lines: u64,
}

#[derive(Serialize)]
struct PolicyStatus {
    engine: &'static str,
    revision: String,
    /// Why the last reload failed (the previous revision keeps serving), if it did.
    last_error: Option<String>,
}

async fn status(State(state): State<AdminState>) -> Json<StatusDocument> {
    Json(StatusDocument {
        trust_domain: state.trust_domain.clone(),
        ready: state.identities.is_ready(),
        identities: state.identities.statuses(),
        policy: state.policy.as_ref().map(|p| PolicyStatus {
            engine: p.engine_kind(),
            revision: p.revision(),
            last_error: p.last_error(),
        }),
        secrets: state
            .secrets
            .as_ref()
            .map(|s| s.statuses())
            .unwrap_or_default(),
        task_secrets: state
            .secrets
            .as_ref()
            .map(|s| s.tasks().statuses())
            .unwrap_or_default(),
        sandbox: crate::sandbox::status().cloned(),
        clock: crate::clock::status(),
        log: LogStatus {
            dropped_lines: crate::logging::dropped_lines(),
        },
    })
}

#[derive(Serialize)]
struct ConnectionsDocument {
    connections: Vec<deputy_proxy::ConnectionInfo>,
}

/// Every open connection: which agent, which peer, its SVIDs' expiries, the tasks seen on it,
/// and whether (and why) it is being drained.
async fn connections(State(state): State<AdminState>) -> Json<ConnectionsDocument> {
    Json(ConnectionsDocument {
        connections: state.connections.list(),
    })
}

/// The trust domain's JWT keys, for Vault's `jwks_url` (served with `[vault]`): follows key
/// rotation, since it is read from the identity source's JWT bundle stream.
async fn jwks(State(state): State<AdminState>) -> impl IntoResponse {
    match state.identities.jwks().borrow().clone() {
        Some(document) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            document.to_string(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            "no JWT keys yet: they are served with [vault], once the identity source sent the \
             trust domain's JWT bundle\n"
                .to_owned(),
        ),
    }
}
