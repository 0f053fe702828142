//! Deputy's data path.
//!
//! ```text
//! agent A --HTTP/1.1 or h2c--> outbound listener --mTLS h2, A's SVID--> inbound listener --HTTP/1.1--> agent B
//!           (uid attested)      (route by Host)                         (SNI picks B's SVID,
//!                                                                        peer verified, Deputy-Peer-Id)
//! ```
//!
//! - [`routing`]: the pure decisions (which service, which headers cross).
//! - [`tls`]: SPIFFE verification on both sides, SVID selection by SNI.
//! - [`outbound`] and [`inbound`]: the two listeners; [`pool`]: pooled HTTP/2 connections.
//! - [`problem`]: every refusal as RFC 9457 problem details.

pub mod admission;
pub mod attest;
mod audit;
mod authz;
pub mod body;
pub mod config;
pub mod connections;
pub mod context;
mod delegation;
mod external;
mod head_timer;
mod held_bytes;
pub mod inbound;
mod listing;
mod media_type;
pub mod metrics;
pub mod outbound;
mod pipeline;
pub mod pool;
pub mod problem;
pub mod revocation;
pub mod routing;
mod server;
pub mod tls;
mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use deputy_identity::IdentityManager;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use admission::WithoutPolicy;
pub use config::{
    Delegation, External, FactsCell, Injection, Limits, ListenAddr, LocalAgent, MeshPeer,
    PolicyConfig, PolicyFacts, ProxyConfig, Reach, Service, Timeouts,
};
pub use connections::{ConnectionInfo, DrainReason, Registry};
pub use held_bytes::HeldBytes;
pub use webhook::ApprovalWebhook;

/// Largest HTTP/2 frame between nodes: 64 KiB, so that a streamed chunk crosses as one frame
/// rather than four of the 16 KiB default.
const H2_MAX_FRAME: u32 = 64 * 1024;

/// The data path cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listener cannot be bound.
    #[error("cannot listen on {address} for {purpose}: {source}")]
    Bind {
        /// The address or socket path.
        address: String,
        /// Which listener.
        purpose: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration cannot be built.
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// An external service's HTTPS client cannot be built.
    #[error("{0}")]
    External(String),
    /// An agent is in the proxy config but not in the identity manager.
    #[error("agent {0} has no identity; configure it as an [[agent]]")]
    NoIdentity(String),
}

/// A running data path.
#[derive(Debug)]
pub struct Proxy {
    inbound_addr: Option<SocketAddr>,
    outbound_addrs: HashMap<String, ListenAddr>,
    /// Each agent's outbound listener, stopped when the agent is removed.
    outbound_listeners: HashMap<String, CancellationToken>,
    registry: Arc<connections::Registry>,
    contexts: Arc<context::ContextStore>,
    revoker: Arc<revocation::Revoker>,
    grace: std::time::Duration,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Binds every listener and starts serving.
    /// Budgets are counted in `budgets`, which outlives the proxy (it is on disk).
    pub async fn start(
        mut config: ProxyConfig,
        identities: &IdentityManager,
        budgets: Arc<deputy_state::BudgetLedger>,
    ) -> Result<Self, ProxyError> {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let bundles = identities.trust_bundles();
        let limits = config.limits;
        let registry = Arc::new(connections::Registry::new(
            bundles.clone(),
            limits.max_connection_age,
            limits.drain_grace,
        ));
        tasks.spawn(registry.clone().keep_checking(cancel.clone()));
        if let Some(policy) = &mut config.policy {
            // One bound for the node: both listeners hold bodies against it.
            policy.held_bytes = HeldBytes::new(limits.max_inspected_bytes);
        }
        let pool = Arc::new(pool::Pool::new(
            bundles.clone(),
            config.timeouts,
            limits,
            registry.clone(),
        ));
        let idempotency = config
            .idempotency
            .clone()
            .map(|kept| Arc::new(outbound::stages::Idempotency::new(kept)));
        let externals = Arc::new(
            external::Externals::new(&config.services, &config.timeouts, &limits)
                .map_err(ProxyError::External)?,
        );
        let contexts = Arc::new(context::ContextStore::new(
            config.delegation.max_contexts,
            budgets,
        ));
        let revoker = Arc::new(revocation::Revoker::new(
            config.revocations.clone(),
            contexts.clone(),
            config.task_secrets.clone(),
            (
                config
                    .agents
                    .iter()
                    .map(|a| (a.name.clone(), a.spiffe_id.to_string()))
                    .collect(),
                config.delegation.max_relayed_tasks,
            ),
            Some(revocation::NodeIdentity {
                material: identities.own().material.clone(),
                bundles: bundles.clone(),
            }),
            registry.clone(),
            config.audit.clone(),
        ));

        let mut materials = HashMap::new();
        for agent in &config.agents {
            let handle = identities
                .agent(&agent.name)
                .ok_or_else(|| ProxyError::NoIdentity(agent.name.clone()))?;
            materials.insert(agent.name.clone(), handle.material.clone());
        }

        let mut inbound_addr = None;
        if let Some(listen) = config.inbound {
            let listener = deputy_listen::tcp("inbound", listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    address: listen.to_string(),
                    purpose: "inbound mTLS ([inbound] listen)".into(),
                    source,
                })?;
            inbound_addr = listener.local_addr().ok();
            let inbound = Arc::new(inbound::Inbound {
                agents: config
                    .agents
                    .iter()
                    .map(|a| {
                        (
                            a.name.clone(),
                            inbound::InboundAgent {
                                name: a.name.clone(),
                                spiffe_id: a.spiffe_id.clone(),
                                id: a.spiffe_id.to_string().into(),
                                upstream: a.upstream.clone(),
                                protocol: a.protocol.clone(),
                            },
                        )
                    })
                    .collect(),
                tls: tls::server_config(materials.clone(), bundles.clone())?,
                upstreams: Client::builder(TokioExecutor::new()).build_http(),
                timeouts: config.timeouts,
                anchors: tls::Anchors::new(bundles.clone()),
                chains: deputy_delegation::ChainVerifier::new(config.delegation.verify),
                contexts: contexts.clone(),
                policy: config.policy.clone(),
                without_policy: config.without_policy.clone(),
                materials: materials.clone(),
                registry: registry.clone(),
                revoker: revoker.clone(),
                audit: config.audit.clone(),
                limits,
                slots: connections::Slots::new(limits.max_connections),
                handshakes: Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes)),
            });
            tasks.spawn(inbound::serve(inbound, listener, cancel.clone()));
        }

        // Local agents are services too: a call between two agents of this node takes the same
        // path (mTLS through the inbound listener) as a call across nodes.
        let mut services = config.services.clone();
        if let Some(inbound) = inbound_addr {
            let address = loopback_of(inbound).to_string();
            for agent in &config.agents {
                if !services.iter().any(|s| s.name == agent.name) {
                    services.push(Service {
                        protocol: agent.protocol.clone(),
                        ..Service::mesh(&agent.name, agent.spiffe_id.clone(), &address)
                    });
                }
            }
        }
        let routes = routing::Routes::new(&services);

        let mut outbound_addrs = HashMap::new();
        let mut outbound_listeners = HashMap::new();
        for agent in &config.agents {
            let Some(listen) = &agent.outbound else {
                continue;
            };
            let (listener, bound) = bind_outbound(listen, &agent.name).await?;
            outbound_addrs.insert(agent.name.clone(), bound);
            let outbound = Arc::new(outbound::Outbound {
                agent_id: agent.spiffe_id.to_string().into(),
                agent: agent.clone(),
                material: materials[&agent.name].clone(),
                routes: routes.clone(),
                pool: pool.clone(),
                externals: externals.clone(),
                timeouts: config.timeouts,
                signers: Default::default(),
                links: Default::default(),
                contexts: contexts.clone(),
                policy: config.policy.clone(),
                registry: registry.clone(),
                revoker: revoker.clone(),
                audit: config.audit.clone(),
                limits,
                slots: connections::Slots::new(limits.max_connections),
                credentials: config.credentials.clone(),
                task_secrets: config.task_secrets.clone(),
                approvals: config.approvals.clone(),
                approval_webhook: config.approval_webhook.clone(),
                idempotency: idempotency.clone(),
                approval_ttl: i64::try_from(config.approval_ttl.as_secs()).unwrap_or(i64::MAX),
            });
            let stop = cancel.child_token();
            outbound_listeners.insert(agent.name.clone(), stop.clone());
            tasks.spawn(outbound::serve(outbound, listener, stop));
        }
        metrics::describe();
        Ok(Self {
            inbound_addr,
            outbound_addrs,
            outbound_listeners,
            registry,
            contexts,
            revoker,
            grace: limits.drain_grace,
            cancel,
            tasks,
        })
    }

    /// Every open connection, for `/connections`.
    pub fn connections(&self) -> Arc<connections::Registry> {
        self.registry.clone()
    }

    /// The node's revocations: what the operator socket revokes through.
    pub fn revoker(&self) -> Arc<revocation::Revoker> {
        self.revoker.clone()
    }

    /// The tasks behind the context handles this node delivered to its agents.
    pub fn task_contexts(&self) -> context::TaskContexts {
        context::TaskContexts(self.contexts.clone())
    }

    /// Removes `agent` from the data path (a reload dropped it): its outbound listener stops
    /// accepting, the inbound listener refuses its name, and its open connections are drained.
    /// Returns how many connections began draining.
    pub fn remove_agent(&mut self, agent: &str) -> usize {
        if let Some(listener) = self.outbound_listeners.remove(agent) {
            listener.cancel();
        }
        // Its socket is not handed to the next process either.
        deputy_listen::release(&deputy_listen::outbound(agent));
        if let Some(ListenAddr::Unix(path)) = self.outbound_addrs.remove(agent) {
            let _ = std::fs::remove_file(path);
        }
        self.registry.retire_agent(agent)
    }

    /// Where the inbound listener is bound.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }

    /// Where each agent's outbound listener is bound.
    pub fn outbound_addrs(&self) -> &HashMap<String, ListenAddr> {
        &self.outbound_addrs
    }

    /// Stops accepting and drains every connection: the streams in flight get the drain grace
    /// (`[limits] drain_grace`), then what is left is closed. Returns how many connections were
    /// still open when the grace ran out.
    pub async fn shutdown(mut self) -> usize {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        let draining = self
            .registry
            .drain_all(&connections::DrainReason::ShuttingDown);
        // The grace, and a moment for the connections cut at its end to leave the registry.
        let deadline = tokio::time::Instant::now() + self.grace + std::time::Duration::from_secs(1);
        let left = self.registry.wait_empty(deadline).await;
        tracing::info!(draining, left, "data path stopped");
        // A socket systemd keeps for the next process stays reachable where it is.
        for (agent, addr) in &self.outbound_addrs {
            if let ListenAddr::Unix(path) = addr
                && !deputy_listen::is_kept(&deputy_listen::outbound(agent))
            {
                let _ = std::fs::remove_file(path);
            }
        }
        left
    }
}

/// The address to reach a listener bound to `addr` from this host.
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

async fn bind_outbound(
    listen: &ListenAddr,
    agent: &str,
) -> Result<(outbound::OutboundListener, ListenAddr), ProxyError> {
    bind_local(
        listen,
        &deputy_listen::outbound(agent),
        &format!("agent {agent}'s outbound listener"),
    )
    .await
}

/// Binds a listener for local agents (loopback TCP or a unix socket anyone may connect to, the
/// caller's uid deciding who may use it), or takes the one systemd kept as `name` over a
/// restart (`deputy_listen`); returns it and the address it is bound to (port 0 resolved).
/// `purpose` names it in the error.
pub async fn bind_local(
    listen: &ListenAddr,
    name: &str,
    purpose: &str,
) -> Result<(outbound::OutboundListener, ListenAddr), ProxyError> {
    let fail = |address: String, source| ProxyError::Bind {
        address,
        purpose: purpose.to_owned(),
        source,
    };
    match listen {
        ListenAddr::Tcp(addr) => {
            let listener = deputy_listen::tcp(name, *addr)
                .await
                .map_err(|e| fail(addr.to_string(), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| fail(addr.to_string(), e))?;
            Ok((
                outbound::OutboundListener::Tcp(listener),
                ListenAddr::Tcp(bound),
            ))
        }
        ListenAddr::Unix(path) => {
            if let Some(listener) = deputy_listen::take_unix(name, path) {
                return Ok((
                    outbound::OutboundListener::Unix(listener),
                    ListenAddr::Unix(path.clone()),
                ));
            }
            let shown = path.display().to_string();
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail(shown.clone(), e))?;
            }
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|e| fail(shown.clone(), e))?;
            // Anyone may connect; the uid check decides who may call (SO_PEERCRED).
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| fail(shown, e))?;
            deputy_listen::keep(name, std::os::fd::AsFd::as_fd(&listener));
            Ok((
                outbound::OutboundListener::Unix(listener),
                ListenAddr::Unix(path.clone()),
            ))
        }
    }
}

/// `time` in unix seconds (0 before the epoch, saturating far after it).
pub(crate) fn unix(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The time `seconds` after the epoch (the epoch for a negative count).
pub(crate) fn at_unix(seconds: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// Whether this thread runs on a multi-threaded tokio runtime, where `block_in_place` may hand
/// the worker's other tasks to another thread while this one waits.
pub(crate) fn may_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
