//! Who did what for whom: the records of one or more nodes' trails that a filter selects, in
//! time order (each trail's records carry the node they came from).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::record::{Event, Record};

/// What to select; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The task a call belonged to (or a revocation named).
    pub task: Option<String>,
    /// Whom a call acted for.
    pub principal: Option<String>,
    /// An agent that called, was called, or is in the call's chain.
    pub agent: Option<String>,
    /// Records at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// Records before this time.
    pub until: Option<time::OffsetDateTime>,
}

/// A selected record and the trail it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The trail's directory.
    pub trail: PathBuf,
    /// The record.
    pub record: Record,
}

impl Filter {
    /// Whether `record` is selected.
    pub fn matches(&self, record: &Record) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Some(time) = parse_time(&record.time) else {
                return false;
            };
            if self.since.is_some_and(|since| time < since)
                || self.until.is_some_and(|until| time >= until)
            {
                return false;
            }
        }
        match &record.event {
            Event::Call(call) => {
                let named = |agent: &str| {
                    call.agent == agent
                        || call.peer == agent
                        || call.service == agent
                        || call.actors.iter().any(|a| a == agent)
                };
                self.task
                    .as_deref()
                    .is_none_or(|t| call.task.as_deref() == Some(t))
                    && self
                        .principal
                        .as_deref()
                        .is_none_or(|p| call.principal.as_deref() == Some(p))
                    && self.agent.as_deref().is_none_or(named)
            }
            Event::Revocation {
                task,
                principal,
                agent,
                ..
            } => {
                self.task
                    .as_deref()
                    .is_none_or(|t| task.as_deref() == Some(t))
                    && self
                        .principal
                        .as_deref()
                        .is_none_or(|p| principal.as_deref() == Some(p))
                    && self
                        .agent
                        .as_deref()
                        .is_none_or(|a| agent.as_deref() == Some(a))
            }
            Event::Approval {
                task,
                principal,
                agent,
                ..
            } => {
                self.task.as_deref().is_none_or(|t| task == t)
                    && self.principal.as_deref().is_none_or(|p| principal == p)
                    && self.agent.as_deref().is_none_or(|a| agent == a)
            }
            Event::Identity {
                name, spiffe_id, ..
            } => {
                self.task.is_none()
                    && self.principal.is_none()
                    && self
                        .agent
                        .as_deref()
                        .is_none_or(|a| name == a || spiffe_id == a)
            }
            Event::TaskCredential {
                agent,
                task,
                principal,
                originator,
                ..
            } => {
                self.task.as_deref().is_none_or(|t| task == t)
                    && self.principal.as_deref().is_none_or(|p| principal == p)
                    && self
                        .agent
                        .as_deref()
                        .is_none_or(|a| agent == a || originator == a)
            }
            Event::RevocationRefused { peer, .. } => {
                self.task.is_none()
                    && self.principal.is_none()
                    && self.agent.as_deref().is_none_or(|a| peer == a)
            }
            Event::Lease { agent, .. } => {
                self.task.is_none()
                    && self.principal.is_none()
                    && self.agent.as_deref().is_none_or(|a| agent == a)
            }
            Event::Opened { .. }
            | Event::Checkpoint { .. }
            | Event::Policy { .. }
            | Event::Config { .. } => {
                self.task.is_none() && self.principal.is_none() && self.agent.is_none()
            }
        }
    }
}

/// `text` as an RFC 3339 time, if it is one.
pub fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The records of the trails in `dirs` that `filter` selects, oldest first. A line that is not
/// a record is skipped (`deputy audit verify` names it).
pub fn query(dirs: &[&Path], filter: &Filter) -> std::io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for dir in dirs {
        let text = crate::read(dir)?;
        for line in String::from_utf8_lossy(&text).lines() {
            if let Ok(record) = serde_json::from_str::<Record>(line)
                && filter.matches(&record)
            {
                found.push(Found {
                    trail: dir.to_path_buf(),
                    record,
                });
            }
        }
    }
    found.sort_by(|a, b| a.record.time.cmp(&b.record.time));
    Ok(found)
}
