//! Revocations: a task, an agent or a principal that no call may act under any more, for a
//! reason, until a time. Kept in the state database (a revocation survives a restart of
//! deputyd) and in memory (every call is checked against them).
//!
//! A record lives until the chains it covers would have expired (a task's) or its time bound
//! (an agent's or a principal's); then it is dropped: nothing it covers can still be presented.

use std::sync::{Arc, RwLock};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{State, StateError, store_error};

/// id -> the revocation as JSON.
const REVOCATIONS: TableDefinition<'static, &str, &str> = TableDefinition::new("revocations");

/// The most revocations a node keeps at once: each is checked against every call.
pub const MAX_REVOCATIONS: usize = 4096;

/// Of those, the most that other nodes relayed: what peers send can never take the places an
/// operator needs.
pub const MAX_RELAYED: usize = MAX_REVOCATIONS / 2;

/// Longest task id, SPIFFE ID or principal a revocation names.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// Longest bound a revocation may have: a day (chains live minutes; an agent that must stay
/// out for longer is removed from the configuration, or its registration deleted).
pub const MAX_BOUND_SECONDS: i64 = 86_400;

/// What is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Subject {
    /// Every chain of this task id.
    Task(String),
    /// Every call this agent (a SPIFFE ID) makes, receives, or takes part in through a chain.
    Agent(String),
    /// Every chain acting for this principal.
    Principal(String),
    /// One task exactly: its id, the principal it acts for and the agent that started it (task
    /// ids are chosen by whoever starts a task, so the id alone may name several). What one
    /// node relays to another.
    ExactTask {
        /// The task's id.
        id: String,
        /// Whom it acts for.
        principal: String,
        /// The SPIFFE ID of the agent that started it.
        originator: String,
    },
}

impl Subject {
    /// `task`, `agent` or `principal`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Task(_) | Self::ExactTask { .. } => "task",
            Self::Agent(_) => "agent",
            Self::Principal(_) => "principal",
        }
    }

    /// The task id, SPIFFE ID or principal.
    pub fn value(&self) -> &str {
        match self {
            Self::Task(v) | Self::Agent(v) | Self::Principal(v) => v,
            Self::ExactTask { id, .. } => id,
        }
    }

    /// Every name the subject holds, for validation.
    fn names(&self) -> Vec<&str> {
        match self {
            Self::Task(v) | Self::Agent(v) | Self::Principal(v) => vec![v],
            Self::ExactTask {
                id,
                principal,
                originator,
            } => vec![id, principal, originator],
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ExactTask {
                id,
                principal,
                originator,
            } => write!(f, "task {id} (started by {originator} for {principal})"),
            _ => write!(f, "{} {}", self.kind(), self.value()),
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `rev_` and hex; unique.
    pub id: String,
    /// What it revokes.
    pub subject: Subject,
    /// Why, as the operator (or the node it came from) said.
    pub reason: String,
    /// Who revoked it: an operator (`uid 1000 (alice)`) or a node (`node spiffe://...`).
    pub by: String,
    /// When, unix seconds.
    pub at: i64,
    /// Until when, unix seconds: after this nothing it covers can still be presented.
    pub until: i64,
    /// Another node sent it (it counts against [`MAX_RELAYED`]).
    #[serde(default)]
    pub relayed: bool,
}

/// What a call is, for the revocations to judge: its task, principal and every agent in it
/// (caller, target, each link's delegator and delegate).
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// The task the call belongs to, if any.
    pub task: Option<&'a str>,
    /// Whom it acts for, if it carries a chain.
    pub principal: Option<&'a str>,
    /// The agent that started its task, if it carries a chain.
    pub originator: Option<&'a str>,
    /// The SPIFFE IDs of the agents taking part.
    pub agents: &'a [&'a str],
}

impl Revocation {
    /// Whether this revocation covers `call` at `now`.
    pub fn covers(&self, call: &CallFacts<'_>, now: i64) -> bool {
        if now >= self.until {
            return false;
        }
        match &self.subject {
            Subject::Task(task) => call.task == Some(task.as_str()),
            Subject::ExactTask {
                id,
                principal,
                originator,
            } => {
                call.task == Some(id.as_str())
                    && call.principal == Some(principal.as_str())
                    && call.originator == Some(originator.as_str())
            }
            Subject::Principal(principal) => call.principal == Some(principal.as_str()),
            Subject::Agent(agent) => call.agents.contains(&agent.as_str()),
        }
    }
}

/// Why a revocation cannot be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// An empty task id, SPIFFE ID or principal, or an empty reason.
    #[error("{0}")]
    Invalid(String),
    /// [`MAX_REVOCATIONS`] are in force (or, for a relayed one, [`MAX_RELAYED`]).
    #[error(
        "{0} revocations are in force on this node already; for a fleet-wide ban remove the \
         agent's registration instead"
    )]
    Full(usize),
    /// The state database failed.
    #[error("the revocation could not be recorded durably: {0}")]
    Store(#[from] StateError),
}

/// The node's revocations.
#[derive(Debug)]
pub struct Revocations {
    state: State,
    /// Those in force, for the check on every call; replaced only once the database has them.
    active: RwLock<Arc<Vec<Revocation>>>,
    /// Held by the one revocation being recorded.
    writer: std::sync::Mutex<()>,
}

impl Revocations {
    /// The revocations kept in `state`; those over at `now` are dropped.
    pub fn open(state: &State, now: i64) -> Result<Self, StateError> {
        let all = read_all(state)?;
        let (live, over): (Vec<Revocation>, Vec<Revocation>) =
            all.into_iter().partition(|r| r.until > now);
        let revocations = Self {
            state: state.clone(),
            active: RwLock::new(Arc::new(live)),
            writer: std::sync::Mutex::new(()),
        };
        revocations.write(&[], &over)?;
        Ok(revocations)
    }

    /// Those in force at `now`, newest first.
    pub fn list(&self, now: i64) -> Vec<Revocation> {
        let mut live: Vec<Revocation> = self
            .snapshot()
            .iter()
            .filter(|r| r.until > now)
            .cloned()
            .collect();
        live.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
        live
    }

    /// The revocation covering `call` at `now`, if one does. Cheap when none is in force.
    pub fn covering(&self, call: &CallFacts<'_>, now: i64) -> Option<Revocation> {
        let active = self.snapshot();
        active.iter().find(|r| r.covers(call, now)).cloned()
    }

    /// Whether any revocation is in force (the check is skipped when none is).
    pub fn any(&self) -> bool {
        !self.snapshot().is_empty()
    }

    /// Records that `subject` is revoked by `by` for `reason` from `now` until `until`,
    /// durably (`relayed`: another node sent it). A subject already revoked keeps its record,
    /// its bound extended to the later of the two; returns the record in force and whether it
    /// is new.
    pub fn revoke(
        &self,
        subject: Subject,
        reason: &str,
        by: &str,
        at: (i64, i64),
        relayed: bool,
    ) -> Result<(Revocation, bool), RevocationError> {
        let (now, until) = at;
        for value in subject.names() {
            if value.is_empty() || value.trim() != value {
                return Err(RevocationError::Invalid(format!(
                    "name the {} to revoke, without spaces around it",
                    subject.kind()
                )));
            }
            if value.len() > MAX_SUBJECT_BYTES || value.chars().any(unprintable) {
                return Err(RevocationError::Invalid(format!(
                    "a {} to revoke is at most {MAX_SUBJECT_BYTES} bytes of printable text",
                    subject.kind()
                )));
            }
        }
        if reason.trim().is_empty() {
            return Err(RevocationError::Invalid(
                "say why (a reason is kept with the revocation and told to every agent it \
                 refuses)"
                    .into(),
            ));
        }
        let until = until.min(now.saturating_add(MAX_BOUND_SECONDS));
        if until <= now {
            return Err(RevocationError::Invalid(
                "the revocation would be over at once; give it a bound in the future".into(),
            ));
        }
        // One revocation at a time; calls keep reading the records in force while this one is
        // committed (the new set replaces them only once it is on disk).
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let active = self.snapshot();
        let over: Vec<Revocation> = active.iter().filter(|r| r.until <= now).cloned().collect();
        let mut next: Vec<Revocation> = active.iter().filter(|r| r.until > now).cloned().collect();
        let (record, new) = match next.iter_mut().find(|r| r.subject == subject) {
            Some(existing) if existing.until >= until && over.is_empty() => {
                // Nothing changes: nothing to write (a peer repeating itself costs no disk).
                return Ok((existing.clone(), false));
            }
            Some(existing) => {
                existing.until = existing.until.max(until);
                // An operator's word on a subject outweighs a peer's: it no longer counts as
                // relayed.
                existing.relayed &= relayed;
                (existing.clone(), false)
            }
            None => {
                let (in_force, limit) = if relayed {
                    (next.iter().filter(|r| r.relayed).count(), MAX_RELAYED)
                } else {
                    (next.iter().filter(|r| !r.relayed).count(), MAX_REVOCATIONS)
                };
                if in_force >= limit {
                    return Err(RevocationError::Full(limit));
                }
                let record = Revocation {
                    id: format!("rev_{}", uuid::Uuid::now_v7().simple()),
                    subject,
                    reason: printable(reason),
                    by: printable(by),
                    at: now,
                    until,
                    relayed,
                };
                next.push(record.clone());
                (record, true)
            }
        };
        self.write(std::slice::from_ref(&record), &over)?;
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok((record, new))
    }

    fn snapshot(&self) -> Arc<Vec<Revocation>> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn write(&self, put: &[Revocation], remove: &[Revocation]) -> Result<(), StateError> {
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let write = self.state.db().begin_write().map_err(store_error)?;
        {
            let mut table = write.open_table(REVOCATIONS).map_err(store_error)?;
            for record in put {
                let json = serde_json::to_string(record).map_err(store_error)?;
                table
                    .insert(record.id.as_str(), json.as_str())
                    .map_err(store_error)?;
            }
            for record in remove {
                table.remove(record.id.as_str()).map_err(store_error)?;
            }
        }
        write.commit().map_err(store_error)
    }
}

fn read_all(state: &State) -> Result<Vec<Revocation>, StateError> {
    let read = state.db().begin_read().map_err(store_error)?;
    let table = match read.open_table(REVOCATIONS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(store_error(e)),
    };
    let mut all = Vec::new();
    for row in table.iter().map_err(store_error)? {
        let (_, json) = row.map_err(store_error)?;
        all.push(serde_json::from_str(json.value()).map_err(store_error)?);
    }
    Ok(all)
}

/// A control character or a direction mark: what could drive a terminal or reorder what an
/// operator reads.
fn unprintable(c: char) -> bool {
    c.is_control()
        || ('\u{200e}'..='\u{200f}').contains(&c)
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A reason as plain text of at most 200 characters: it is shown to agents and operators.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if unprintable(c) { ' ' } else { c })
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir, now: i64) -> Revocations {
        Revocations::open(&State::open(dir.path()).expect("state"), now).expect("open")
    }

    const ALPHA: &str = "spiffe://example.org/agent/alpha";

    #[test]
    fn a_revocation_covers_only_its_subject_until_its_bound_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let revocations = open(&dir, 100);
            assert!(!revocations.any());
            let (task, new) = revocations
                .revoke(
                    Subject::Task("t1".into()),
                    "leaked",
                    "uid 0",
                    (100, 160),
                    false,
                )
                .expect("task");
            assert!(new);
            revocations
                .revoke(
                    Subject::Agent(ALPHA.into()),
                    "rogue",
                    "uid 0",
                    (100, 130),
                    false,
                )
                .expect("agent");
            let call = |task, principal, agents| CallFacts {
                task,
                principal,
                originator: None,
                agents,
            };
            let covering = revocations
                .covering(&call(Some("t1"), Some("user:a"), &[]), 110)
                .expect("t1 is revoked");
            assert_eq!(covering.id, task.id);
            assert!(
                revocations
                    .covering(&call(Some("t2"), Some("user:a"), &[]), 110)
                    .is_none(),
                "another task goes on"
            );
            assert!(
                revocations
                    .covering(&call(Some("t2"), None, &[ALPHA]), 110)
                    .is_some(),
                "alpha in the chain"
            );
            assert!(
                revocations
                    .covering(&call(Some("t2"), None, &[ALPHA]), 130)
                    .is_none(),
                "the agent's bound is over"
            );
            assert!(
                revocations
                    .covering(&call(Some("t1"), None, &[]), 160)
                    .is_none(),
                "over with the task's chains"
            );
        }
        // A restart keeps what is in force and drops what is over.
        let revocations = open(&dir, 140);
        let kept = revocations.list(140);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].subject, Subject::Task("t1".into()));
        assert_eq!(kept[0].reason, "leaked");
    }

    #[test]
    fn an_exact_task_covers_only_the_task_its_originator_started_for_its_principal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let revocations = open(&dir, 0);
        let exact = Subject::ExactTask {
            id: "t1".into(),
            principal: "user:a".into(),
            originator: ALPHA.into(),
        };
        revocations
            .revoke(exact, "relayed", "node", (0, 100), true)
            .expect("revoke");
        let call = |principal, originator| CallFacts {
            task: Some("t1"),
            principal: Some(principal),
            originator: Some(originator),
            agents: &[],
        };
        assert!(revocations.covering(&call("user:a", ALPHA), 10).is_some());
        for (principal, originator) in [
            ("user:b", ALPHA),
            ("user:a", "spiffe://example.org/agent/mallory"),
        ] {
            assert!(
                revocations
                    .covering(&call(principal, originator), 10)
                    .is_none(),
                "a namesake task of {originator} for {principal} goes on"
            );
        }
        assert!(revocations.list(10)[0].relayed);
    }

    #[test]
    fn revoking_again_extends_the_bound_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let revocations = open(&dir, 0);
        let (first, _) = revocations
            .revoke(
                Subject::Principal("user:a".into()),
                "x",
                "op",
                (0, 50),
                false,
            )
            .expect("first");
        let (again, new) = revocations
            .revoke(
                Subject::Principal("user:a".into()),
                "y",
                "op",
                (10, 90),
                false,
            )
            .expect("again");
        assert!(!new);
        assert_eq!((again.id, again.until), (first.id, 90));
        for (subject, reason, until) in [
            (Subject::Task(" ".into()), "r", 10),
            (Subject::Task("t".into()), " ", 10),
            (Subject::Task("t".into()), "r", 0),
        ] {
            assert!(matches!(
                revocations.revoke(subject, reason, "op", (0, until), false),
                Err(RevocationError::Invalid(_))
            ));
        }
        let (capped, _) = revocations
            .revoke(
                Subject::Task("t".into()),
                "r\u{1b}[31m",
                "op",
                (0, i64::MAX),
                false,
            )
            .expect("capped");
        assert_eq!(capped.until, MAX_BOUND_SECONDS);
        assert_eq!(capped.reason, "r [31m");
    }
}
