//! What an agent's secrets are, as the configuration declares them.

use std::time::Duration;

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A dynamic database credential: `GET {mount}/creds/{role}` (fields `username`,
    /// `password`), under a lease that is renewed and, when it cannot be, replaced.
    Database {
        /// The database secrets engine's mount (`database`).
        mount: String,
        /// The Vault role that creates the database user.
        role: String,
    },
    /// A KV version 2 secret: `GET {mount}/data/{path}` (its keys are the fields), read again
    /// every `refresh` to follow new versions.
    Kv {
        /// The KV v2 mount (`secret`).
        mount: String,
        /// The secret's path under it.
        path: String,
        /// How often it is read again.
        refresh: Duration,
    },
}

impl Source {
    /// `database/creds/readonly`, `secret/data/agents/a`: the Vault path, for messages.
    pub fn path(&self) -> String {
        match self {
            Self::Database { mount, role } => format!("{mount}/creds/{role}"),
            Self::Kv { mount, path, .. } => format!("{mount}/data/{path}"),
        }
    }

    /// `database` or `kv`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Database { .. } => "database",
            Self::Kv { .. } => "kv",
        }
    }
}

/// One secret of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// Its name in the configuration (templates say `{{ secret.NAME.FIELD }}`).
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// Issued per task (`per_task = true`): a credential of its own for each task that needs
    /// it, revoked when the task's chain expires ([`crate::task`]); otherwise one standing
    /// credential for the agent.
    pub per_task: bool,
}

/// The secrets of one agent, and the Vault role it logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSecrets {
    /// The agent's name.
    pub agent: String,
    /// The JWT auth role bound to the agent's SPIFFE ID.
    pub role: String,
    /// Its secrets.
    pub secrets: Vec<SecretSpec>,
}
