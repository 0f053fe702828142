//! What the audit trail records of the node itself: its identities (an SVID arriving,
//! rotating, its source lost, expiring), its agents' Vault secrets (issued, renewed, their
//! state; never a value) and the policy revision it serves. Read from the same statuses
//! `/status` shows, once a second; what changed since is recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deputy_audit::{Event, Trail};
use tokio_util::sync::CancellationToken;

/// The node as the trail last recorded it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Seen {
    /// name -> (state, serial)
    identities: HashMap<String, (String, Option<String>)>,
    /// (agent, secret) -> (generation, renewals, state)
    secrets: HashMap<(String, String), (u64, u64, String)>,
    policy: Option<String>,
}

/// What the node is now.
pub(crate) fn snapshot(
    identities: &deputy_identity::IdentityManager,
    secrets: Option<&deputy_secrets::SecretsManager>,
    policy: Option<&deputy_policy::Policy>,
) -> (Seen, Vec<Event>) {
    let mut seen = Seen::default();
    let mut now = Vec::new();
    for status in identities.statuses() {
        let state = format!("{:?}", status.state).to_lowercase();
        seen.identities
            .insert(status.name.clone(), (state.clone(), status.serial.clone()));
        now.push(Event::Identity {
            name: status.name,
            spiffe_id: status.spiffe_id,
            state,
            serial: status.serial,
            expires_at: status.expires_at,
        });
    }
    for agent in secrets.map(|s| s.statuses()).unwrap_or_default() {
        for secret in agent.secrets {
            seen.secrets.insert(
                (agent.agent.clone(), secret.name.clone()),
                (secret.generation, secret.renewals, secret.state.to_owned()),
            );
            now.push(Event::Lease {
                agent: agent.agent.clone(),
                secret: secret.name,
                change: secret.state.to_owned(),
                generation: secret.generation,
                expires_at: secret.expires_at,
            });
        }
    }
    seen.policy = policy.map(deputy_policy::Policy::revision);
    if let Some(revision) = &seen.policy {
        now.push(Event::Policy {
            revision: revision.clone(),
        });
    }
    (seen, now)
}

/// The records for what changed from `before` to `after` (`events` describe `after`): the
/// decision, apart from reading and writing.
pub(crate) fn changes(before: &Seen, after: &Seen, events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter_map(|event| match event {
            Event::Identity { ref name, .. } => {
                (before.identities.get(name) != after.identities.get(name)).then_some(event)
            }
            Event::Lease {
                agent,
                secret,
                change,
                generation,
                expires_at,
            } => {
                let key = (agent.clone(), secret.clone());
                let (now, was) = (after.secrets.get(&key)?, before.secrets.get(&key));
                let change = match was {
                    Some(was) if was == now => return None,
                    Some(was) if was.0 != now.0 => "issued".to_owned(),
                    Some(was) if was.1 != now.1 => "renewed".to_owned(),
                    None if generation > 0 => "issued".to_owned(),
                    _ => change,
                };
                Some(Event::Lease {
                    agent,
                    secret,
                    change,
                    generation,
                    expires_at,
                })
            }
            Event::Policy { .. } => (before.policy != after.policy).then_some(event),
            other => Some(other),
        })
        .collect()
}

/// Records each task credential issued, and each task's credentials ended, as it happens (a
/// task may live less than a second: polling would miss it).
pub(crate) fn task_journal(trail: Arc<Trail>) -> deputy_secrets::task::TaskJournal {
    Arc::new(move |event: deputy_secrets::task::TaskEvent| {
        use deputy_secrets::task::TaskChange;
        let (secret, change, generation) = match event.change {
            TaskChange::Issued { secret, generation } => (secret, "issued", generation),
            TaskChange::Ended { revoked: true } => ("*".to_owned(), "ended", 0),
            TaskChange::Ended { revoked: false } => ("*".to_owned(), "ended, not revoked", 0),
        };
        let record = Event::TaskCredential {
            agent: event.agent,
            task: event.task.id,
            principal: event.task.principal,
            originator: event.task.originator,
            secret,
            change: change.to_owned(),
            generation,
        };
        if let Err(e) = trail.append(record) {
            tracing::error!(error = %e, "a task credential's audit record could not be written");
        }
    })
}

/// Records the node's changes once a second until `cancel`.
pub(crate) async fn record_changes(
    trail: Arc<Trail>,
    identities: Arc<deputy_identity::IdentityManager>,
    secrets: Option<Arc<deputy_secrets::SecretsManager>>,
    policy: Option<Arc<deputy_policy::Policy>>,
    cancel: CancellationToken,
) {
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (now, events) = snapshot(&identities, secrets.as_deref(), policy.as_deref());
        for event in changes(&seen, &now, events) {
            if let Err(e) = trail.append(event) {
                tracing::warn!(error = %e, "a change of the node could not be recorded");
            }
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(generation: u64, renewals: u64) -> (Seen, Vec<Event>) {
        let mut seen = Seen::default();
        seen.secrets.insert(
            ("alpha".into(), "db".into()),
            (generation, renewals, "available".into()),
        );
        let event = Event::Lease {
            agent: "alpha".into(),
            secret: "db".into(),
            change: "available".into(),
            generation,
            expires_at: None,
        };
        (seen, vec![event])
    }

    fn change_of(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Lease { change, .. } => change.clone(),
                other => other.kind().to_owned(),
            })
            .collect()
    }

    #[test]
    fn only_what_changed_is_recorded_and_a_lease_says_how() {
        let (first, events) = lease(1, 0);
        assert_eq!(
            change_of(&changes(&Seen::default(), &first, events)),
            ["issued"]
        );
        let (same, events) = lease(1, 0);
        assert!(changes(&first, &same, events).is_empty());
        let (renewed, events) = lease(1, 1);
        assert_eq!(change_of(&changes(&first, &renewed, events)), ["renewed"]);
        let (again, events) = lease(2, 0);
        assert_eq!(change_of(&changes(&renewed, &again, events)), ["issued"]);
        let policy = Seen {
            policy: Some("r1".into()),
            ..Seen::default()
        };
        let event = vec![Event::Policy {
            revision: "r1".into(),
        }];
        assert_eq!(changes(&Seen::default(), &policy, event.clone()).len(), 1);
        assert!(changes(&policy, &policy, event).is_empty());
    }
}
