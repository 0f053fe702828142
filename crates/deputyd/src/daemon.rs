//! The daemon's wiring: identities, admin listener, systemd, and an orderly stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use deputy_identity::{IdentityManager, IdentityState};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, router};
use crate::config::Config;
use crate::policy_config::PolicySettings;
use crate::systemd;

/// A running deputyd.
#[derive(Debug)]
pub struct Daemon {
    identities: Arc<IdentityManager>,
    policy: Option<ServingPolicy>,
    proxy: Option<deputy_proxy::Proxy>,
    /// The agents' Vault secrets, if `[vault]` is set.
    secrets: Option<Arc<deputy_secrets::SecretsManager>>,
    /// The agents' PostgreSQL auth proxies.
    postgres: Option<deputy_pgproxy::PgProxies>,
    /// The agents' secrets as they started (a SIGHUP that changes them is told to restart).
    secrets_started: Vec<deputy_secrets::AgentSecrets>,
    /// The agents the data path serves (a reload may remove some).
    agents: Vec<String>,
    admin_addr: SocketAddr,
    /// The node's audit trail.
    trail: Arc<deputy_audit::Trail>,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// The policy deputyd serves, and what of its settings SIGHUP may change.
#[derive(Debug)]
struct ServingPolicy {
    policy: Arc<deputy_policy::Policy>,
    facts: Arc<deputy_proxy::FactsCell>,
    /// The settings it started with.
    settings: PolicySettings,
}

/// The process-wide Prometheus recorder (the `metrics` facade allows one per process).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            deputy_identity::metrics::describe();
            crate::memory::describe();
            handle
        })
        .clone()
}

impl Daemon {
    /// Starts fetching identities and serving the admin listener.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let metrics = metrics_handle();
        let listener = deputy_listen::tcp("admin", config.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the admin endpoints; change [admin] listen",
                    config.admin_listen
                )
            })?;
        let admin_addr = listener.local_addr()?;
        let mut proxy_config = config.proxy.clone();
        for agent in &config.keys_exposed {
            tracing::warn!("{}", crate::agent_config::key_exposure_warning(agent));
        }
        let own_uid = nix::unistd::geteuid().as_raw();
        for agent in config
            .proxy
            .agents
            .iter()
            .filter(|a| a.uids.contains(&own_uid))
        {
            // Fine on a developer's machine (`deputy dev`), not in production: deputyd's uid
            // is its identity source's authorized delegate.
            tracing::warn!(agent = %agent.name, uid = own_uid,
                "the agent's uids include deputyd's own: a process of that uid can reach the \
                 Delegated Identity API as deputyd does and hold every agent's key; run agents \
                 as users of their own");
        }
        let policy = match &config.policy {
            None => {
                let allowed = &config.proxy.without_policy.allow_peers;
                if config.proxy.inbound.is_some() && allowed.is_empty() {
                    tracing::warn!(
                        "no [policy] and no [inbound] allow_peers: every inbound call will be \
                         refused; configure [policy] to decide every call"
                    );
                } else if config.proxy.inbound.is_some() {
                    tracing::warn!(allow_peers = ?allowed,
                        "no [policy]: inbound calls are served from the allowed peers only, on \
                         no other check; configure [policy] to decide every call");
                }
                None
            }
            Some(settings) => {
                let (policy, enforcement) = settings.load().with_context(|| {
                    format!(
                        "cannot load the policy ({}); deputyd does not start without a policy \
                         it can enforce (check it with `deputy policy check`)",
                        settings.source
                    )
                })?;
                tracing::info!(source = %settings.source, engine = policy.engine_kind(),
                    revision = %policy.revision(), "policy loaded");
                let facts = enforcement.facts.clone();
                proxy_config.policy = Some(enforcement);
                Some(ServingPolicy {
                    policy,
                    facts,
                    settings: settings.clone(),
                })
            }
        };
        let identities = Arc::new(IdentityManager::start(config.identity.clone()));
        let secrets = match &config.secrets {
            Some(settings) => {
                let backoff = (config.identity.min_backoff, config.identity.max_backoff);
                let manager = Arc::new(crate::secrets::start(settings, &identities, backoff)?);
                proxy_config.credentials = manager.store().clone();
                proxy_config.task_secrets = Some(manager.tasks().clone());
                Some(manager)
            }
            None => None,
        };
        let state = deputy_state::State::open(&config.state_dir)?;
        let budgets = deputy_state::BudgetLedger::open(
            &state,
            config.proxy.delegation.max_budgeted_links,
            unix_now(),
        )?;
        let approvals = Arc::new(deputy_state::Approvals::open(
            &state,
            config.approvals.max_pending,
            unix_now(),
        )?);
        proxy_config.approvals = Some(approvals.clone());
        proxy_config.approval_webhook = config
            .approvals
            .webhook
            .clone()
            .map(deputy_proxy::ApprovalWebhook::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("cannot make the approval webhook's client: {e}"))?;
        let revocations = Arc::new(deputy_state::Revocations::open(&state, unix_now())?);
        proxy_config.revocations = Some(revocations);
        let trail = deputy_audit::Trail::open(
            &config.audit.dir,
            config.audit.on_failure,
            config.audit.checkpoints,
        )?;
        trail.set_signer(Arc::new(NodeSigner(identities.own().material.clone())));
        trail.set_rotation(config.audit.rotate_bytes);
        if let Some(collector) = config.audit.syslog {
            trail.set_export(collector).map_err(|e| {
                anyhow::anyhow!("cannot send the audit trail to {collector} ([audit] syslog): {e}")
            })?;
        }
        tracing::info!(dir = %config.audit.dir.display(), on_failure = ?config.audit.on_failure,
            "audit trail opened");
        proxy_config.audit = Some(trail.clone());
        // A day of first responses, 10,000 at most: retries come within minutes.
        proxy_config.idempotency = Some(Arc::new(deputy_state::IdempotentResponses::open(
            &state,
            10_000,
            24 * 3600,
        )?));
        tracing::info!(state = %state.path().display(), budgeted_links = budgets.len(),
            "state opened");
        // Bound before the data path serves: a call held for approval names where to decide it.
        let operator_socket = config
            .approvals
            .socket
            .as_deref()
            .map(crate::operator::bind)
            .transpose()?;
        wait_for_identities_after_a_handover(&identities).await;
        let proxy =
            deputy_proxy::Proxy::start(proxy_config, &identities, Arc::new(budgets)).await?;
        if let Some(inbound) = proxy.inbound_addr() {
            tracing::info!(%inbound, "inbound mTLS listener bound");
        }
        for (agent, addr) in proxy.outbound_addrs() {
            tracing::info!(%agent, outbound = %show_listen(addr), "outbound listener bound");
        }
        let postgres = match &secrets {
            Some(manager) if !config.postgres.is_empty() => {
                let credentials = deputy_pgproxy::Credentials {
                    store: manager.store().clone(),
                    // A session names its task by the context handle this node delivered.
                    tasks: Some((manager.tasks().clone(), proxy.task_contexts())),
                };
                let proxies =
                    deputy_pgproxy::PgProxies::start(config.postgres.clone(), credentials).await?;
                for (proxy, bound) in proxies.bound() {
                    tracing::info!(agent = %proxy.agent, database = %proxy.database,
                        upstream = %proxy.upstream, postgres = %show_listen(bound),
                        "PostgreSQL proxy bound");
                }
                Some(proxies)
            }
            _ => None,
        };
        let cancel = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();

        let app = router(AdminState {
            identities: identities.clone(),
            metrics,
            trust_domain: config.trust_domain.to_string(),
            policy: policy.as_ref().map(|p| p.policy.clone()),
            connections: proxy.connections(),
            secrets: secrets.clone(),
        });
        let stop = cancel.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        if let (Some(listener), Some(path)) = (operator_socket, &config.approvals.socket) {
            tracing::info!(socket = %path.display(), operators = ?config.approvals.operators,
                "operator socket bound");
            tasks.spawn(crate::operator::serve(
                listener,
                approvals,
                proxy.revoker(),
                trail.clone(),
                config.approvals.operators.clone(),
                cancel.clone(),
            ));
        }
        tasks.spawn(report_to_systemd(identities.clone(), cancel.clone()));
        tasks.spawn(crate::clock::watch(
            config.proxy.delegation.verify.skew,
            cancel.clone(),
        ));
        tasks.spawn(checkpoint_when_due(trail.clone(), cancel.clone()));
        tasks.spawn(metrics_upkeep(metrics_handle(), cancel.clone()));
        if let Some(manager) = &secrets {
            manager
                .tasks()
                .set_journal(crate::audit_events::task_journal(trail.clone()));
        }
        tasks.spawn(crate::audit_events::record_changes(
            trail.clone(),
            identities.clone(),
            secrets.clone(),
            policy.as_ref().map(|p| p.policy.clone()),
            cancel.clone(),
        ));
        if let Some(serving) = &policy {
            let stop = cancel.clone();
            let interval = serving.settings.watch_interval;
            tasks.spawn(
                serving
                    .policy
                    .clone()
                    .watch(interval, stop.cancelled_owned()),
            );
        }

        // Every listener is bound: a socket systemd kept for one the configuration no longer
        // names is closed, so that its address refuses connections instead of queueing them.
        deputy_listen::close_unclaimed();
        tracing::info!(admin = %admin_addr, agents = config.identity.agents.len(), "deputyd started");
        Ok(Self {
            identities,
            policy,
            proxy: Some(proxy),
            secrets,
            postgres,
            secrets_started: config
                .secrets
                .as_ref()
                .map(|s| s.agents.clone())
                .unwrap_or_default(),
            agents: config.proxy.agents.iter().map(|a| a.name.clone()).collect(),
            admin_addr,
            trail,
            cancel,
            tasks,
        })
    }

    /// Where the admin listener is bound (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The identity manager.
    pub fn identities(&self) -> &Arc<IdentityManager> {
        &self.identities
    }

    /// SIGHUP: loads the policy files again and puts in force the `[policy]` attributes, time
    /// zone and evaluation time limit of `settings` (the configuration file as it reads now;
    /// `None` when it no longer loads, which keeps the settings in force). A policy that fails
    /// to load is reported and the last good one keeps serving. The source, engine, peek bounds
    /// and watch interval take effect on restart.
    /// Returns what changed but takes effect only on restart.
    pub fn reload_policy(&self, settings: Option<&PolicySettings>) -> Option<String> {
        let mut on_restart = None;
        let Some(serving) = &self.policy else {
            if settings.is_some() {
                tracing::warn!("the configuration now has [policy]; restart deputyd to enforce it");
                on_restart = Some("[policy] added".to_owned());
            }
            return on_restart;
        };
        match settings {
            Some(settings) => {
                if settings.source != serving.settings.source {
                    tracing::warn!(serving = %serving.settings.source, configured = %settings.source,
                        "the policy source changed; restart deputyd to switch to it");
                    on_restart = Some(format!("policy source {}", settings.source));
                }
                serving.facts.replace(settings.facts());
                serving.policy.set_time_limit(settings.eval_timeout);
                tracing::info!(
                    attributes = settings.attributes.len(),
                    time_zone = %settings.time_zone,
                    "policy attributes and time zone re-read"
                );
            }
            None => tracing::warn!(
                "the policy settings in force are kept (attributes, time zone); only the policy \
                 files are reloaded"
            ),
        }
        // Errors are logged and shown on /status by the policy itself. Off the signal loop: a
        // slow load must not keep SIGTERM waiting.
        let policy = serving.policy.clone();
        tokio::task::spawn_blocking(move || policy.reload());
        on_restart
    }

    /// SIGHUP: an agent no longer in `config` is removed from the data path (its listener
    /// closed, its name refused, its connections drained). An agent added, or one whose
    /// settings changed, takes effect on restart, which is said. Returns the agents removed and
    /// what takes effect only on restart.
    pub fn reload_agents(&mut self, config: &Config) -> (Vec<String>, Vec<String>) {
        let (mut removed, mut on_restart) = (Vec::new(), Vec::new());
        let Some(proxy) = self.proxy.as_mut() else {
            return (removed, on_restart);
        };
        let configured: Vec<&str> = config
            .proxy
            .agents
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        self.agents.retain(|agent| {
            if configured.contains(&agent.as_str()) {
                return true;
            }
            let draining = proxy.remove_agent(agent);
            tracing::info!(%agent, draining, "SIGHUP: agent removed; its connections are drained");
            removed.push(agent.clone());
            if let Some(postgres) = &self.postgres {
                postgres.remove_agent(agent);
            }
            if let Some(secrets) = self.secrets.clone() {
                // Its credentials are withdrawn and revoked in Vault, off the signal loop.
                let agent = agent.clone();
                tokio::spawn(async move { secrets.remove_agent(&agent).await });
            }
            false
        });
        let now: &[deputy_secrets::AgentSecrets] =
            config.secrets.as_ref().map_or(&[], |s| &s.agents);
        for agent in &self.agents {
            let before = self.secrets_started.iter().find(|s| &s.agent == agent);
            let after = now.iter().find(|s| &s.agent == agent);
            if before != after {
                on_restart.push(format!("agent {agent}'s secrets"));
                tracing::warn!(%agent,
                    "SIGHUP: the agent's secrets changed in the configuration; the ones it \
                     started with stay in force until deputyd restarts");
            }
        }
        for added in configured
            .iter()
            .filter(|a| !self.agents.iter().any(|b| b == *a))
        {
            on_restart.push(format!("agent {added} added"));
            tracing::warn!(agent = %added,
                "SIGHUP: a new agent is in the configuration; restart deputyd to serve it");
        }
        (removed, on_restart)
    }

    /// SIGHUP: reads the configuration file at `path` again, puts in force what may change
    /// without a restart, and records in the audit trail which file (its SHA-256) was read and
    /// what it changed.
    pub fn reload(&mut self, path: &Path) {
        tracing::info!("SIGHUP: reloading the agents, the policy and its settings");
        // Read once, hashed as read: the record names the configuration in force from now on.
        let (file_sha256, loaded) = match std::fs::read_to_string(path) {
            Ok(text) => (
                deputy_audit::hash(text.as_bytes()),
                Config::parse(&text, &path.display().to_string()),
            ),
            Err(source) => (
                "unreadable".to_owned(),
                Err(crate::ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                }),
            ),
        };
        let loaded = loaded.and_then(|config| match crate::sandbox::outside(&config, path) {
            None => Ok(config),
            Some(why) => Err(crate::ConfigError::Invalid {
                path: path.display().to_string(),
                problems: vec![why],
            }),
        });
        let event = match loaded {
            Ok(config) => {
                let (removed, mut on_restart) = self.reload_agents(&config);
                on_restart.extend(self.reload_policy(config.policy.as_ref()));
                deputy_audit::Event::Config {
                    file_sha256,
                    outcome: "applied".into(),
                    removed,
                    on_restart,
                }
            }
            Err(e) => {
                tracing::error!(config = %path.display(), error = %e,
                    "SIGHUP: the configuration file does not load; fix it and send SIGHUP again");
                self.reload_policy(None);
                deputy_audit::Event::Config {
                    file_sha256,
                    outcome: "rejected".into(),
                    removed: Vec::new(),
                    on_restart: Vec::new(),
                }
            }
        };
        if let Err(e) = self.trail.append(event) {
            tracing::error!(error = %e, "the configuration reload's audit record could not be written");
        }
    }

    /// Stops serving (draining every connection within `[limits] drain_grace`) and waits for
    /// the background tasks.
    pub async fn shutdown(mut self) {
        systemd::stopping();
        if let Some(proxy) = self.proxy.take() {
            let left = proxy.shutdown().await;
            if left > 0 {
                tracing::warn!(
                    left,
                    "connections were still open when the drain grace ran out"
                );
            }
        }
        if let Some(postgres) = self.postgres.take() {
            postgres.shutdown().await;
        }
        if let Some(secrets) = self.secrets.take() {
            // After the drain: no call in flight still needs a credential. Revoking each
            // agent's token revokes its leases (the database users are dropped).
            secrets.shutdown().await;
        }
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Ok(identities) = Arc::try_unwrap(self.identities) {
            identities.shutdown().await;
        }
        tracing::info!("deputyd stopped");
    }
}

/// How long a restarted deputyd waits for its SVIDs before it serves anyway.
const HANDOVER_IDENTITY_WAIT: Duration = Duration::from_secs(30);

/// After a restart (sockets handed over), the connections that queued while deputyd was down
/// are accepted only once every identity holds an SVID: accepted sooner, their calls would be
/// refused for want of one (503 `no-identity`), while the queue keeps them safe a little longer.
/// A first start serves at once, and says so in each refusal.
async fn wait_for_identities_after_a_handover(identities: &IdentityManager) {
    if !deputy_listen::handed_over() || identities.is_ready() {
        return;
    }
    tracing::info!("restarted: waiting for every SVID before accepting the queued connections");
    if tokio::time::timeout(HANDOVER_IDENTITY_WAIT, identities.ready())
        .await
        .is_err()
    {
        tracing::warn!(
            waited = ?HANDOVER_IDENTITY_WAIT,
            "not every identity has an SVID yet; serving anyway (see /status for which)"
        );
    }
}

fn show_listen(addr: &deputy_proxy::ListenAddr) -> String {
    match addr {
        deputy_proxy::ListenAddr::Tcp(addr) => addr.to_string(),
        deputy_proxy::ListenAddr::Unix(path) => format!("unix://{}", path.display()),
    }
}

/// Sends READY=1 once every identity has an SVID, then keeps STATUS= current and pings the
/// watchdog while the runtime is responsive.
/// Signs audit checkpoints with deputyd's own SVID, whichever it holds at the time.
#[derive(Debug)]
struct NodeSigner(deputy_proxy::tls::Material);

impl deputy_audit::checkpoint::Signer for NodeSigner {
    fn sign(&self, upto: u64, hash: &str, iat: i64) -> Result<String, String> {
        let material = self
            .0
            .borrow()
            .clone()
            .ok_or("deputyd holds no SVID of its own now")?;
        let svid = deputy_delegation::LinkSigner::new(
            &material.signing.chain_der,
            &material.signing.key_pkcs8,
        )
        .map_err(|e| e.to_string())?;
        deputy_audit::checkpoint::sign(&svid, upto, hash, iat)
    }
}

/// Folds the durations recorded since into their summaries every few seconds, until
/// `cancel`. The recorder is built, not installed, so the exporter's own upkeep does not run:
/// without this every duration recorded (four a call) stays in memory until `/metrics` is
/// read, and a node nobody scrapes grows by about 34 bytes a call (found by the soak).
async fn metrics_upkeep(metrics: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => metrics.run_upkeep(),
        }
    }
}

/// Writes an audit checkpoint when one is due by time, until `cancel`; and one at the end.
/// Checkpoints due by count are signed here too, woken by the record that made one due:
/// signing is not done on a call's path.
async fn checkpoint_when_due(trail: Arc<deputy_audit::Trail>, cancel: CancellationToken) {
    let due = Arc::new(tokio::sync::Notify::new());
    let wake = due.clone();
    trail.checkpoint_in_background(Arc::new(move || wake.notify_one()));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
            () = due.notified() => {}
        }
        let trail = trail.clone();
        let _ = tokio::task::spawn_blocking(move || trail.checkpoint_if_due()).await;
    }
    let _ = tokio::task::spawn_blocking(move || trail.checkpoint()).await;
}

async fn report_to_systemd(identities: Arc<IdentityManager>, cancel: CancellationToken) {
    let watchdog = systemd::watchdog_interval();
    let mut tick = tokio::time::interval(
        watchdog
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1)),
    );
    let mut ready_sent = false;
    let mut last_status = String::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let statuses = identities.statuses();
        let available = statuses
            .iter()
            .filter(|s| s.state == IdentityState::Available)
            .count();
        let status = format!("{available}/{} identities available", statuses.len());
        if !ready_sent && identities.is_ready() {
            systemd::ready(&status);
            ready_sent = true;
            last_status.clone_from(&status);
        } else if status != last_status {
            systemd::status(&status);
            last_status = status;
        }
        if watchdog.is_some() {
            systemd::watchdog();
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// deputyd's command line.
#[derive(Debug, clap::Parser)]
#[command(name = "deputyd", version, about = "The Deputy node daemon")]
pub struct Args {
    /// The TOML configuration file.
    #[arg(long, short, default_value = "/etc/deputy/deputyd.toml")]
    pub config: std::path::PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Validate the configuration file (and load its policy) and exit without starting:
    /// status 0 and a summary when it would start, 1 and every problem when not.
    #[arg(long)]
    pub check: bool,
}

/// `deputyd --check`: everything start-up would refuse in the file, without binding, connecting
/// or signalling anything.
pub fn check(path: &std::path::Path) -> anyhow::Result<String> {
    let config = Config::load(path)?;
    let policy = match &config.policy {
        None => "no [policy]".to_owned(),
        Some(settings) => {
            let (policy, _) = settings.load().with_context(|| {
                format!(
                    "config {}: the policy ({}) does not load",
                    path.display(),
                    settings.source
                )
            })?;
            format!(
                "policy {} ({} engine, revision {})",
                settings.source,
                policy.engine_kind(),
                policy.revision()
            )
        }
    };
    let mut summary = format!(
        "config {} is valid: {} agent(s), {} service(s), {policy}",
        path.display(),
        config.identity.agents.len(),
        config.proxy.services.len(),
    );
    for agent in &config.keys_exposed {
        summary.push_str("\nwarning: ");
        summary.push_str(&crate::agent_config::key_exposure_warning(agent));
    }
    Ok(summary)
}

/// How deputyd stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to (SIGTERM, an interrupt), or after `--check`.
    Done,
    /// Its binary was replaced and it handed the node over ([`crate::handover`]).
    HandedOver,
}

impl Stopped {
    /// The process's exit status.
    pub fn exit_code(self) -> std::process::ExitCode {
        match self {
            Self::Done => std::process::ExitCode::SUCCESS,
            Self::HandedOver => std::process::ExitCode::from(crate::handover::EXIT_HANDED_OVER),
        }
    }
}

/// Runs deputyd until SIGTERM, an interrupt or a hand-over: the whole of `deputyd`'s `main`,
/// shared with `deputy dev`, which starts its nodes from the same binary.
pub async fn run(args: Args) -> anyhow::Result<Stopped> {
    run_with(args, None).await
}

/// [`run`], with the configuration `main` already loaded (to enter the sandbox on it), so that
/// the file is read once: read again, it could have changed in between.
pub async fn run_with(args: Args, loaded: Option<Config>) -> anyhow::Result<Stopped> {
    if args.check {
        println!("{}", check(&args.config)?);
        return Ok(Stopped::Done);
    }
    let _log = crate::logging::init_logging(args.log_json);
    let config = match loaded {
        Some(config) => config,
        None => Config::load(&args.config)?,
    };
    // Before anything starts: READY=1 may be sent while start-up finishes, and a SIGTERM from
    // then on must stop deputyd in order (STOPPING=1, streams drained), not kill it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let binary = crate::handover::Binary::running();
    let mut daemon = Daemon::start(config).await?;
    let stopped = loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break Stopped::Done;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupt: stopping");
                break Stopped::Done;
            }
            _ = hup.recv() => match binary.replaced() {
                Some(path) if crate::handover::possible() => {
                    tracing::info!(binary = %path.display(),
                        "SIGHUP: deputyd's binary was replaced; handing the node over to it \
                         (draining, then exiting for systemd to start it with the listening \
                         sockets it keeps)");
                    break Stopped::HandedOver;
                }
                _ => daemon.reload(&args.config),
            },
        }
    };
    daemon.shutdown().await;
    Ok(stopped)
}
