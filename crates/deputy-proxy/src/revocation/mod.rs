//! Revocation on the data path: a revoked task, agent or principal is refused at both ends
//! (`revoked` problem), the calls in flight under it are cut (their streams end with an error,
//! an HTTP/2 stream is reset), the contexts it was delivered in are dropped, and the
//! credentials issued for its tasks are revoked (Vault drops their database users; database
//! sessions that joined the task close).
//!
//! Every call is registered here before it is checked, and the revoker records a revocation
//! before it cuts what is in flight: a call either sees the record or is found by the cut,
//! whichever comes first.
//!
//! A revocation follows the delegation tree (`cascade.rs` sends, `receive.rs` takes): each node
//! sends it to the nodes it extended the task to (`hops.rs`), which accept it only from a node
//! that did.

mod body;
mod cascade;
mod hops;
mod receive;
mod signal;

pub(crate) use cascade::NodeIdentity;
pub use cascade::{Asked, Outcome, PATH, Relayed};
pub(crate) use hops::{TaskFacts, TaskKey};
pub(crate) use receive::receive;

/// The header a node sends a task's revocation key in, to the node it extends the task to
/// (stripped from what agents send and receive, like every `Deputy-*` header).
pub(crate) const REVOCATION_KEY: &str = "deputy-revocation-key";

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deputy_state::{CallFacts, Revocation, RevocationError, Revocations, Subject};
use serde::Serialize;

use crate::body::Body;
use crate::context::ContextStore;
use crate::problem::ProblemKind;

/// Counter: calls refused because what they act under was revoked, by side.
pub const REFUSED: &str = "deputy_revoked_calls_refused_total";
/// Counter: calls in flight cut by a revocation.
pub const CUT: &str = "deputy_revoked_calls_cut_total";

/// Seconds a revocation outlasts the chains it covers: the clock skew chains are accepted with.
const CLOCK_SKEW: i64 = 60;

/// What a call acts under, as the revoker keeps it while the call is in flight. The agents'
/// SPIFFE IDs are shared (`Arc<str>`, made once per connection or agent): a call copies
/// pointers, not names.
#[derive(Debug, Default)]
pub(crate) struct Acting {
    pub(crate) task: Option<String>,
    pub(crate) principal: Option<String>,
    pub(crate) originator: Option<String>,
    pub(crate) agents: Vec<Arc<str>>,
}

impl Acting {
    /// `judge` of the call's facts, as revocations read them.
    fn judged<R>(&self, judge: impl FnOnce(&CallFacts<'_>) -> R) -> R {
        let agents: Vec<&str> = self.agents.iter().map(AsRef::as_ref).collect();
        judge(&CallFacts {
            task: self.task.as_deref(),
            principal: self.principal.as_deref(),
            originator: self.originator.as_deref(),
            agents: &agents,
        })
    }

    fn covered_by(&self, revocation: &Revocation, now: i64) -> bool {
        self.judged(|facts| revocation.covers(facts, now))
    }
}

/// A call in flight, as a revocation finds it.
#[derive(Debug)]
struct Live {
    acting: Acting,
    signal: Arc<signal::Signal>,
}

/// What a revocation did on this node.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The record in force.
    pub revocation: Revocation,
    /// Whether the subject was revoked here before (its bound was extended).
    pub already: bool,
    /// Calls in flight that were cut.
    pub calls_cut: usize,
    /// Contexts dropped.
    pub contexts_dropped: usize,
    /// Tasks whose credentials were revoked.
    pub task_credentials_ended: usize,
    /// Connections drained (an agent's).
    pub connections_drained: usize,
}

/// The node's revocations, and every call in flight they may cut.
#[derive(Debug)]
pub struct Revoker {
    records: Option<Arc<Revocations>>,
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
    contexts: Arc<ContextStore>,
    task_secrets: Option<deputy_secrets::task::TaskSecrets>,
    /// The local agents' SPIFFE IDs by name (credentials are held by name).
    agents: HashMap<String, String>,
    /// The data path's connections, drained when an agent at either end is revoked.
    registry: Arc<crate::connections::Registry>,
    /// Where each revocation applied here is recorded.
    trail: Option<Arc<deputy_audit::Trail>>,
    /// Where each task went from here, and the keys it arrived with.
    pub(crate) hops: hops::Hops,
    /// This node's own identity, to send revocations on with.
    node: Option<NodeIdentity>,
    /// The rounds of revocations this node has sent on.
    rounds: cascade::Rounds,
    /// Places for revocations from other nodes being applied and sent on.
    pub(crate) relays: Arc<tokio::sync::Semaphore>,
}

impl Revoker {
    /// Revocations kept in `records` (`None`: nothing is ever revoked), cutting into
    /// `contexts` and `task_secrets`; remembering where `relayed_tasks` tasks went on to.
    pub(crate) fn new(
        records: Option<Arc<Revocations>>,
        contexts: Arc<ContextStore>,
        task_secrets: Option<deputy_secrets::task::TaskSecrets>,
        (agents, relayed_tasks): (HashMap<String, String>, usize),
        node: Option<NodeIdentity>,
        registry: Arc<crate::connections::Registry>,
        trail: Option<Arc<deputy_audit::Trail>>,
    ) -> Self {
        Self {
            records,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            contexts,
            task_secrets,
            agents,
            hops: hops::Hops::new(relayed_tasks),
            node,
            rounds: cascade::Rounds::default(),
            relays: Arc::new(tokio::sync::Semaphore::new(cascade::RELAYS_AT_ONCE)),
            registry,
            trail,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call as it arrives (what it acts under is not known yet): a revocation
    /// made from now on cuts it once [`Watched::admit`] has said what that is. `None` when
    /// nothing can be revoked here.
    pub(crate) fn watch(self: &Arc<Self>) -> Option<Watched> {
        self.records.as_ref()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(signal::Signal::default());
        self.lock().insert(
            id,
            Live {
                acting: Acting::default(),
                signal: signal.clone(),
            },
        );
        Some(Watched {
            revoker: self.clone(),
            id,
            signal,
        })
    }

    /// Revokes `subject` (an operator, or a node the task came from: `by`, `relayed`) for
    /// `reason` from `at.0` until `at.1`: recorded durably first, then whatever is in flight or
    /// held under it is cut.
    pub fn revoke(
        &self,
        subject: Subject,
        reason: &str,
        by: &str,
        at: (i64, i64),
        relayed: bool,
    ) -> Result<Applied, RevocationError> {
        let now = at.0;
        let records = self.records.as_ref().ok_or_else(|| {
            RevocationError::Invalid("this deputyd keeps no state; it cannot revoke".into())
        })?;
        let (revocation, new) = records.revoke(subject, reason, by, at, relayed)?;
        let why = told(&revocation);
        let cut: Vec<Arc<signal::Signal>> = self
            .lock()
            .values()
            .filter(|live| live.acting.covered_by(&revocation, now))
            .map(|live| live.signal.clone())
            .collect();
        for signal in &cut {
            signal.cut(&why);
        }
        metrics::counter!(CUT).increment(cut.len() as u64);
        let dropped = self.contexts.revoke(&revocation, now);
        let contexts_dropped = dropped.len();
        // A task's credentials end with it, and with any context of it that was dropped (an
        // agent revoked in the middle of its chain).
        let task_credentials_ended = self.task_secrets.as_ref().map_or(0, |tasks| {
            tasks.end_where(|agent, task| {
                if dropped.iter().any(|(a, t)| a == agent && t == task) {
                    return true;
                }
                let holder = self.agents.get(agent).map_or("", String::as_str);
                let agents = [task.originator.as_str(), holder];
                revocation.covers(
                    &CallFacts {
                        task: Some(&task.id),
                        principal: Some(&task.principal),
                        originator: Some(&task.originator),
                        agents: &agents,
                    },
                    now,
                )
            })
        });
        // An agent's connections go too (the streams of a task share connections with other
        // tasks, so a task's are cut stream by stream, above).
        let connections_drained = match &revocation.subject {
            Subject::Agent(agent) => {
                let local = self
                    .agents
                    .iter()
                    .find(|(_, id)| *id == agent)
                    .map(|(name, _)| name.as_str());
                self.registry.drain_revoked(local, agent, &why)
            }
            Subject::Task(_) | Subject::ExactTask { .. } | Subject::Principal(_) => 0,
        };
        if let Some(trail) = &self.trail
            && let Err(e) = trail.append(deputy_audit::Event::Revocation {
                id: revocation.id.clone(),
                subject: revocation.subject.to_string(),
                task: match &revocation.subject {
                    Subject::Task(id) | Subject::ExactTask { id, .. } => Some(id.clone()),
                    Subject::Agent(_) | Subject::Principal(_) => None,
                },
                principal: match &revocation.subject {
                    Subject::Principal(p) | Subject::ExactTask { principal: p, .. } => {
                        Some(p.clone())
                    }
                    Subject::Task(_) | Subject::Agent(_) => None,
                },
                agent: match &revocation.subject {
                    Subject::Agent(a) => Some(a.clone()),
                    _ => None,
                },
                by: revocation.by.clone(),
                reason: revocation.reason.clone(),
                until: revocation.until,
                calls_cut: cut.len(),
            })
        {
            tracing::error!(error = %e, revocation = %revocation.id,
                "a revocation's audit record could not be written");
        }
        tracing::warn!(revocation = %revocation.id, subject = ?revocation.subject.to_string(),
            by = ?revocation.by, reason = ?revocation.reason, until = revocation.until,
            calls_cut = cut.len(), contexts_dropped, task_credentials_ended,
            connections_drained, "revoked");
        Ok(Applied {
            revocation,
            already: !new,
            calls_cut: cut.len(),
            contexts_dropped,
            task_credentials_ended,
            connections_drained,
        })
    }

    /// How long a revocation of `subject` must last when the operator does not say: a task's,
    /// until every chain of it that can still be presented here has expired (the chains this
    /// node starts live at most ten minutes); an agent's or
    /// a principal's has no natural end (`None`: the operator must give one).
    pub fn default_until(&self, subject: &Subject, now: i64) -> Option<i64> {
        let Subject::Task(task) = subject else {
            return None;
        };
        let origin = now.saturating_add(
            i64::try_from(crate::delegation::ORIGIN_TTL.as_secs()).unwrap_or(i64::MAX),
        );
        let received = self.contexts.latest_expiry_of_task(task).unwrap_or(now);
        Some(origin.max(received).saturating_add(CLOCK_SKEW))
    }

    /// The revocations in force at `now`, newest first.
    pub fn list(&self, now: i64) -> Vec<Revocation> {
        self.records.as_ref().map_or_else(Vec::new, |r| r.list(now))
    }
}

/// A call registered with the revoker: cut when what it acts under is revoked; taken out
/// when dropped.
#[derive(Debug)]
pub(crate) struct Watched {
    revoker: Arc<Revoker>,
    id: u64,
    signal: Arc<signal::Signal>,
}

impl Watched {
    /// Records what the call acts under (`facts`), then checks it against the revocations in
    /// force at `now`. In that order: a revocation made meanwhile either finds the facts (and
    /// cuts the call) or was recorded before the check (which refuses it).
    pub(crate) fn admit(&self, acting: Acting, now: i64) -> Result<(), Box<Revocation>> {
        let mut live = self.revoker.lock();
        let Some(entry) = live.get_mut(&self.id) else {
            return Ok(());
        };
        entry.acting = acting;
        // Checked only when something is revoked at all (the common case costs one load).
        let Some(records) = self.revoker.records.as_ref().filter(|r| r.any()) else {
            return Ok(());
        };
        entry
            .acting
            .judged(|facts| records.covering(facts, now))
            .map_or(Ok(()), |r| Err(Box::new(r)))
    }

    /// Why the call was cut, if it was: it must not take another step.
    pub(crate) fn cut_reason(&self) -> Option<String> {
        self.signal.is_cut().then(|| self.signal.why())
    }

    /// Resolves when the call is cut.
    pub(crate) async fn cut(&self) {
        std::future::poll_fn(|cx| self.signal.poll_cut(cx)).await;
    }

    /// `response`, whose body ends with an error the moment the call is revoked (the call
    /// stays registered until the body is done).
    pub(crate) fn guard(self, response: http::Response<Body>) -> http::Response<Body> {
        response.map(|inner| body::Revocable::wrap(inner, self))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.revoker.lock().remove(&self.id);
    }
}

/// What agents and other nodes are told of `revocation`: what, which record, until when and
/// why; never who (an operator's uid and name stay in this node's log and records).
pub(crate) fn told(revocation: &Revocation) -> String {
    format!(
        "{} was revoked ({}, until {}): {}",
        revocation.subject, revocation.id, revocation.until, revocation.reason
    )
}

/// The refusal of a call that `revocation` covers.
pub(crate) fn refusal(revocation: &Revocation, side: &'static str) -> (ProblemKind, String) {
    metrics::counter!(REFUSED, "side" => side).increment(1);
    (
        ProblemKind::Revoked,
        format!(
            "{}; no call may act under it. Start a new task once the operator has dealt with \
             the cause",
            told(revocation)
        ),
    )
}

/// Between stages: the refusal of a call that was cut, if it was.
pub(crate) fn stopped(
    watched: Option<&Watched>,
    request_id: &str,
) -> Option<crate::pipeline::Refused> {
    let why = watched?.cut_reason()?;
    Some(cut_problem(why, request_id))
}

/// `response`, cut with its call if it is watched.
pub(crate) fn guard(
    watched: Option<Watched>,
    response: http::Response<Body>,
) -> http::Response<Body> {
    match watched {
        Some(watched) => watched.guard(response),
        None => response,
    }
}

/// The refusal of a call cut while it ran, before its next step.
pub(crate) fn cut_problem(why: String, request_id: &str) -> crate::pipeline::Refused {
    metrics::counter!(REFUSED, "side" => "in_flight").increment(1);
    Box::new(crate::problem::Problem::new(
        ProblemKind::Revoked,
        format!("{why}; the call was stopped before it went on"),
        request_id,
    ))
}

/// Runs `work` (a call's stages) until it ends or the call is cut; a cut call is answered
/// with `revoked`, and what it was waiting on is dropped (an upstream request is reset).
pub(crate) async fn until_cut(
    work: impl std::future::Future<Output = crate::pipeline::Ran>,
    watched: Option<&Watched>,
    request_id: &str,
) -> crate::pipeline::Ran {
    let Some(watched) = watched else {
        return work.await;
    };
    tokio::select! {
        biased;
        () = watched.cut() => Err((
            "revoked",
            cut_problem(watched.cut_reason().unwrap_or_default(), request_id),
        )),
        ran = work => ran,
    }
}
