//! Audit records. Each is an [`Event`] in an envelope that orders and chains it ([`Record`]).
//! Fields are typed facts (who, for whom, what, how it ended); there is no field a header
//! value, a body, a query string or a credential could go in.

use serde::{Deserialize, Serialize};

/// One line of the trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its place in the node's trail, from 1.
    pub seq: u64,
    /// When it was written (RFC 3339, UTC).
    pub time: String,
    /// The hash of the line before it ([`crate::GENESIS`] for the first).
    pub prev: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// deputyd started writing the trail (after a start, or after it could not write).
    Opened {
        /// deputyd's version.
        version: String,
        /// Records the trail could not take since it was last opened (serve mode).
        lost: u64,
    },
    /// A call, at one end, as it was answered.
    Call(CallRecord),
    /// A revocation applied on this node.
    Revocation {
        /// The revocation's id.
        id: String,
        /// What was revoked, in words.
        subject: String,
        /// The task it revokes, if it revokes one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// The principal it revokes (or whose task it revokes), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        /// The agent it revokes, if it revokes one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// Who revoked it (an operator, or the node that relayed it).
        by: String,
        /// Why.
        reason: String,
        /// Until when (unix seconds).
        until: i64,
        /// Calls in flight it cut here.
        calls_cut: usize,
    },
    /// A checkpoint: the node's signed statement that the trail held `upto` records, the last
    /// hashing to this record's `prev` (see [`crate::checkpoint`]).
    Checkpoint {
        /// The records it vouches for.
        upto: u64,
        /// The signed statement (a compact JWS with the node's SVID chain in `x5c`).
        jws: String,
    },
    /// An identity of the node changed: an SVID arrived (first, or rotated), its source went
    /// away, or it expired.
    Identity {
        /// `deputyd` for the node's own, else the agent's name.
        name: String,
        /// Its SPIFFE ID.
        spiffe_id: String,
        /// `initializing`, `available`, `source_unavailable` or `expired`.
        state: String,
        /// The current SVID's serial.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        /// When it expires (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// An agent's secret from Vault was issued (a new generation), renewed, or changed state
    /// (never its value).
    Lease {
        /// The agent.
        agent: String,
        /// The secret's name.
        secret: String,
        /// `issued`, `renewed`, or the state it went to.
        change: String,
        /// Its generation (how many times it was issued).
        generation: u64,
        /// When its lease expires (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// A policy was loaded (at start, or a new revision replaced the serving one).
    Policy {
        /// Its revision.
        revision: String,
    },
    /// Another node's revocation was refused (forged, stale, or not this node's to take).
    RevocationRefused {
        /// The node that sent it (its verified SPIFFE ID).
        peer: String,
        /// The status it was answered with.
        status: u16,
        /// Why, as the sender was told.
        why: String,
    },
    /// A credential issued for one task (`per_task` secrets) was issued, or the task's
    /// credentials ended (its Vault token revoked, and with it what the token issued).
    TaskCredential {
        /// The agent.
        agent: String,
        /// The task.
        task: String,
        /// Whom the task acts for.
        principal: String,
        /// The agent that started the task.
        originator: String,
        /// The secret's name (`*` when every credential of the task ended).
        secret: String,
        /// `issued` or `ended`.
        change: String,
        /// How many credentials the task was issued so far.
        generation: u64,
    },
    /// The configuration was read again (SIGHUP).
    Config {
        /// The SHA-256 of the file as read (which configuration was in force from then on).
        file_sha256: String,
        /// `applied`, or `rejected` (the file does not load; what ran before keeps running).
        outcome: String,
        /// Agents removed from the data path.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<String>,
        /// What changed but takes effect only on restart, in words.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        on_restart: Vec<String>,
    },
    /// An operator decided an approval.
    Approval {
        /// The approval's id.
        id: String,
        /// `approved` or `denied`.
        decision: String,
        /// The operator.
        by: String,
        /// The agent whose call it was.
        agent: String,
        /// The service it called.
        service: String,
        /// The task it was in.
        task: String,
        /// Whom it acted for.
        principal: String,
    },
}

/// A call at one end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// `outbound` (a local agent called out) or `inbound` (a peer called a local agent).
    pub direction: String,
    /// The local agent.
    pub agent: String,
    /// The verified peer (inbound), or `-`.
    pub peer: String,
    /// The service called (outbound) or the local agent (inbound).
    pub service: String,
    /// The method.
    pub method: String,
    /// The path, without the query (which may carry secrets).
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The call's id, the same at both ends.
    pub request_id: String,
    /// The policy decision that judged it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// The approval it asked for (refused with `approval-required`) or went through with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The problem it was refused with, if it was (`urn:deputy:problem:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The task it belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Whom it acted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The agent that started the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    /// Every agent of the chain, in order (the delegation, as verified here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<String>,
    /// A dry run: nothing was delivered or spent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// An idempotent retry answered with the first call's kept response: nothing was done again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
}

fn is_false(flag: &bool) -> bool {
    !flag
}

impl Event {
    /// The type's name, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "opened",
            Self::Call(_) => "call",
            Self::Revocation { .. } => "revocation",
            Self::Approval { .. } => "approval",
            Self::RevocationRefused { .. } => "revocation_refused",
            Self::TaskCredential { .. } => "task_credential",
            Self::Config { .. } => "config",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Identity { .. } => "identity",
            Self::Lease { .. } => "lease",
            Self::Policy { .. } => "policy",
        }
    }
}
