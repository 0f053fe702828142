//! Running the issuer: binding the two unix sockets, serving both APIs, rotating SVIDs and
//! reloading entries.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use spiffe::TrustDomain;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::authority::{Authority, AuthorityError};
use crate::delegated_api::DelegatedIdentityApi;
use crate::entries::{EntriesError, Registry};
use crate::h2_filter::filtered;
use crate::proto::spire::api::agent::delegatedidentity::v1::delegated_identity_server::DelegatedIdentityServer;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::svids::Issuer;
use crate::workload_api::WorkloadApi;

/// How long shutdown waits for in-flight calls before closing connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How to run an issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The trust domain it signs for.
    pub trust_domain: TrustDomain,
    /// Where the CA is kept; `None` keeps it in memory only (`--ephemeral`).
    pub data_dir: Option<PathBuf>,
    /// The Workload API socket.
    pub workload_socket: PathBuf,
    /// The Delegated Identity API (admin) socket.
    pub admin_socket: PathBuf,
    /// The entries file.
    pub entries: PathBuf,
}

/// Why an issuer cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// The CA cannot be created or loaded.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The entries file is unusable.
    #[error(transparent)]
    Entries(#[from] EntriesError),
    /// A socket cannot be bound.
    #[error("cannot listen on {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A running issuer. Dropping it does not stop it; call [`RunningIssuer::shutdown`].
#[derive(Debug)]
pub struct RunningIssuer {
    issuer: Arc<Issuer>,
    config: IssuerConfig,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningIssuer {
    /// Loads the CA and entries, binds both sockets and starts serving.
    pub async fn start(config: IssuerConfig) -> Result<Self, IssuerError> {
        let authority = match &config.data_dir {
            Some(dir) => Authority::persistent(&config.trust_domain, dir)?,
            None => Authority::ephemeral(&config.trust_domain)?,
        };
        let registry = Registry::load(&config.entries, &config.trust_domain)?;
        let issuer = Arc::new(Issuer::new(authority, registry));

        let workload_listener = bind(&config.workload_socket, 0o666)?;
        // Only the owner and group may reach the admin socket; delegates are then authorized by
        // attestation, as on a SPIRE agent.
        let admin_listener = bind(&config.admin_socket, 0o660)?;

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let workload = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(WorkloadApi::new(
                issuer.clone(),
            )))
            .serve_with_incoming_shutdown(
                filtered(workload_listener),
                cancel.clone().cancelled_owned(),
            );
        tasks.spawn(async move {
            if let Err(e) = workload.await {
                tracing::error!(error = %e, "Workload API server failed");
            }
        });

        let admin = tonic::transport::Server::builder()
            .add_service(DelegatedIdentityServer::new(DelegatedIdentityApi::new(
                issuer.clone(),
            )))
            .serve_with_incoming_shutdown(
                filtered(admin_listener),
                cancel.clone().cancelled_owned(),
            );
        tasks.spawn(async move {
            if let Err(e) = admin.await {
                tracing::error!(error = %e, "Delegated Identity API server failed");
            }
        });

        let rotation = issuer.clone().run_rotation();
        let stop = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = rotation => {}
                () = stop.cancelled() => {}
            }
        });

        tracing::info!(
            trust_domain = %config.trust_domain,
            workload_socket = %config.workload_socket.display(),
            admin_socket = %config.admin_socket.display(),
            entries = issuer.registry().entries.len(),
            "issuer serving"
        );
        Ok(Self {
            issuer,
            config,
            cancel,
            tasks,
        })
    }

    /// The issuer's state (CA, registry, SVIDs).
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// Re-reads the entries file. A bad file is refused with every problem listed and the
    /// previous entries keep serving.
    pub fn reload(&self) -> Result<usize, EntriesError> {
        let registry = Registry::load(&self.config.entries, &self.config.trust_domain)?;
        let count = registry.entries.len();
        self.issuer.replace_registry(registry);
        Ok(count)
    }

    /// Stops serving (ending open streams) and removes the sockets.
    pub async fn shutdown(mut self) {
        self.issuer.close();
        self.cancel.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
            self.tasks.abort_all();
        }
        for path in [&self.config.workload_socket, &self.config.admin_socket] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds a unix socket, replacing a stale socket file but never a live one.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, IssuerError> {
    let fail = |reason: String| IssuerError::Socket {
        path: path.to_owned(),
        reason,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(fail(
                "another process is serving on this socket; stop it or choose another path".into(),
            ));
        }
        std::fs::remove_file(path).map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(e.to_string()))?;
    Ok(listener)
}
