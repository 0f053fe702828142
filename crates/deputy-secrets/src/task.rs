//! Credentials scoped to one task (`per_task = true`): issued the first time a call or a
//! database session of that task needs them, and revoked when the task's chain expires.
//!
//! Each task of each agent logs in to Vault on its own (the agent's JWT-SVID, the agent's role),
//! so its credentials live under a token of their own: when the task ends, revoking that one
//! token revokes every lease it created (Vault drops the database users), and nothing of
//! another task or of the agent's standing secrets goes with it. A later call in the same task
//! whose chain lives longer extends the task; leases are renewed at about two thirds of their
//! TTL meanwhile, and a task's credentials are withdrawn (sessions that used them close) the
//! moment it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::JwtSvids;
use crate::agent::status::rfc3339;
use crate::plan::{Step, Terms};
use crate::secret::Credential;
use crate::spec::{AgentSecrets, Source};
use crate::vault::{Session, Vault};

/// Tasks holding credentials, by counter: issued, and ended (revoked).
pub const TASKS_STARTED: &str = "deputy_task_credentials_started_total";
/// Tasks whose credentials were revoked, by agent.
pub const TASKS_ENDED: &str = "deputy_task_credentials_ended_total";

/// The most tasks that may hold credentials on a node at once: each holds a Vault token and
/// leases, so a flood of tasks is refused rather than turned into a flood of database users.
pub const MAX_TASKS: usize = 1024;

type Slot = watch::Sender<Option<Arc<Credential>>>;

/// Every agent's per-task secrets.
#[derive(Clone)]
pub struct TaskSecrets {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSecrets").finish_non_exhaustive()
    }
}

struct Inner {
    vault: Vault,
    jwt: Arc<dyn JwtSvids>,
    /// agent -> (its Vault role, its per-task secrets by name)
    agents: HashMap<String, (String, HashMap<String, Source>)>,
    tasks: Mutex<HashMap<(String, String), Arc<Task>>>,
    /// Each task's loop, so that a stop waits for every revocation.
    loops: Mutex<JoinSet<()>>,
    stop: CancellationToken,
}

/// One task of one agent.
struct Task {
    agent: String,
    task: String,
    role: String,
    /// When the task's chain expires; later calls may extend it.
    until: watch::Sender<SystemTime>,
    /// Its credentials, one slot per per-task secret of the agent.
    slots: HashMap<String, Slot>,
    state: tokio::sync::Mutex<State>,
    /// Set once the task ended and its token was revoked (or is being).
    ended: CancellationToken,
}

#[derive(Default)]
struct State {
    session: Option<Arc<Session>>,
    token: Option<Terms>,
    leases: HashMap<String, Lease>,
    generation: u64,
}

struct Lease {
    id: String,
    terms: Terms,
}

/// A task holding credentials, as `/status` shows it (never a value).
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    /// The agent.
    pub agent: String,
    /// The task's id.
    pub task: String,
    /// When its credentials are revoked (the task's chain expires), RFC 3339.
    pub until: Option<String>,
    /// The secrets it holds now.
    pub secrets: Vec<String>,
}

impl TaskSecrets {
    /// Per-task secrets of `agents` (those declared `per_task`), obtained with `jwt` from
    /// `vault`; everything is revoked when `stop` is cancelled.
    pub fn new(
        vault: Vault,
        jwt: Arc<dyn JwtSvids>,
        agents: &[AgentSecrets],
        stop: CancellationToken,
    ) -> Self {
        let agents = agents
            .iter()
            .map(|a| {
                let secrets = a
                    .secrets
                    .iter()
                    .filter(|s| s.per_task)
                    .map(|s| (s.name.clone(), s.source.clone()))
                    .collect::<HashMap<_, _>>();
                (a.agent.clone(), (a.role.clone(), secrets))
            })
            .filter(|(_, (_, secrets))| !secrets.is_empty())
            .collect();
        Self {
            inner: Arc::new(Inner {
                vault,
                jwt,
                agents,
                tasks: Mutex::new(HashMap::new()),
                loops: Mutex::new(JoinSet::new()),
                stop,
            }),
        }
    }

    /// Whether `secret` of `agent` is issued per task.
    pub fn is_per_task(&self, agent: &str, secret: &str) -> bool {
        self.inner
            .agents
            .get(agent)
            .is_some_and(|(_, s)| s.contains_key(secret))
    }

    /// The credential of `agent`'s `secret` for `task`, whose chain expires at `until`: issued
    /// now if the task has none yet (its first use logs in to Vault for the task).
    pub async fn credential(
        &self,
        agent: &str,
        task: &str,
        secret: &str,
        until: SystemTime,
    ) -> Result<Arc<Credential>, String> {
        if until <= SystemTime::now() {
            return Err(format!(
                "task {task:?} has expired; its credentials are revoked"
            ));
        }
        let task = self.task(agent, task, until)?;
        let slot = task.slots.get(secret).ok_or_else(|| {
            format!(
                "agent {agent} has no per-task secret {secret:?}; declare it with per_task = true"
            )
        })?;
        if let Some(credential) = current(slot) {
            return Ok(credential);
        }
        let mut state = task.state.lock().await;
        if task.ended.is_cancelled() {
            return Err(format!(
                "task {:?} has ended; its credentials are revoked",
                task.task
            ));
        }
        // Another call may have issued it while this one waited.
        if let Some(credential) = current(slot) {
            return Ok(credential);
        }
        let session = match &state.session {
            Some(session) => session.clone(),
            None => {
                let (session, terms) = self.login(&task).await?;
                state.token = Some(terms);
                state.session = Some(session.clone());
                session
            }
        };
        let source = &self.inner.agents[agent].1[secret];
        let issued = session.issue(source).await.map_err(|e| e.to_string())?;
        state.generation += 1;
        let now = Instant::now();
        let leased = !issued.lease_id.is_empty() && !issued.ttl.is_zero();
        let credential = Arc::new(Credential {
            fields: issued.fields,
            expires_at: leased.then(|| SystemTime::now() + issued.ttl),
            generation: state.generation,
        });
        if leased {
            state.leases.insert(
                secret.to_owned(),
                Lease {
                    id: issued.lease_id,
                    terms: Terms {
                        since: now,
                        ttl: issued.ttl,
                        renewable: issued.renewable,
                        capped: false,
                    },
                },
            );
        }
        tracing::info!(agent = %task.agent, task = %task.task, %secret,
            path = %source.path(), ttl_s = issued.ttl.as_secs(), "task credential issued");
        slot.send_replace(Some(credential.clone()));
        drop(state);
        // Wake the task's loop: it has a lease to renew now.
        task.until.send_modify(|_| {});
        Ok(credential)
    }

    /// Follows `agent`'s `secret` for `task`: `None` once the task ended (or the credential
    /// lapsed), so that a session opened with it closes.
    pub fn watch(
        &self,
        agent: &str,
        task: &str,
        secret: &str,
    ) -> Option<watch::Receiver<Option<Arc<Credential>>>> {
        let tasks = self.inner.tasks.lock().ok()?;
        let task = tasks.get(&(agent.to_owned(), task.to_owned()))?;
        task.slots.get(secret).map(watch::Sender::subscribe)
    }

    /// The tasks holding credentials now, for `/status`.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        let Ok(tasks) = self.inner.tasks.lock() else {
            return Vec::new();
        };
        let mut statuses: Vec<TaskStatus> = tasks
            .values()
            .map(|t| TaskStatus {
                agent: t.agent.clone(),
                task: t.task.clone(),
                until: rfc3339(*t.until.borrow()),
                secrets: t
                    .slots
                    .iter()
                    .filter(|(_, s)| s.borrow().is_some())
                    .map(|(name, _)| name.clone())
                    .collect(),
            })
            .collect();
        statuses.sort_by(|a, b| (&a.agent, &a.task).cmp(&(&b.agent, &b.task)));
        statuses
    }

    /// Ends every task of `agent` now (the agent was removed): its credentials are revoked.
    pub fn remove_agent(&self, agent: &str) {
        if let Ok(tasks) = self.inner.tasks.lock() {
            for task in tasks.values().filter(|t| t.agent == agent) {
                task.ended.cancel();
            }
        }
    }

    /// Ends every task (deputyd stops): returns once each one's token is revoked (or Vault
    /// could not be reached).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let mut loops = self
            .inner
            .loops
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        while loops.join_next().await.is_some() {}
    }

    /// The task's entry, made (and its loop started) on first use; `until` extends it.
    fn task(&self, agent: &str, task: &str, until: SystemTime) -> Result<Arc<Task>, String> {
        let (role, secrets) = self
            .inner
            .agents
            .get(agent)
            .ok_or_else(|| format!("agent {agent} declares no per-task secret"))?;
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .map_err(|_| "the task credential table is poisoned".to_owned())?;
        let key = (agent.to_owned(), task.to_owned());
        if let Some(entry) = tasks.get(&key) {
            entry.until.send_if_modified(|at| {
                let later = until > *at;
                if later {
                    *at = until;
                }
                later
            });
            return Ok(entry.clone());
        }
        if tasks.len() >= MAX_TASKS {
            return Err(format!(
                "{MAX_TASKS} tasks hold credentials on this node already; retry when one ends"
            ));
        }
        let entry = Arc::new(Task {
            agent: agent.to_owned(),
            task: task.to_owned(),
            role: role.clone(),
            until: watch::channel(until).0,
            slots: secrets
                .keys()
                .map(|name| (name.clone(), watch::channel(None).0))
                .collect(),
            state: tokio::sync::Mutex::new(State::default()),
            ended: self.inner.stop.child_token(),
        });
        tasks.insert(key, entry.clone());
        metrics::counter!(TASKS_STARTED, "agent" => agent.to_owned()).increment(1);
        if let Ok(mut loops) = self.inner.loops.lock() {
            // Ended tasks' loops are reaped here, so the set holds live ones only.
            while loops.try_join_next().is_some() {}
            loops.spawn(run(self.inner.clone(), entry.clone()));
        }
        Ok(entry)
    }

    async fn login(&self, task: &Task) -> Result<(Arc<Session>, Terms), String> {
        let settings = self.inner.vault.settings();
        let jwt = self
            .inner
            .jwt
            .fetch(&task.agent, &settings.audience)
            .await
            .map_err(|e| format!("no JWT-SVID to log in with: {e}"))?;
        let (terms, session) = self
            .inner
            .vault
            .login_jwt(&task.role, &jwt)
            .await
            .map_err(|e| e.to_string())?;
        let terms = Terms {
            since: Instant::now(),
            ttl: terms.ttl,
            renewable: terms.renewable,
            capped: false,
        };
        Ok((Arc::new(session), terms))
    }
}

fn current(slot: &Slot) -> Option<Arc<Credential>> {
    slot.borrow()
        .clone()
        .filter(|c| c.is_valid_at(SystemTime::now()))
}

/// A task's life: renew its leases and token until its chain expires (or deputyd stops, or the
/// agent is removed), then withdraw its credentials and revoke its token.
async fn run(inner: Arc<Inner>, task: Arc<Task>) {
    let mut until = task.until.subscribe();
    loop {
        let end = *until.borrow_and_update();
        let left = end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left.is_zero() {
            break;
        }
        let (renew_at, what) = next_renewal(&*task.state.lock().await);
        let wake = renew_at
            .unwrap_or(Instant::now() + left)
            .min(Instant::now() + left);
        tokio::select! {
            () = task.ended.cancelled() => break,
            changed = until.changed() => if changed.is_err() { break } else { continue },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        if let Some(what) = what
            && renew_at.is_some_and(|at| at <= Instant::now())
        {
            renew(&task, what).await;
        }
    }
    task.ended.cancel();
    // Withdrawn before the revocation: nothing may use a credential being revoked.
    for slot in task.slots.values() {
        slot.send_replace(None);
    }
    if let Ok(mut tasks) = inner.tasks.lock() {
        tasks.remove(&(task.agent.clone(), task.task.clone()));
    }
    let session = task.state.lock().await.session.take();
    if let Some(session) = session {
        match session.revoke_token().await {
            Ok(()) => tracing::info!(agent = %task.agent, task = %task.task,
                "task ended: its Vault token and credentials revoked"),
            Err(e) => tracing::warn!(agent = %task.agent, task = %task.task, error = %e,
                "task ended, but revoking its Vault token failed; its credentials end with \
                 their TTL"),
        }
    }
    metrics::counter!(TASKS_ENDED, "agent" => task.agent.clone()).increment(1);
}

/// What to renew next: the token (`None` secret) or a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Renewal {
    Token,
    Lease(String),
}

fn next_renewal(state: &State) -> (Option<Instant>, Option<Renewal>) {
    let mut best: (Option<Instant>, Option<Renewal>) = (None, None);
    let mut consider = |terms: &Terms, what: Renewal| {
        let (at, step) = terms.next();
        if step == Step::Renew && best.0.is_none_or(|b| at < b) {
            best = (Some(at), Some(what));
        }
    };
    if let Some(token) = &state.token {
        consider(token, Renewal::Token);
    }
    for (name, lease) in &state.leases {
        consider(&lease.terms, Renewal::Lease(name.clone()));
    }
    best
}

async fn renew(task: &Task, what: Renewal) {
    let mut state = task.state.lock().await;
    let Some(session) = state.session.clone() else {
        return;
    };
    let now = Instant::now();
    match what {
        Renewal::Token => {
            let Some(terms) = state.token else { return };
            let asked = terms.ttl.max(Duration::from_secs(1));
            match session.renew_token(asked).await {
                Ok(granted) => state.token = Some(terms.renewed(now, asked, granted)),
                Err(e) => {
                    tracing::warn!(agent = %task.agent, task = %task.task, error = %e,
                        "renewing a task's Vault token failed");
                    // Not renewed again: it lives out its TTL (and its leases with it).
                    state.token = Some(Terms {
                        capped: true,
                        ..terms
                    });
                }
            }
        }
        Renewal::Lease(name) => {
            let Some(lease) = state.leases.get_mut(&name) else {
                return;
            };
            let asked = lease.terms.ttl.max(Duration::from_secs(1));
            match session.renew_lease(&lease.id, asked).await {
                Ok(granted) => {
                    lease.terms = lease.terms.renewed(now, asked, granted);
                    if let Some(slot) = task.slots.get(&name) {
                        slot.send_modify(|c| {
                            if let Some(c) = c {
                                *c = Arc::new(Credential {
                                    expires_at: Some(SystemTime::now() + granted),
                                    ..(**c).clone()
                                });
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(agent = %task.agent, task = %task.task, secret = %name,
                        error = %e, "renewing a task credential failed; it lives out its lease");
                    lease.terms.capped = true;
                    if e.is_lease_gone() {
                        state.leases.remove(&name);
                        if let Some(slot) = task.slots.get(&name) {
                            slot.send_replace(None);
                        }
                    }
                }
            }
        }
    }
}
