//! Which nodes each task went on to from here, and the keys the nodes it came from proved
//! themselves with: what a revocation follows down the delegation tree, and what a node must
//! show to have a revocation accepted here.
//!
//! When this node sends a call of a task to another node, it sends a random revocation key for
//! that (task, node) over the mTLS connection (`Deputy-Revocation-Key`); the receiving node
//! keeps its hash. Only a node that sent the task there knows the key, so a revocation
//! presenting it comes from a node that took part in the task. Kept in memory, bounded; a task
//! is forgotten when its chains expire (nothing of it can be presented any more).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Tasks remembered; past it the least recently used is forgotten (a revocation of it then
/// reaches only this node).
const TASKS: usize = 8192;
/// Nodes one task goes on to from here, and keys it arrives with.
const PER_TASK: usize = 32;

/// A node a task went on to: where, and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Downstream {
    /// `host:port` of its inbound listener.
    pub(crate) address: String,
    /// The SNI the call was sent with (the service's name).
    pub(crate) server_name: String,
    /// The SPIFFE ID its server certificate carried.
    pub(crate) spiffe_id: spiffe::SpiffeId,
    /// The key this node gave it for the task.
    pub(crate) key: String,
}

/// What a task is, for revocations of its principal or of an agent in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskFacts {
    pub(crate) principal: String,
    pub(crate) agents: Vec<String>,
}

#[derive(Debug)]
struct TaskHops {
    facts: TaskFacts,
    /// When its last chain known here expires (unix seconds).
    until: i64,
    downstream: Vec<Downstream>,
    /// SHA-256 of the keys it arrived with.
    upstream: Vec<Vec<u8>>,
}

/// Every task's hops.
#[derive(Debug)]
pub(crate) struct Hops {
    tasks: Mutex<lru::LruCache<String, TaskHops>>,
    random: SystemRandom,
}

impl Default for Hops {
    fn default() -> Self {
        Self {
            tasks: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(TASKS).unwrap_or(NonZeroUsize::MIN),
            )),
            random: SystemRandom::new(),
        }
    }
}

impl Hops {
    fn entry<'a>(
        tasks: &'a mut lru::LruCache<String, TaskHops>,
        task: &str,
        facts: &TaskFacts,
        until: i64,
        now: i64,
    ) -> &'a mut TaskHops {
        let stale = tasks.peek(task).is_some_and(|t| t.until <= now);
        if stale {
            tasks.pop(task);
        }
        let entry = tasks.get_or_insert_mut(task.to_owned(), || TaskHops {
            facts: facts.clone(),
            until,
            downstream: Vec::new(),
            upstream: Vec::new(),
        });
        entry.until = entry.until.max(until);
        for agent in &facts.agents {
            if !entry.facts.agents.contains(agent) && entry.facts.agents.len() < PER_TASK {
                entry.facts.agents.push(agent.clone());
            }
        }
        entry
    }

    /// The key for sending `task` (living until `until`) to `to`: the one given before, or a
    /// new one. `None` when the task already went to as many nodes as are remembered, or the
    /// random generator failed (the call goes on; a revocation will not follow it there).
    pub(crate) fn key_for(
        &self,
        task: &str,
        facts: &TaskFacts,
        to: (&str, &str, &spiffe::SpiffeId),
        until: i64,
        now: i64,
    ) -> Option<String> {
        let (address, server_name, spiffe_id) = to;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Self::entry(&mut tasks, task, facts, until, now);
        if let Some(known) = entry
            .downstream
            .iter()
            .find(|d| d.address == address && d.server_name == server_name)
        {
            return Some(known.key.clone());
        }
        if entry.downstream.len() >= PER_TASK {
            return None;
        }
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).ok()?;
        let key = URL_SAFE_NO_PAD.encode(bytes);
        entry.downstream.push(Downstream {
            address: address.to_owned(),
            server_name: server_name.to_owned(),
            spiffe_id: spiffe_id.clone(),
            key: key.clone(),
        });
        Some(key)
    }

    /// Remembers that `task` (living until `until`) arrived with `key`.
    pub(crate) fn arrived_with(
        &self,
        task: &str,
        facts: &TaskFacts,
        key: &str,
        until: i64,
        now: i64,
    ) {
        let digest = hash(key);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Self::entry(&mut tasks, task, facts, until, now);
        if !entry.upstream.contains(&digest) && entry.upstream.len() < PER_TASK {
            entry.upstream.push(digest);
        }
    }

    /// Whether `task` arrived here with `key`, and has not expired at `now`.
    pub(crate) fn arrived_with_key(&self, task: &str, key: &str, now: i64) -> bool {
        let digest = hash(key);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(task).is_some_and(|t| {
            t.until > now
                && t.upstream.iter().any(|known| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(known, &digest).is_ok()
                })
        })
    }

    /// The nodes each task `covered` names went on to, live at `now`.
    pub(crate) fn downstream_of(
        &self,
        covered: impl Fn(&str, &TaskFacts) -> bool,
        now: i64,
    ) -> Vec<(String, Downstream)> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .filter(|(task, hops)| hops.until > now && covered(task, &hops.facts))
            .flat_map(|(task, hops)| {
                hops.downstream
                    .iter()
                    .map(move |d| (task.clone(), d.clone()))
            })
            .collect()
    }
}

fn hash(key: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TaskFacts {
        TaskFacts {
            principal: "user:a".into(),
            agents: vec!["spiffe://example.org/agent/a".into()],
        }
    }

    #[test]
    fn a_task_keeps_one_key_per_node_it_went_to_and_accepts_only_keys_it_arrived_with() {
        let hops = Hops::default();
        let id = spiffe::SpiffeId::new("spiffe://example.org/agent/b").expect("id");
        let to_b = ("127.0.0.1:1", "b", &id);
        let key = hops.key_for("t1", &facts(), to_b, 100, 0).expect("key");
        assert_eq!(
            hops.key_for("t1", &facts(), to_b, 100, 0),
            Some(key.clone())
        );
        let to_c = ("127.0.0.1:2", "c", &id);
        assert_ne!(
            hops.key_for("t1", &facts(), to_c, 100, 0),
            Some(key.clone())
        );
        let sent = hops.downstream_of(|task, _| task == "t1", 10);
        assert_eq!(sent.len(), 2);
        assert!(
            hops.downstream_of(|task, _| task == "t1", 100).is_empty(),
            "expired"
        );

        hops.arrived_with("t2", &facts(), "k-upstream", 100, 0);
        assert!(hops.arrived_with_key("t2", "k-upstream", 10));
        assert!(!hops.arrived_with_key("t2", "k-other", 10), "another key");
        assert!(
            !hops.arrived_with_key("t1", "k-upstream", 10),
            "another task"
        );
        assert!(!hops.arrived_with_key("t2", "k-upstream", 100), "expired");
    }
}
