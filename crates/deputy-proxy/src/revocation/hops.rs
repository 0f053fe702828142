//! Which nodes each task went on to from here, and the keys the nodes it came from proved
//! themselves with: what a revocation follows down the delegation tree, and what a node must
//! show to have a revocation accepted here.
//!
//! When this node sends a call of a task to another node, it sends a random revocation key for
//! that (task, node) over the mTLS connection (`Deputy-Revocation-Key`); the receiving node
//! keeps its hash once the call is allowed. Only a node that sent the task there knows the key,
//! so a revocation presenting it comes from a node that took part in the task. A task is its
//! id, principal and originator together: ids are chosen by whoever starts a task, so another
//! agent's task under the same id is another task, whose key revokes nothing of this one.
//!
//! Kept in memory, bounded; a task is forgotten when its chains expire (nothing of it can be
//! presented any more), or when `[delegation] max_relayed_tasks` are held: then the least
//! recently used is forgotten (counted: `deputy_revocation_hops_evicted_total`), and a revocation of it then
//! reaches only this node.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Counter: live tasks forgotten because the table was full.
pub(crate) const EVICTED: &str = "deputy_revocation_hops_evicted_total";

/// Nodes one task goes on to from here, and keys it arrives with.
const PER_TASK: usize = 32;

/// A task, exactly: what a relayed revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TaskKey {
    pub(crate) id: String,
    pub(crate) principal: String,
    pub(crate) originator: String,
}

impl TaskKey {
    pub(crate) fn new(id: &str, principal: &str, originator: &str) -> Self {
        Self {
            id: id.to_owned(),
            principal: principal.to_owned(),
            originator: originator.to_owned(),
        }
    }
}

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

/// What else a task is, for revocations of an agent in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskFacts {
    /// The agents seen taking part in it here.
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

#[derive(Debug)]
struct Table {
    tasks: lru::LruCache<TaskKey, TaskHops>,
    /// When expired tasks were last swept (unix seconds): at most once a second.
    swept_at: i64,
    /// When a live task's eviction was last logged (unix seconds), and how many were evicted
    /// since: a table full under a steady stream of new tasks evicts one per task, and one
    /// warning a minute says as much as one per call.
    warned_at: i64,
    evicted_unwarned: u64,
}

/// Evictions are logged at most this often (seconds); the counter counts every one.
const WARN_EVERY: i64 = 60;

/// Every task's hops.
#[derive(Debug)]
pub(crate) struct Hops {
    table: Mutex<Table>,
    random: SystemRandom,
}

impl Hops {
    /// A table remembering at most `tasks` tasks (`[delegation] max_relayed_tasks`).
    pub(crate) fn new(tasks: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                tasks: lru::LruCache::new(NonZeroUsize::new(tasks).unwrap_or(NonZeroUsize::MIN)),
                swept_at: i64::MIN,
                warned_at: i64::MIN,
                evicted_unwarned: 0,
            }),
            random: SystemRandom::new(),
        }
    }
}

/// Why a call of a task cannot be given a key for the next node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// The task already went to as many nodes from here as are remembered.
    TooManyNodes,
    /// The system random generator failed.
    Random,
}

impl std::fmt::Display for NoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyNodes => write!(
                f,
                "this task already went to {PER_TASK} nodes from this one, as many as a \
                 revocation of it can follow; start another task"
            ),
            Self::Random => f.write_str("the system random generator failed"),
        }
    }
}

impl Hops {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(
        table: &'a mut Table,
        task: &TaskKey,
        facts: &TaskFacts,
        until: i64,
        now: i64,
    ) -> &'a mut TaskHops {
        if table.tasks.peek(task).is_some_and(|t| t.until <= now) {
            table.tasks.pop(task);
        }
        if !table.tasks.contains(task) && table.tasks.len() == table.tasks.cap().get() {
            // Full: the expired go first; a live task only when none has expired.
            if table.swept_at < now {
                table.swept_at = now;
                let expired: Vec<TaskKey> = table
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.until <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &expired {
                    table.tasks.pop(key);
                }
            }
            if table.tasks.len() == table.tasks.cap().get() {
                metrics::counter!(EVICTED).increment(1);
                table.evicted_unwarned += 1;
                if now.saturating_sub(table.warned_at) >= WARN_EVERY {
                    tracing::warn!(
                        tasks = table.tasks.cap().get(),
                        forgotten = table.evicted_unwarned,
                        "the revocation hops table is full of live tasks: the least recently \
                         used are forgotten (so many since the last warning; all counted in \
                         deputy_revocation_hops_evicted_total), and a revocation of one will \
                         reach only this node; raise [delegation] max_relayed_tasks (about 1 KiB \
                         a task) to remember more"
                    );
                    table.warned_at = now;
                    table.evicted_unwarned = 0;
                }
            }
        }
        let entry = table.tasks.get_or_insert_mut(task.clone(), || TaskHops {
            facts: TaskFacts::default(),
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
    /// new one. A call that cannot be given one is refused: a revocation could not follow it.
    pub(crate) fn key_for(
        &self,
        task: &TaskKey,
        facts: &TaskFacts,
        to: (&str, &str, &spiffe::SpiffeId),
        until: i64,
        now: i64,
    ) -> Result<String, NoKey> {
        let (address, server_name, spiffe_id) = to;
        let mut table = self.lock();
        let entry = Self::entry(&mut table, task, facts, until, now);
        if let Some(known) = entry
            .downstream
            .iter()
            .find(|d| d.address == address && d.server_name == server_name)
        {
            return Ok(known.key.clone());
        }
        if entry.downstream.len() >= PER_TASK {
            return Err(NoKey::TooManyNodes);
        }
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).map_err(|_| NoKey::Random)?;
        let key = URL_SAFE_NO_PAD.encode(bytes);
        entry.downstream.push(Downstream {
            address: address.to_owned(),
            server_name: server_name.to_owned(),
            spiffe_id: spiffe_id.clone(),
            key: key.clone(),
        });
        Ok(key)
    }

    /// Remembers that `task` (living until `until`) arrived with `key`; `false` when it
    /// already arrived with as many keys as are remembered.
    pub(crate) fn arrived_with(
        &self,
        task: &TaskKey,
        facts: &TaskFacts,
        key: &str,
        until: i64,
        now: i64,
    ) -> bool {
        let digest = hash(key);
        let mut table = self.lock();
        let entry = Self::entry(&mut table, task, facts, until, now);
        if entry.upstream.contains(&digest) {
            return true;
        }
        if entry.upstream.len() >= PER_TASK {
            return false;
        }
        entry.upstream.push(digest);
        true
    }

    /// When `task`'s last chain known here expires, if it arrived here with `key` and has not
    /// expired at `now`.
    pub(crate) fn arrived_with_key(&self, task: &TaskKey, key: &str, now: i64) -> Option<i64> {
        let digest = hash(key);
        let mut table = self.lock();
        let hops = table.tasks.get(task)?;
        let known = hops
            .upstream
            .iter()
            .any(|known| aws_lc_rs::constant_time::verify_slices_are_equal(known, &digest).is_ok());
        (hops.until > now && known).then_some(hops.until)
    }

    /// The nodes each task `covered` names went on to, live at `now`.
    pub(crate) fn downstream_of(
        &self,
        covered: impl Fn(&TaskKey, &TaskFacts) -> bool,
        now: i64,
    ) -> Vec<(TaskKey, Downstream)> {
        let table = self.lock();
        table
            .tasks
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

    const TASKS: usize = 64;

    fn task(id: &str) -> TaskKey {
        TaskKey::new(id, "user:a", "spiffe://example.org/agent/a")
    }

    #[test]
    fn a_task_keeps_one_key_per_node_it_went_to_and_accepts_only_keys_it_arrived_with() {
        let hops = Hops::new(TASKS);
        let facts = TaskFacts::default();
        let id = spiffe::SpiffeId::new("spiffe://example.org/agent/b").expect("id");
        let to_b = ("127.0.0.1:1", "b", &id);
        let key = hops
            .key_for(&task("t1"), &facts, to_b, 100, 0)
            .expect("key");
        assert_eq!(
            hops.key_for(&task("t1"), &facts, to_b, 100, 0),
            Ok(key.clone())
        );
        let to_c = ("127.0.0.1:2", "c", &id);
        assert_ne!(hops.key_for(&task("t1"), &facts, to_c, 100, 0), Ok(key));
        let sent = hops.downstream_of(|t, _| t.id == "t1", 10);
        assert_eq!(sent.len(), 2);
        assert!(
            hops.downstream_of(|t, _| t.id == "t1", 100).is_empty(),
            "expired"
        );

        assert!(hops.arrived_with(&task("t2"), &facts, "k-upstream", 100, 0));
        assert_eq!(
            hops.arrived_with_key(&task("t2"), "k-upstream", 10),
            Some(100)
        );
        assert_eq!(
            hops.arrived_with_key(&task("t2"), "k-other", 10),
            None,
            "another key"
        );
        assert_eq!(
            hops.arrived_with_key(&task("t1"), "k-upstream", 10),
            None,
            "another task"
        );
        let namesake = TaskKey::new("t2", "user:a", "spiffe://example.org/agent/m");
        assert_eq!(
            hops.arrived_with_key(&namesake, "k-upstream", 10),
            None,
            "the same id started by another agent is another task"
        );
        assert_eq!(
            hops.arrived_with_key(&task("t2"), "k-upstream", 100),
            None,
            "expired"
        );
    }

    #[test]
    fn a_task_that_went_to_as_many_nodes_as_are_remembered_gets_no_key_for_another() {
        let hops = Hops::new(TASKS);
        let id = spiffe::SpiffeId::new("spiffe://example.org/agent/b").expect("id");
        for n in 0..PER_TASK {
            let address = format!("127.0.0.1:{n}");
            hops.key_for(
                &task("t"),
                &TaskFacts::default(),
                (&address, "b", &id),
                100,
                0,
            )
            .expect("key");
        }
        assert_eq!(
            hops.key_for(
                &task("t"),
                &TaskFacts::default(),
                ("127.0.0.2:1", "b", &id),
                100,
                0
            ),
            Err(NoKey::TooManyNodes)
        );
    }

    #[test]
    fn a_table_full_of_live_tasks_forgets_the_least_recent_and_warns_once_a_minute() {
        let hops = Hops::new(TASKS);
        let facts = TaskFacts::default();
        for n in 0..TASKS + 10 {
            assert!(hops.arrived_with(&task(&format!("t{n}")), &facts, "k", 1000, 5));
        }
        {
            let table = hops.lock();
            assert_eq!(table.tasks.len(), TASKS);
            // The first eviction was logged; the nine after it wait for the next minute.
            assert_eq!((table.warned_at, table.evicted_unwarned), (5, 9));
        }
        assert_eq!(
            hops.arrived_with_key(&task("t0"), "k", 6),
            None,
            "forgotten"
        );
        assert_eq!(hops.arrived_with_key(&task("t10"), "k", 6), Some(1000));
        assert!(hops.arrived_with(&task("late"), &facts, "k", 1000, 5 + WARN_EVERY));
        let table = hops.lock();
        assert_eq!(
            (table.warned_at, table.evicted_unwarned),
            (5 + WARN_EVERY, 0)
        );
    }
}
