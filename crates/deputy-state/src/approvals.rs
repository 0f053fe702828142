//! Approvals: calls a policy allows only once a human approves them.
//!
//! An approval is bound to exactly one call (its [`Binding`]: agent, service, method, path,
//! query, a digest of the body, task and principal) and lives until its expiry. An operator
//! approves or denies it; the agent's retry of the identical call redeems an approved one, once.
//! Every change is committed to the state database before it is acted on, so approvals survive a
//! restart and a redeemed approval is never redeemed again.

use std::sync::{Mutex, MutexGuard};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{State, StateError};

/// approval id -> the approval, as JSON.
const APPROVALS: TableDefinition<'static, &str, &str> = TableDefinition::new("approvals");

/// How long a decided, used or expired approval is kept after its expiry, for `list` and `show`.
pub const KEPT_AFTER_EXPIRY: i64 = 24 * 3600;

/// The most approvals one agent may have pending: one agent cannot fill the node's bound.
pub const MAX_PENDING_PER_AGENT: usize = 100;

/// How much of a body the operator is shown.
const PREVIEW_BYTES: usize = 4096;

/// Exactly the call an approval is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The calling agent.
    pub agent: String,
    /// The service it calls.
    pub service: String,
    /// The request's method.
    pub method: String,
    /// Its path.
    pub path: String,
    /// Its query, as sent (empty without one).
    pub query: String,
    /// Its headers that change what the body means (`Content-Type`, `Content-Encoding`, method
    /// overrides), as sent (`name: value` lines).
    pub headers: String,
    /// SHA-256 of its body, hex.
    pub body_sha256: String,
    /// The task it belongs to, if any.
    pub task: Option<String>,
    /// Whom the task acts for, if any.
    pub principal: Option<String>,
}

impl Binding {
    /// The first part of the call that differs from `other`, by name.
    pub fn first_difference(&self, other: &Binding) -> Option<&'static str> {
        [
            ("agent", self.agent == other.agent),
            ("service", self.service == other.service),
            ("method", self.method == other.method),
            ("path", self.path == other.path),
            ("query", self.query == other.query),
            ("headers", self.headers == other.headers),
            ("body", self.body_sha256 == other.body_sha256),
            ("task", self.task == other.task),
            ("principal", self.principal == other.principal),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(name, _)| name)
    }
}

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for an operator.
    Pending,
    /// Approved: the identical call may pass, once.
    Approved,
    /// Denied by an operator.
    Denied,
    /// Approved and redeemed by the call.
    Used,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id (`apr_...`), which the agent sends back in `Deputy-Approval`.
    pub id: String,
    /// The call it is for.
    pub binding: Binding,
    /// Why the policy asks for it.
    pub reason: String,
    /// What the operator is shown of the body: its first 4 KiB as text (control characters
    /// escaped), and its length.
    pub body_preview: String,
    /// The body's length in bytes.
    pub body_bytes: usize,
    /// The request that asked for it.
    pub request_id: String,
    /// When it was asked for, unix seconds.
    pub created_at: i64,
    /// Until when it may be approved and redeemed, unix seconds.
    pub expires_at: i64,
    /// Where it stands.
    pub state: ApprovalState,
    /// Who approved or denied it (the operator as the admin socket attested them).
    pub decided_by: Option<String>,
    /// When, unix seconds.
    pub decided_at: Option<i64>,
    /// The operator's note.
    pub note: Option<String>,
    /// When the call redeemed it, unix seconds.
    pub used_at: Option<i64>,
}

impl Approval {
    /// Whether it has expired at `now` (a used one is done, not expired).
    pub fn is_expired(&self, now: i64) -> bool {
        self.state != ApprovalState::Used && now >= self.expires_at
    }
}

/// Why an approval cannot be asked for, decided or redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No such approval (never asked for here, or long expired).
    #[error("approval {0} is unknown to this deputyd (never asked for here, or long expired)")]
    Unknown(String),
    /// Not decided yet.
    #[error("approval {0} is still waiting for an operator")]
    Pending(String),
    /// An operator denied it.
    #[error("approval {id} was denied by {by}{}", note.as_ref().map(|n| format!(": {n}")).unwrap_or_default())]
    Denied {
        /// The approval.
        id: String,
        /// Who denied it.
        by: String,
        /// Their note.
        note: Option<String>,
    },
    /// Already redeemed: an approval lets one call through.
    #[error("approval {0} was already used: an approval lets one call through; ask again")]
    Used(String),
    /// Past its expiry.
    #[error("approval {0} has expired; ask again")]
    Expired(String),
    /// The call is not the one approved.
    #[error(
        "approval {id} is for another call: its {what} differs; only the identical call may \
         ride on an approval"
    )]
    Mismatch {
        /// The approval.
        id: String,
        /// The first part that differs.
        what: &'static str,
    },
    /// Already approved or denied.
    #[error("approval {id} was already {state:?} by {by}")]
    AlreadyDecided {
        /// The approval.
        id: String,
        /// Its state.
        state: ApprovalState,
        /// Who decided it.
        by: String,
    },
    /// Too many approvals pending.
    #[error(
        "{0} approvals are pending on this deputyd, its bound; decide some (deputy approvals \
         list) before more are asked for"
    )]
    Full(usize),
    /// Too many approvals pending for one agent.
    #[error(
        "agent {agent} has {MAX_PENDING_PER_AGENT} approvals pending already; they must be \
         decided before it asks for more"
    )]
    AgentFull {
        /// The agent.
        agent: String,
    },
    /// The state database failed.
    #[error("the approval could not be recorded durably: {0}")]
    Store(String),
}

/// The node's approvals.
#[derive(Debug)]
pub struct Approvals {
    state: State,
    max_pending: usize,
    /// One writer at a time, so that a read-check-write (redeem) is atomic.
    writer: Mutex<()>,
}

impl Approvals {
    /// The approvals of `state`, at most `max_pending` pending at once; those expired for
    /// longer than [`KEPT_AFTER_EXPIRY`] at `now` are dropped.
    pub fn open(state: &State, max_pending: usize, now: i64) -> Result<Self, StateError> {
        let approvals = Self {
            state: state.clone(),
            max_pending: max_pending.max(1),
            writer: Mutex::new(()),
        };
        let stale: Vec<String> = approvals
            .all()
            .map_err(StateError::Store)?
            .into_iter()
            .filter(|a| a.expires_at + KEPT_AFTER_EXPIRY <= now)
            .map(|a| a.id)
            .collect();
        approvals
            .write(|table| {
                for id in &stale {
                    table.remove(id.as_str())?;
                }
                Ok(())
            })
            .map_err(StateError::Store)?;
        Ok(approvals)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a pending approval for `binding`, or returns the one already pending for the
    /// identical call (an agent that asks twice gets one approval to wait for).
    pub fn request(
        &self,
        binding: Binding,
        body: &[u8],
        reason: &str,
        request_id: &str,
        ttl_seconds: i64,
        now: i64,
    ) -> Result<Approval, ApprovalError> {
        let _writer = self.lock();
        let mut all = self.all().map_err(ApprovalError::Store)?;
        // Those kept long enough go now, not only at start.
        let stale: Vec<String> = all
            .iter()
            .filter(|a| a.expires_at + KEPT_AFTER_EXPIRY <= now)
            .map(|a| a.id.clone())
            .collect();
        if !stale.is_empty() {
            self.write(|table| {
                for id in &stale {
                    table.remove(id.as_str())?;
                }
                Ok(())
            })
            .map_err(ApprovalError::Store)?;
            all.retain(|a| !stale.contains(&a.id));
        }
        if let Some(pending) = all.iter().find(|a| {
            a.state == ApprovalState::Pending && !a.is_expired(now) && a.binding == binding
        }) {
            return Ok(pending.clone());
        }
        let pending = all
            .iter()
            .filter(|a| a.state == ApprovalState::Pending && !a.is_expired(now))
            .count();
        if pending >= self.max_pending {
            return Err(ApprovalError::Full(self.max_pending));
        }
        let of_agent = all
            .iter()
            .filter(|a| {
                a.state == ApprovalState::Pending
                    && !a.is_expired(now)
                    && a.binding.agent == binding.agent
            })
            .count();
        if of_agent >= MAX_PENDING_PER_AGENT {
            return Err(ApprovalError::AgentFull {
                agent: binding.agent,
            });
        }
        let approval = Approval {
            id: format!("apr_{}", uuid::Uuid::now_v7().simple()),
            binding,
            reason: printable(reason),
            body_preview: printable(&String::from_utf8_lossy(
                &body[..body.len().min(PREVIEW_BYTES)],
            )),
            body_bytes: body.len(),
            request_id: request_id.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(ttl_seconds),
            state: ApprovalState::Pending,
            decided_by: None,
            decided_at: None,
            note: None,
            used_at: None,
        };
        self.put(&approval)?;
        Ok(approval)
    }

    /// Every approval kept, newest first.
    pub fn list(&self) -> Result<Vec<Approval>, ApprovalError> {
        let mut all = self.all().map_err(ApprovalError::Store)?;
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(all)
    }

    /// One approval.
    pub fn get(&self, id: &str) -> Result<Approval, ApprovalError> {
        let read = self.state.db().begin_read().map_err(store)?;
        let table = match read.open_table(APPROVALS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(ApprovalError::Unknown(id.to_owned()));
            }
            Err(e) => return Err(store(e)),
        };
        let json = table
            .get(id)
            .map_err(store)?
            .ok_or_else(|| ApprovalError::Unknown(id.to_owned()))?;
        serde_json::from_str(json.value()).map_err(|e| ApprovalError::Store(e.to_string()))
    }

    /// An operator (`by`) approves (`approve`) or denies a pending approval.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        note: Option<&str>,
        now: i64,
    ) -> Result<Approval, ApprovalError> {
        let _writer = self.lock();
        let mut approval = self.get(id)?;
        if approval.is_expired(now) {
            return Err(ApprovalError::Expired(id.to_owned()));
        }
        if approval.state != ApprovalState::Pending {
            return Err(ApprovalError::AlreadyDecided {
                id: id.to_owned(),
                state: approval.state,
                by: approval.decided_by.unwrap_or_default(),
            });
        }
        approval.state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        approval.decided_by = Some(by.to_owned());
        approval.decided_at = Some(now);
        approval.note = note.map(str::to_owned);
        self.put(&approval)?;
        Ok(approval)
    }

    /// Whether the call `binding` would pass on approval `id` now (a dry run): as [`redeem`],
    /// without using it.
    ///
    /// [`redeem`]: Approvals::redeem
    pub fn check(&self, id: &str, binding: &Binding, now: i64) -> Result<Approval, ApprovalError> {
        let approval = self.get(id)?;
        verdict(&approval, binding, now)?;
        Ok(approval)
    }

    /// The call `binding` redeems approval `id`: it passes only if the approval is approved,
    /// unexpired, unused and for exactly this call; it is then used, durably, before the call
    /// goes on.
    pub fn redeem(&self, id: &str, binding: &Binding, now: i64) -> Result<Approval, ApprovalError> {
        let _writer = self.lock();
        let mut approval = self.get(id)?;
        verdict(&approval, binding, now)?;
        approval.state = ApprovalState::Used;
        approval.used_at = Some(now);
        self.put(&approval)?;
        Ok(approval)
    }

    fn all(&self) -> Result<Vec<Approval>, String> {
        let read = self.state.db().begin_read().map_err(|e| e.to_string())?;
        let table = match read.open_table(APPROVALS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut all = Vec::new();
        for row in table.iter().map_err(|e| e.to_string())? {
            let (_, json) = row.map_err(|e| e.to_string())?;
            all.push(serde_json::from_str(json.value()).map_err(|e| e.to_string())?);
        }
        Ok(all)
    }

    fn put(&self, approval: &Approval) -> Result<(), ApprovalError> {
        let json =
            serde_json::to_string(approval).map_err(|e| ApprovalError::Store(e.to_string()))?;
        self.write(|table| {
            table.insert(approval.id.as_str(), json.as_str())?;
            Ok(())
        })
        .map_err(ApprovalError::Store)
    }

    fn write(
        &self,
        change: impl FnOnce(&mut redb::Table<'_, &str, &str>) -> Result<(), redb::StorageError>,
    ) -> Result<(), String> {
        let write = self.state.db().begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = write.open_table(APPROVALS).map_err(|e| e.to_string())?;
            change(&mut table).map_err(|e| e.to_string())?;
        }
        write.commit().map_err(|e| e.to_string())
    }
}

/// `text` with control characters escaped, so that what an agent's call put in it cannot drive
/// the operator's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Whether `approval` lets the call `binding` through at `now`.
fn verdict(approval: &Approval, binding: &Binding, now: i64) -> Result<(), ApprovalError> {
    let id = approval.id.clone();
    if let Some(what) = approval.binding.first_difference(binding) {
        return Err(ApprovalError::Mismatch { id, what });
    }
    match approval.state {
        ApprovalState::Used => Err(ApprovalError::Used(id)),
        _ if approval.is_expired(now) => Err(ApprovalError::Expired(id)),
        ApprovalState::Pending => Err(ApprovalError::Pending(id)),
        ApprovalState::Denied => Err(ApprovalError::Denied {
            id,
            by: approval.decided_by.clone().unwrap_or_default(),
            note: approval.note.clone(),
        }),
        ApprovalState::Approved => Ok(()),
    }
}

fn store(error: impl std::fmt::Display) -> ApprovalError {
    ApprovalError::Store(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(body: &str) -> Binding {
        Binding {
            agent: "billing".into(),
            service: "payments".into(),
            method: "POST".into(),
            path: "/payments/refunds".into(),
            query: String::new(),
            headers: "content-type: application/json".into(),
            body_sha256: body.into(),
            task: Some("t-1".into()),
            principal: Some("user:alice".into()),
        }
    }

    fn open(dir: &std::path::Path) -> Approvals {
        Approvals::open(&State::open(dir).expect("state"), 2, 1000).expect("approvals")
    }

    #[test]
    fn an_approved_call_passes_once_and_only_as_approved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let approvals = open(dir.path());
        let asked = approvals
            .request(binding("b1"), b"{}", "refunds move money", "r1", 600, 1000)
            .expect("asked");
        // Asked again while pending: the same approval.
        let again = approvals
            .request(binding("b1"), b"{}", "refunds move money", "r2", 600, 1001)
            .expect("asked");
        assert_eq!(again.id, asked.id);
        assert_eq!(
            approvals.redeem(&asked.id, &binding("b1"), 1002),
            Err(ApprovalError::Pending(asked.id.clone()))
        );
        approvals
            .decide(&asked.id, true, "uid 0 (root)", None, 1003)
            .expect("approved");
        assert!(matches!(
            approvals.redeem(&asked.id, &binding("other body"), 1004),
            Err(ApprovalError::Mismatch { what: "body", .. })
        ));
        let used = approvals
            .redeem(&asked.id, &binding("b1"), 1005)
            .expect("redeemed");
        assert_eq!(used.state, ApprovalState::Used);
        assert_eq!(used.decided_by.as_deref(), Some("uid 0 (root)"));
        assert_eq!(
            approvals.redeem(&asked.id, &binding("b1"), 1006),
            Err(ApprovalError::Used(asked.id.clone()))
        );
    }

    #[test]
    fn approvals_survive_a_restart_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let approvals = open(dir.path());
            let asked = approvals
                .request(binding("b"), b"", "why", "r", 60, 1000)
                .expect("asked");
            approvals
                .decide(&asked.id, true, "op", None, 1010)
                .expect("approved");
            asked.id
        };
        let approvals = open(dir.path());
        assert_eq!(
            approvals.get(&id).expect("kept").state,
            ApprovalState::Approved
        );
        assert_eq!(
            approvals.redeem(&id, &binding("b"), 1060),
            Err(ApprovalError::Expired(id.clone()))
        );
    }

    #[test]
    fn denied_decided_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let approvals = open(dir.path());
        let a = approvals
            .request(binding("a"), b"", "why", "r", 60, 1000)
            .expect("a");
        approvals
            .decide(&a.id, false, "op", Some("not today"), 1001)
            .expect("denied");
        assert!(matches!(
            approvals.decide(&a.id, true, "op2", None, 1002),
            Err(ApprovalError::AlreadyDecided { .. })
        ));
        let denied = approvals
            .redeem(&a.id, &binding("a"), 1003)
            .expect_err("denied");
        assert!(denied.to_string().contains("not today"), "{denied}");
        approvals
            .request(binding("b"), b"", "why", "r", 60, 1000)
            .expect("b");
        approvals
            .request(binding("c"), b"", "why", "r", 60, 1000)
            .expect("c");
        assert_eq!(
            approvals.request(binding("d"), b"", "why", "r", 60, 1000),
            Err(ApprovalError::Full(2))
        );
    }

    #[test]
    fn what_the_operator_is_shown_cannot_drive_a_terminal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let approvals = open(dir.path());
        let body = "{\"a\":\"\x1b[2J\"}".as_bytes();
        let asked = approvals
            .request(binding("x"), body, "tool \x1b]0;pwned\x07", "r", 60, 1000)
            .expect("asked");
        assert!(!asked.reason.contains('\x1b'), "{:?}", asked.reason);
        assert!(
            !asked.body_preview.contains('\x1b'),
            "{:?}",
            asked.body_preview
        );
        assert!(
            asked.body_preview.starts_with("{\"a\":"),
            "{:?}",
            asked.body_preview
        );
        assert_eq!(asked.body_bytes, body.len());
    }
}
