//! Vault secrets for the agents deputyd fronts, which the agents never hold.
//!
//! - [`vault`]: Vault's HTTP API (vaultrs, plus the endpoints it lacks): log in as an agent with
//!   its JWT-SVID, issue, renew and revoke.
//! - [`plan`]: when to renew or replace a token or lease (pure).
//! - [`SecretsManager`]: one loop per agent that logs in, keeps every secret current and revokes
//!   it all when the agent is removed or deputyd stops; `/status` reads [`AgentSecretsStatus`].
//! - [`task`]: credentials issued per task, revoked when the task's chain expires.
//! - [`CredentialStore`]: the current credentials, which the data path delivers from.
//! - [`template`]: header values such as `Bearer {{ secret.crm.token }}`.
//! - [`files`]: credentials rendered into files (mode 0400, the agent's uid) for agents that
//!   must read one themselves.

pub mod agent;
pub mod files;
pub mod metrics;
pub mod plan;
pub mod secret;
pub mod spec;
pub mod store;
pub mod task;
pub mod template;
pub mod vault;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use agent::status::AgentSecretsStatus;
pub use agent::{JwtSvids, Svids};
pub use secret::{Credential, SecretString};
pub use spec::{AgentSecrets, SecretSpec, Source};
pub use store::CredentialStore;
pub use vault::{Vault, VaultError, VaultSettings};

/// Every agent's secrets, kept current in the background.
#[derive(Debug)]
pub struct SecretsManager {
    store: CredentialStore,
    tasks: task::TaskSecrets,
    agents: Mutex<HashMap<String, Running>>,
    statuses: Mutex<Vec<Arc<Mutex<AgentSecretsStatus>>>>,
}

#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    files: Vec<JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        for file in self.files {
            let _ = file.await;
        }
    }
}

impl SecretsManager {
    /// Starts one loop per agent of `agents`, and a renderer per file of `files`; `svids` gives
    /// each agent's X.509-SVID watch (a rotation logs in again). Returns at once.
    pub fn start(
        vault: Vault,
        agents: Vec<AgentSecrets>,
        files: Vec<files::FileSpec>,
        jwt: Arc<dyn JwtSvids>,
        mut svids: HashMap<String, Svids>,
        backoff: (Duration, Duration),
    ) -> Self {
        let store = CredentialStore::new(&agents);
        let tasks = task::TaskSecrets::new(
            vault.clone(),
            jwt.clone(),
            &agents,
            CancellationToken::new(),
        );
        let mut running = HashMap::new();
        let mut statuses = Vec::new();
        for spec in agents {
            let status = Arc::new(Mutex::new(agent::initial_status(&spec)));
            statuses.push(status.clone());
            let cancel = CancellationToken::new();
            let name = spec.agent.clone();
            let context = agent::AgentContext {
                rotations: svids.remove(&spec.agent),
                spec,
                vault: vault.clone(),
                jwt: jwt.clone(),
                store: store.clone(),
                status,
                backoff,
            };
            let task = tokio::spawn(agent::run(context, cancel.clone()));
            let files = files
                .iter()
                .filter(|f| f.agent == name)
                .map(|f| tokio::spawn(files::run(f.clone(), store.clone(), cancel.clone())))
                .collect();
            running.insert(
                name,
                Running {
                    cancel,
                    task,
                    files,
                },
            );
        }
        Self {
            store,
            tasks,
            agents: Mutex::new(running),
            statuses: Mutex::new(statuses),
        }
    }

    /// The current credentials.
    pub fn store(&self) -> &CredentialStore {
        &self.store
    }

    /// The credentials issued per task.
    pub fn tasks(&self) -> &task::TaskSecrets {
        &self.tasks
    }

    /// Every agent's login and secrets, for `/status`.
    pub fn statuses(&self) -> Vec<AgentSecretsStatus> {
        let Ok(statuses) = self.statuses.lock() else {
            return Vec::new();
        };
        statuses
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.clone()))
            .collect()
    }

    /// The agent was removed: its credentials are withdrawn and revoked (its Vault tokens
    /// revoked, which revokes their leases). Returns once Vault answered (or could not).
    pub async fn remove_agent(&self, agent: &str) {
        self.tasks.remove_agent(agent);
        let running = self.agents.lock().ok().and_then(|mut a| a.remove(agent));
        if let Some(running) = running {
            running.stop().await;
        }
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.retain(|s| s.lock().is_ok_and(|s| s.agent != agent));
        }
    }

    /// deputyd stops: every agent's credentials are revoked.
    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
        let all: Vec<Running> = self
            .agents
            .lock()
            .map(|mut a| a.drain().map(|(_, r)| r).collect())
            .unwrap_or_default();
        for running in &all {
            running.cancel.cancel();
        }
        for running in all {
            running.stop().await;
        }
    }
}
