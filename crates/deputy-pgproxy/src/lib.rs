//! deputyd's PostgreSQL auth proxy.
//!
//! Per agent and database, deputyd listens on loopback or a unix socket. The agent connects
//! with no password (it is told apart by the uid of its socket, as on its outbound listener);
//! deputyd logs in to PostgreSQL as the agent's current Vault-issued database user
//! (SCRAM-SHA-256, by postgres-protocol) and splices the session ([`session`]). A session is closed when
//! the credential it was opened with is revoked or expires, because Vault's own revocation drops
//! the database user but leaves its open sessions connected; a session opened after a re-issue
//! uses the new credential.
//!
//! - [`wire`]: the messages the proxy reads and writes itself (pure).
//! - [`task`]: the standing credential, or the task's own for a per-task secret (the session
//!   names its task's `Deputy-Context` handle).

mod login;
pub mod session;
pub mod task;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use deputy_proxy::outbound::OutboundListener;
use deputy_proxy::{ListenAddr, ProxyError};
pub use task::Credentials;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where PostgreSQL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgUpstream {
    /// `host:port`, plain TCP (on loopback or a network the operator trusts: PostgreSQL's TLS
    /// is not spoken yet).
    Tcp(String),
    /// The server's unix socket file (`/run/postgresql/.s.PGSQL.5432`).
    Unix(PathBuf),
}

impl std::fmt::Display for PgUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// One proxied database of one agent.
#[derive(Debug, Clone)]
pub struct PgProxyConfig {
    /// The agent.
    pub agent: String,
    /// The uids its processes run as: the only callers served.
    pub uids: Vec<u32>,
    /// Where the agent connects.
    pub listen: ListenAddr,
    /// Where PostgreSQL is.
    pub upstream: PgUpstream,
    /// The database sessions are opened on (a client asking for another is refused).
    pub database: String,
    /// The agent's database secret whose credential sessions log in with.
    pub secret: String,
}

/// The running proxies.
#[derive(Debug)]
pub struct PgProxies {
    bound: Vec<(PgProxyConfig, ListenAddr)>,
    /// Each listener's name in systemd's store, by agent.
    sockets: Vec<(String, String)>,
    agents: Mutex<HashMap<String, CancellationToken>>,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
}

impl PgProxies {
    /// Binds every listener (an error names the one that could not be bound) and serves them.
    pub async fn start(
        configs: Vec<PgProxyConfig>,
        credentials: Credentials,
    ) -> Result<Self, ProxyError> {
        let cancel = CancellationToken::new();
        let mut agents: HashMap<String, CancellationToken> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut bound = Vec::new();
        let mut sockets: Vec<(String, String)> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for config in configs {
            let purpose = format!(
                "agent {}'s PostgreSQL proxy to database {}",
                config.agent, config.database
            );
            // One name per listener, kept by systemd over a restart: a second proxy of the
            // same agent, database and secret is numbered.
            let base = deputy_listen::postgres(&config.agent, &config.database, &config.secret);
            let twins = seen.entry(base.clone()).or_insert(0usize);
            *twins += 1;
            let name = match *twins {
                1 => base,
                n => format!("{base}.{n}"),
            };
            let (listener, addr) =
                deputy_proxy::bind_local(&config.listen, &name, &purpose).await?;
            sockets.push((config.agent.clone(), name));
            let stop = agents
                .entry(config.agent.clone())
                .or_insert_with(|| cancel.child_token())
                .clone();
            tasks.spawn(session::serve(
                Arc::new(config.clone()),
                listener,
                credentials.clone(),
                stop,
            ));
            bound.push((config, addr));
        }
        Ok(Self {
            bound,
            sockets,
            agents: Mutex::new(agents),
            cancel,
            tasks: Mutex::new(tasks),
        })
    }

    /// Each proxy with the address it is bound to.
    pub fn bound(&self) -> &[(PgProxyConfig, ListenAddr)] {
        &self.bound
    }

    /// The agent was removed: its listeners close and its sessions end.
    pub fn remove_agent(&self, agent: &str) {
        if let Some(stop) = self.agents.lock().ok().and_then(|mut a| a.remove(agent)) {
            stop.cancel();
        }
        // Nor are they handed to the next process.
        for (_, name) in self.sockets.iter().filter(|(a, _)| a == agent) {
            deputy_listen::release(name);
        }
    }

    /// Closes every listener and session.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let mut tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        while tasks.join_next().await.is_some() {}
    }
}

/// Accepts one connection from a local listener.
pub(crate) async fn accept(listener: &OutboundListener) -> std::io::Result<session::Client> {
    match listener {
        OutboundListener::Tcp(l) => l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            session::Client::Tcp(s)
        }),
        OutboundListener::Unix(l) => l.accept().await.map(|(s, _)| session::Client::Unix(s)),
    }
}
