//! The credentials the data path delivers from: one `watch` per (agent, secret), written by the
//! lease manager, read by the injection stage, the PostgreSQL proxy and the file renderer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::secret::Credential;
use crate::spec::AgentSecrets;

type Slot = watch::Sender<Option<Arc<Credential>>>;

/// Every declared secret's current credential (`None` while there is none that works).
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    slots: Arc<HashMap<String, HashMap<String, Slot>>>,
}

impl CredentialStore {
    /// A store with a slot for every secret of `agents`, all empty.
    pub fn new(agents: &[AgentSecrets]) -> Self {
        let slots = agents
            .iter()
            .map(|a| {
                let secrets = a
                    .secrets
                    .iter()
                    .map(|s| (s.name.clone(), watch::channel(None).0))
                    .collect();
                (a.agent.clone(), secrets)
            })
            .collect();
        Self {
            slots: Arc::new(slots),
        }
    }

    fn slot(&self, agent: &str, secret: &str) -> Option<&Slot> {
        self.slots.get(agent)?.get(secret)
    }

    /// The agent's credential for `secret`, if it has one that works now.
    pub fn get(&self, agent: &str, secret: &str) -> Option<Arc<Credential>> {
        let credential = self.slot(agent, secret)?.borrow().clone()?;
        credential
            .is_valid_at(SystemTime::now())
            .then_some(credential)
    }

    /// Follows the agent's credential for `secret` (each replacement or renewal).
    pub fn watch(
        &self,
        agent: &str,
        secret: &str,
    ) -> Option<watch::Receiver<Option<Arc<Credential>>>> {
        self.slot(agent, secret).map(watch::Sender::subscribe)
    }

    /// Whether `agent` declares `secret`.
    pub fn declares(&self, agent: &str, secret: &str) -> bool {
        self.slot(agent, secret).is_some()
    }

    pub(crate) fn publish(&self, agent: &str, secret: &str, credential: Option<Arc<Credential>>) {
        if let Some(slot) = self.slot(agent, secret) {
            slot.send_replace(credential);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::spec::{SecretSpec, Source};

    #[test]
    fn an_expired_credential_is_not_handed_out() {
        let store = CredentialStore::new(&[AgentSecrets {
            agent: "a".into(),
            role: "a".into(),
            secrets: vec![SecretSpec {
                name: "db".into(),
                per_task: false,
                source: Source::Database {
                    mount: "database".into(),
                    role: "ro".into(),
                },
            }],
        }]);
        assert!(store.declares("a", "db"));
        assert!(!store.declares("a", "other"));
        assert!(store.get("a", "db").is_none());
        let credential = |expires_at| {
            Arc::new(Credential {
                fields: BTreeMap::new(),
                expires_at: Some(expires_at),
                generation: 1,
            })
        };
        store.publish(
            "a",
            "db",
            Some(credential(SystemTime::now() + Duration::from_secs(60))),
        );
        assert!(store.get("a", "db").is_some());
        store.publish(
            "a",
            "db",
            Some(credential(SystemTime::now() - Duration::from_secs(1))),
        );
        assert!(store.get("a", "db").is_none());
    }
}
