//! The identity manager: every identity deputyd holds, kept fresh in the background.
//!
//! - The daemon's own SVID and the trust bundles come from the SPIFFE Workload API through
//!   `spiffe::X509Source`, which reconnects by itself; a `SourceRecorder` turns its error
//!   reports into states, and a probe confirms the source is back when no new SVID says so.
//! - Each fronted agent's SVID comes from SPIRE's Delegated Identity API (`spire-api`),
//!   subscribed by the agent's selectors, one stream and one backoff per agent: one agent whose
//!   registration is missing does not hold the others back.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use spiffe::x509_source::{MetricsErrorKind, MetricsRecorder};
use spiffe::{SpiffeId, WorkloadApiClient, X509BundleSet, X509Source};
use spire_api::{DelegateAttestationRequest, DelegatedIdentityClient};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::selector::Selector;
use crate::state::{IdentityCell, IdentityHandle, IdentityState, IdentityStatus};

/// An agent deputyd fronts.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The agent's name in the config.
    pub name: String,
    /// The SPIFFE ID its SVID must carry.
    pub spiffe_id: SpiffeId,
    /// The selectors that describe it to SPIRE (or the embedded issuer).
    pub selectors: Vec<Selector>,
}

/// What the manager connects to and whom it fetches identities for.
#[derive(Debug, Clone)]
pub struct IdentityManagerConfig {
    /// Workload API endpoint, for example `unix:///run/spire/agent/public/api.sock`.
    pub workload_api: String,
    /// Delegated Identity API endpoint, for example `unix:///run/spire/agent/admin/api.sock`.
    pub delegated_identity_api: String,
    /// The agents on this node.
    pub agents: Vec<AgentIdentity>,
    /// Shortest wait before reconnecting to a source.
    pub min_backoff: Duration,
    /// Longest wait before reconnecting to a source.
    pub max_backoff: Duration,
    /// Follow the trust domain's JWT keys (for the JWKS document Vault reads), when set.
    pub jwks_of: Option<spiffe::TrustDomain>,
}

/// Handles to every identity, and the tasks that keep them fresh.
#[derive(Debug)]
pub struct IdentityManager {
    own: IdentityHandle,
    agents: Vec<(String, IdentityHandle)>,
    bundles: watch::Receiver<Option<Arc<X509BundleSet>>>,
    jwks: crate::jwt::Jwks,
    config: IdentityManagerConfig,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl IdentityManager {
    /// Starts fetching every identity. Returns at once; watch the handles for material.
    pub fn start(config: IdentityManagerConfig) -> Self {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut cells = Vec::new();

        let (own_cell, own) = IdentityCell::new(
            "deputyd",
            None,
            format!("workload_api {}", config.workload_api),
        );
        let (bundles_tx, bundles) = watch::channel(None);
        cells.push(own_cell.clone());
        tasks.spawn(run_own_identity(
            own_cell,
            config.clone(),
            bundles_tx,
            cancel.clone(),
        ));

        let mut agents = Vec::new();
        for agent in &config.agents {
            let (cell, handle) = IdentityCell::new(
                &agent.name,
                Some(agent.spiffe_id.clone()),
                format!(
                    "delegated_identity_api {} selectors [{}]",
                    config.delegated_identity_api,
                    agent
                        .selectors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            cells.push(cell.clone());
            agents.push((agent.name.clone(), handle));
            tasks.spawn(run_agent_identity(
                cell,
                agent.clone(),
                config.clone(),
                cancel.clone(),
            ));
        }

        tasks.spawn(watch_expiry(cells, cancel.clone()));
        let (jwks_tx, jwks) = watch::channel(None);
        if let Some(trust_domain) = config.jwks_of.clone() {
            tasks.spawn(crate::jwt::run_jwks(
                config.delegated_identity_api.clone(),
                trust_domain,
                jwks_tx,
                (config.min_backoff, config.max_backoff),
                cancel.clone(),
            ));
        }
        Self {
            own,
            agents,
            bundles,
            jwks,
            config,
            cancel,
            tasks,
        }
    }

    /// The trust domain's JWT keys as a JWKS document (`None` until they arrive, and always
    /// when `jwks_of` is not set).
    pub fn jwks(&self) -> crate::jwt::Jwks {
        self.jwks.clone()
    }

    /// A fresh JWT-SVID of the agent named `name`, for `audience` (each call asks the source:
    /// a JWT-SVID is short-lived and only used to log in).
    pub async fn fetch_jwt_svid(&self, name: &str, audience: &str) -> Result<String, String> {
        let agent = self
            .config
            .agents
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| format!("no agent {name:?} on this node"))?;
        crate::jwt::fetch_agent_jwt_svid(&self.config.delegated_identity_api, agent, audience).await
    }

    /// The daemon's own identity.
    pub fn own(&self) -> &IdentityHandle {
        &self.own
    }

    /// An agent's identity, by name.
    pub fn agent(&self, name: &str) -> Option<&IdentityHandle> {
        self.agents.iter().find(|(n, _)| n == name).map(|(_, h)| h)
    }

    /// Trust bundles (own trust domain and federated ones), from the Workload API.
    pub fn trust_bundles(&self) -> watch::Receiver<Option<Arc<X509BundleSet>>> {
        self.bundles.clone()
    }

    /// A snapshot of every identity, the daemon's first.
    pub fn statuses(&self) -> Vec<IdentityStatus> {
        std::iter::once(&self.own)
            .chain(self.agents.iter().map(|(_, h)| h))
            .map(|h| h.status.borrow().clone())
            .collect()
    }

    /// Ready when the daemon and every agent hold a valid SVID.
    pub fn is_ready(&self) -> bool {
        std::iter::once(&self.own)
            .chain(self.agents.iter().map(|(_, h)| h))
            .all(|h| h.material.borrow().is_some())
    }

    /// Resolves once the daemon and every agent hold a valid SVID ([`is_ready`](Self::is_ready)).
    pub async fn ready(&self) {
        for handle in std::iter::once(&self.own).chain(self.agents.iter().map(|(_, h)| h)) {
            // An error: the identity's task is gone (shutting down); nothing more to wait for.
            let _ = handle.material.clone().wait_for(Option::is_some).await;
        }
    }

    /// Stops every background task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Turns `X509Source` error reports into identity states.
struct SourceRecorder {
    cell: Arc<IdentityCell>,
    endpoint: String,
}

impl MetricsRecorder for SourceRecorder {
    fn record_update(&self) {}

    fn record_reconnect(&self) {}

    fn record_error(&self, kind: MetricsErrorKind) {
        crate::metrics::source_error("workload_api");
        let what = match kind {
            MetricsErrorKind::ClientCreation | MetricsErrorKind::StreamConnect => {
                "cannot connect; is the SPIRE agent (or deputy issuer) running?"
            }
            MetricsErrorKind::StreamError | MetricsErrorKind::StreamEnded => {
                "the stream broke; reconnecting"
            }
            MetricsErrorKind::InitialSyncFailed => {
                "no SVID yet; check that a registration entry matches deputyd's uid"
            }
            MetricsErrorKind::NoSuitableSvid => "the Workload API returned no usable SVID",
            MetricsErrorKind::UpdateRejected => "an update was rejected as invalid",
            _ => "source error",
        };
        self.cell
            .source_lost(format!("workload API {}: {what} ({kind:?})", self.endpoint));
    }
}

async fn run_own_identity(
    cell: Arc<IdentityCell>,
    config: IdentityManagerConfig,
    bundles: watch::Sender<Option<Arc<X509BundleSet>>>,
    cancel: CancellationToken,
) {
    let endpoint = config.workload_api.clone();
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let recorder = Arc::new(SourceRecorder {
        cell: cell.clone(),
        endpoint: endpoint.clone(),
    });
    // `build` retries transient failures by itself; it returns an error only for terminal ones
    // (a malformed endpoint), which retrying cannot fix but which must not kill the daemon.
    let source = loop {
        let build = X509Source::builder()
            .endpoint(&endpoint)
            .reconnect_backoff(config.min_backoff, config.max_backoff)
            .metrics(recorder.clone())
            .build();
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            result = build => result,
        };
        match result {
            Ok(source) => break source,
            Err(e) => {
                cell.source_lost(format!("workload API {endpoint}: {e}"));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    backoff.reset();
    let mut updates = source.updated();
    publish_own(&cell, &source, &bundles);
    loop {
        // While the source is down, probe it so that a return without a new SVID is noticed.
        let probe_in = if cell.state() == IdentityState::SourceUnavailable {
            backoff.next_delay()
        } else {
            backoff.reset();
            Duration::from_secs(3600)
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = updates.changed() => match changed {
                Ok(_) => publish_own(&cell, &source, &bundles),
                Err(e) => {
                    cell.source_lost(format!("workload API source closed: {e}"));
                    break;
                }
            },
            () = tokio::time::sleep(probe_in) => {
                if probe_workload_api(&endpoint).await {
                    cell.source_recovered();
                }
            }
        }
    }
    source.shutdown().await;
}

fn publish_own(
    cell: &IdentityCell,
    source: &X509Source,
    bundles: &watch::Sender<Option<Arc<X509BundleSet>>>,
) {
    match source.svid() {
        Ok(svid) => {
            if let Err(e) = cell.svid_received(&svid) {
                tracing::error!(error = %e, "deputyd's own SVID was refused");
            }
        }
        Err(e) => cell.source_lost(format!("workload API: {e}")),
    }
    if let Ok(set) = source.bundle_set() {
        bundles.send_replace(Some(set));
    }
}

async fn probe_workload_api(endpoint: &str) -> bool {
    let probe = async {
        let client = WorkloadApiClient::connect_to(endpoint).await.ok()?;
        client.fetch_x509_svid().await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), probe).await,
        Ok(Some(_))
    )
}

async fn run_agent_identity(
    cell: Arc<IdentityCell>,
    agent: AgentIdentity,
    config: IdentityManagerConfig,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    loop {
        let error = tokio::select! {
            () = cancel.cancelled() => return,
            error = stream_agent_svids(&cell, &agent, &config.delegated_identity_api, &mut backoff) => error,
        };
        crate::metrics::source_error("delegated_identity_api");
        tracing::warn!(agent = %agent.name, %error, "delegated identity stream failed");
        cell.source_lost(error);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Follows one agent's SVID stream until it fails; returns why it failed.
async fn stream_agent_svids(
    cell: &IdentityCell,
    agent: &AgentIdentity,
    endpoint: &str,
    backoff: &mut Backoff,
) -> String {
    let client = match DelegatedIdentityClient::connect_to(endpoint).await {
        Ok(client) => client,
        Err(e) => {
            return format!(
                "delegated identity API {endpoint}: cannot connect ({e}); is the SPIRE agent \
                 (or deputy issuer) running with its admin socket there?"
            );
        }
    };
    let selectors = agent.selectors.iter().map(Into::into).collect();
    let request = match DelegateAttestationRequest::for_selectors(selectors) {
        Ok(request) => request,
        Err(e) => return format!("agent {} has no usable selectors: {e}", agent.name),
    };
    let mut stream = match client.stream_x509_svids(request).await {
        Ok(stream) => stream,
        Err(e) => return format!("delegated identity API {endpoint}: {e}"),
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(svid) => {
                backoff.reset();
                if let Err(e) = cell.svid_received(&svid) {
                    tracing::error!(agent = %agent.name, error = %e, "SVID refused");
                }
            }
            Err(e) => return format!("delegated identity API {endpoint}: {e}"),
        }
    }
    format!("delegated identity API {endpoint}: the stream ended")
}

async fn watch_expiry(cells: Vec<Arc<IdentityCell>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                let now = OffsetDateTime::now_utc();
                for cell in &cells {
                    cell.check_expiry(now);
                }
            }
        }
    }
}
