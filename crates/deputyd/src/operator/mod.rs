//! The operator API on a unix socket (`[approvals] socket`): approvals listed, shown, approved
//! and denied, and revocations made and listed, by the uids in `[approvals] operators`, each
//! caller told apart by SO_PEERCRED. Who decided or revoked is recorded as the uid and its user
//! name; nothing here is reachable from the network or from the admin listener.
//!
//! - `GET /v1/approvals`, `GET /v1/approvals/{id}`
//! - `POST /v1/approvals/{id}/approve`, `POST /v1/approvals/{id}/deny` (body `{"note": "..."}`,
//!   optional)
//! - `GET /v1/revocations`, `POST /v1/revocations` (`revocations.rs`)

mod revocations;

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deputy_state::{ApprovalError, Approvals};
use serde::Deserialize;
use tokio::net::UnixListener;

/// Who is on a connection of the socket.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    uid: Option<u32>,
}

impl Connected<axum::serve::IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        Self {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

#[derive(Debug, Clone)]
struct OperatorState {
    approvals: Arc<Approvals>,
    revoker: Arc<deputy_proxy::revocation::Revoker>,
    trail: Arc<deputy_audit::Trail>,
    operators: Arc<Vec<u32>>,
}

/// The operator socket's name in systemd's file descriptor store.
const SOCKET_NAME: &str = "operator";

/// Binds the socket at `path` (a stale one from a previous run is replaced; mode 0660), or
/// takes the one systemd kept over a restart.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(listener) = deputy_listen::take_unix(SOCKET_NAME, path) {
        return Ok(listener);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Only a socket left by an earlier run is replaced: a file the path names by mistake is
    // not deputyd's to delete.
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "[approvals] socket {} exists and is not a socket; point the setting at a path of \
             its own",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot check {}: {e}", path.display()),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind the operator socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    deputy_listen::keep(SOCKET_NAME, std::os::fd::AsFd::as_fd(&listener));
    Ok(listener)
}

/// Serves the operator API on `listener` until `stop`.
pub async fn serve(
    listener: UnixListener,
    approvals: Arc<Approvals>,
    revoker: Arc<deputy_proxy::revocation::Revoker>,
    trail: Arc<deputy_audit::Trail>,
    operators: Vec<u32>,
    stop: tokio_util::sync::CancellationToken,
) {
    let app = Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route(
            "/v1/revocations",
            get(revocations::list).post(revocations::revoke),
        )
        .with_state(OperatorState {
            approvals,
            revoker,
            trail,
            operators: Arc::new(operators),
        });
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Caller>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the operator socket failed");
    }
}

/// The operator, named for the record, or the refusal of a caller who is not one.
fn operator(state: &OperatorState, caller: Caller) -> Result<String, Refusal> {
    match caller.uid {
        Some(uid) if state.operators.contains(&uid) => {
            let name = nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name);
            Ok(match name {
                Some(name) => format!("uid {uid} ({name})"),
                None => format!("uid {uid}"),
            })
        }
        uid => {
            tracing::warn!(
                ?uid,
                "the operator socket refused a caller that is not an operator"
            );
            Err(Refusal(format!(
                "uid {} is not an operator of this deputyd; an operator lists it in \
                 [approvals] operators",
                uid.map_or_else(|| "(unknown)".to_owned(), |u| u.to_string()),
            )))
        }
    }
}

/// A caller who is not an operator: 403 with why.
struct Refusal(String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(StatusCode::FORBIDDEN, self.0)
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn refused(e: &ApprovalError) -> Response {
    let status = match e {
        ApprovalError::Unknown(_) => StatusCode::NOT_FOUND,
        ApprovalError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

async fn list(
    State(state): State<OperatorState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Response {
    if let Err(refusal) = operator(&state, caller) {
        return refusal.into_response();
    }
    match state.approvals.list() {
        Ok(all) => Json(serde_json::json!({ "approvals": all })).into_response(),
        Err(e) => refused(&e),
    }
}

async fn show(
    State(state): State<OperatorState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(refusal) = operator(&state, caller) {
        return refusal.into_response();
    }
    match state.approvals.get(&id) {
        Ok(approval) => Json(approval).into_response(),
        Err(e) => refused(&e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    note: Option<String>,
}

async fn approve(
    state: State<OperatorState>,
    caller: ConnectInfo<Caller>,
    id: UrlPath<String>,
    body: Option<Json<Decision>>,
) -> Response {
    decide(state, caller, id, body, true)
}

async fn deny(
    state: State<OperatorState>,
    caller: ConnectInfo<Caller>,
    id: UrlPath<String>,
    body: Option<Json<Decision>>,
) -> Response {
    decide(state, caller, id, body, false)
}

fn decide(
    State(state): State<OperatorState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    UrlPath(id): UrlPath<String>,
    body: Option<Json<Decision>>,
    approved: bool,
) -> Response {
    let by = match operator(&state, caller) {
        Ok(by) => by,
        Err(refusal) => return refusal.into_response(),
    };
    let note = body.and_then(|Json(d)| d.note);
    let now = crate::daemon::unix_now();
    match state
        .approvals
        .decide(&id, approved, &by, note.as_deref(), now)
    {
        Ok(approval) => {
            let recorded = state.trail.append(deputy_audit::Event::Approval {
                id: approval.id.clone(),
                decision: if approved { "approved" } else { "denied" }.to_owned(),
                by: by.clone(),
                agent: approval.binding.agent.clone(),
                service: approval.binding.service.clone(),
                task: approval.binding.task.clone().unwrap_or_default(),
                principal: approval.binding.principal.clone().unwrap_or_default(),
            });
            if let Err(e) = recorded {
                tracing::error!(error = %e, approval = %approval.id,
                    "an approval's audit record could not be written");
            }
            tracing::info!(approval = %approval.id, agent = %approval.binding.agent,
                service = %approval.binding.service, method = %approval.binding.method,
                path = %approval.binding.path, decided_by = %by,
                state = ?approval.state, "approval decided");
            Json(approval).into_response()
        }
        Err(e) => refused(&e),
    }
}
