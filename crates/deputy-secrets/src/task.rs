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

/// Tasks that began holding credentials, by agent.
pub const TASKS_STARTED: &str = "deputy_task_credentials_started_total";
/// Tasks whose credentials were revoked, by agent.
pub const TASKS_ENDED: &str = "deputy_task_credentials_ended_total";

/// The most tasks that may hold credentials on a node at once: each holds a Vault token and
/// leases, so a flood of tasks is refused rather than turned into a flood of database users.
pub const MAX_TASKS: usize = 1024;

/// The most tasks one agent may hold credentials for at once, so that one agent (an unnamed
/// task is a new task on every call) cannot take every place of the node.
pub const MAX_TASKS_PER_AGENT: usize = 128;

/// A credential this close to its end is not handed out: the call would arrive with it dead.
const MARGIN: Duration = Duration::from_secs(1);

/// A task, as its chain names it. Task ids are chosen by whoever starts a task, so two chains
/// are the same task only if they also share their originator and principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The task's id.
    pub id: String,
    /// Whom it acts for.
    pub principal: String,
    /// The SPIFFE ID of the agent that started it.
    pub originator: String,
}

type Slot = watch::Sender<Option<Arc<Credential>>>;

/// What happened to a task's credentials, as a journal (the audit trail) is told: never a
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    /// The agent.
    pub agent: String,
    /// The task.
    pub task: TaskRef,
    /// What happened.
    pub change: TaskChange,
}

/// See [`TaskEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskChange {
    /// `secret` was issued for the task (its `generation`th credential).
    Issued {
        /// The secret's name.
        secret: String,
        /// How many credentials the task was issued so far.
        generation: u64,
    },
    /// The task ended: its credentials were withdrawn and its Vault token revoked (`revoked`
    /// is false when Vault refused; they end with their TTL then).
    Ended {
        /// Whether Vault revoked the token.
        revoked: bool,
    },
}

/// Told of every [`TaskEvent`], in order per task; called on the task's own path, so it must
/// not block.
pub type TaskJournal = Arc<dyn Fn(TaskEvent) + Send + Sync>;

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
    tasks: Mutex<HashMap<(String, TaskRef), Arc<Task>>>,
    /// Agents removed: no task of theirs starts again.
    removed: Mutex<std::collections::HashSet<String>>,
    /// Each task's loop, so that a stop waits for every revocation.
    loops: Mutex<JoinSet<()>>,
    stop: CancellationToken,
    journal: std::sync::OnceLock<TaskJournal>,
}

/// One task of one agent.
struct Task {
    agent: String,
    task: TaskRef,
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
    token: Option<Renewing>,
    leases: HashMap<String, Renewing>,
    generation: u64,
}

/// A token or lease, renewed at two thirds of its life; after a failure, retried with a backoff
/// of its own while it still works.
struct Renewing {
    /// The lease id (empty for the token).
    id: String,
    terms: Terms,
    retry: Option<Instant>,
    failures: u32,
}

impl Renewing {
    fn new(id: String, terms: Terms) -> Self {
        Self {
            id,
            terms,
            retry: None,
            failures: 0,
        }
    }

    fn due(&self) -> Option<Instant> {
        let (at, step) = self.terms.next();
        (step == Step::Renew).then(|| self.retry.unwrap_or(at))
    }

    fn renewed(&mut self, now: Instant, asked: Duration, granted: Duration) {
        self.terms = self.terms.renewed(now, asked, granted);
        self.retry = None;
        self.failures = 0;
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let backoff = Duration::from_secs(1 << self.failures.min(5));
        self.retry = Some(crate::plan::retry_at(
            now,
            backoff,
            Some(self.terms.expires_at()),
        ));
    }
}

/// A task holding credentials, as `/status` shows it (never a value).
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    /// The agent.
    pub agent: String,
    /// The task's id.
    pub task: String,
    /// Whom it acts for.
    pub principal: String,
    /// The agent that started it.
    pub originator: String,
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
                removed: Mutex::default(),
                loops: Mutex::new(JoinSet::new()),
                stop,
                journal: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Tells `journal` of every credential issued and every task ended from now on (once; a
    /// second journal is ignored).
    pub fn set_journal(&self, journal: TaskJournal) {
        let _ = self.inner.journal.set(journal);
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
        task: &TaskRef,
        secret: &str,
        until: SystemTime,
    ) -> Result<Arc<Credential>, String> {
        if until <= SystemTime::now() {
            return Err(format!(
                "task {:?} has expired; its credentials are revoked",
                task.id
            ));
        }
        let entry = self.task(agent, task, until)?;
        let slot = entry.slots.get(secret).ok_or_else(|| {
            format!(
                "agent {agent} has no per-task secret {secret:?}; declare it with per_task = true"
            )
        })?;
        if let Some(credential) = current(slot) {
            return Ok(credential);
        }
        let mut state = entry.state.lock().await;
        let ended = || format!("task {:?} has ended; its credentials are revoked", task.id);
        if entry.ended.is_cancelled() {
            return Err(ended());
        }
        // Another call may have issued it while this one waited.
        if let Some(credential) = current(slot) {
            return Ok(credential);
        }
        // A token at its end (Vault would not extend it further) is replaced by a new login;
        // what it issued ends with it.
        let token_live = state
            .token
            .as_ref()
            .is_some_and(|t| Instant::now() + MARGIN < t.terms.expires_at());
        let session = match (&state.session, token_live) {
            (Some(session), true) => session.clone(),
            _ => {
                let (session, terms) = self.login(&entry).await?;
                state.token = Some(Renewing::new(String::new(), terms));
                state.session = Some(session.clone());
                session
            }
        };
        let source = &self.inner.agents[agent].1[secret];
        let issued = session.issue(source).await.map_err(|e| e.to_string())?;
        state.generation += 1;
        let leased = !issued.lease_id.is_empty() && !issued.ttl.is_zero();
        // It dies with the token that issued it, if that comes first.
        let token_end = state.token.as_ref().map(|t| t.terms.expires_at());
        let lease_end = Instant::now() + issued.ttl;
        let ends_in = token_end
            .map_or(lease_end, |t| t.min(lease_end))
            .saturating_duration_since(Instant::now());
        let credential = Arc::new(Credential {
            fields: issued.fields,
            expires_at: leased.then(|| SystemTime::now() + ends_in),
            generation: state.generation,
        });
        if leased {
            let terms = Terms {
                since: Instant::now(),
                ttl: issued.ttl,
                renewable: issued.renewable,
                capped: false,
            };
            state
                .leases
                .insert(secret.to_owned(), Renewing::new(issued.lease_id, terms));
        }
        tracing::info!(agent = %entry.agent, task = %task.id, principal = %task.principal,
            %secret, path = %source.path(), ttl_s = issued.ttl.as_secs(), "task credential issued");
        // The task may have ended while Vault answered: its loop revokes the token (it waits
        // for this lock to take the session), so the credential is not handed out.
        if entry.ended.is_cancelled() {
            return Err(ended());
        }
        slot.send_replace(Some(credential.clone()));
        self.inner.tell(
            &entry,
            TaskChange::Issued {
                secret: secret.to_owned(),
                generation: state.generation,
            },
        );
        drop(state);
        // Wake the task's loop: it has a lease to renew now.
        entry.until.send_modify(|_| {});
        Ok(credential)
    }

    /// Follows `agent`'s `secret` for `task`: `None` once the task ended (or the credential
    /// lapsed), so that a session opened with it closes.
    pub fn watch(
        &self,
        agent: &str,
        task: &TaskRef,
        secret: &str,
    ) -> Option<watch::Receiver<Option<Arc<Credential>>>> {
        let tasks = self.inner.lock_tasks();
        let task = tasks.get(&(agent.to_owned(), task.clone()))?;
        task.slots.get(secret).map(watch::Sender::subscribe)
    }

    /// The tasks holding credentials now, for `/status`.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        let tasks = self.inner.lock_tasks();
        let mut statuses: Vec<TaskStatus> = tasks
            .values()
            .map(|t| TaskStatus {
                agent: t.agent.clone(),
                task: t.task.id.clone(),
                principal: t.task.principal.clone(),
                originator: t.task.originator.clone(),
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
        let tasks = self.inner.lock_tasks();
        self.inner
            .removed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(agent.to_owned());
        for task in tasks.values().filter(|t| t.agent == agent) {
            task.ended.cancel();
        }
    }

    /// Ends every task `covered(agent, task)` names now (it was revoked): its credentials are
    /// revoked and the sessions that used them close. Returns how many ended.
    pub fn end_where(&self, covered: impl Fn(&str, &TaskRef) -> bool) -> usize {
        let tasks = self.inner.lock_tasks();
        let mut ended = 0;
        for task in tasks.values().filter(|t| covered(&t.agent, &t.task)) {
            if !task.ended.is_cancelled() {
                task.ended.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// Ends every task (deputyd stops): returns once each one's token is revoked (or Vault
    /// could not be reached).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let mut loops = std::mem::take(
            &mut *self
                .inner
                .loops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        while loops.join_next().await.is_some() {}
    }

    /// The task's entry, made (and its loop started) on first use; `until` extends it.
    fn task(&self, agent: &str, task: &TaskRef, until: SystemTime) -> Result<Arc<Task>, String> {
        let (role, secrets) = self
            .inner
            .agents
            .get(agent)
            .ok_or_else(|| format!("agent {agent} declares no per-task secret"))?;
        let mut tasks = self.inner.lock_tasks();
        let removed = self
            .inner
            .removed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(agent);
        if removed || self.inner.stop.is_cancelled() {
            return Err(format!(
                "agent {agent} is being removed, or deputyd is stopping"
            ));
        }
        let key = (agent.to_owned(), task.clone());
        // An entry whose end has begun is on its way out: a live chain starts it anew.
        if let Some(entry) = tasks.get(&key).filter(|e| !e.ended.is_cancelled()) {
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
        if tasks.keys().filter(|(a, _)| a == agent).count() >= MAX_TASKS_PER_AGENT {
            return Err(format!(
                "agent {agent} holds credentials for {MAX_TASKS_PER_AGENT} tasks already (a \
                 task it starts without Deputy-Task is a new one on every call); retry when one \
                 ends"
            ));
        }
        let entry = Arc::new(Task {
            agent: agent.to_owned(),
            task: task.clone(),
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
        let mut loops = self
            .inner
            .loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ended tasks' loops are reaped here, so the set holds live ones only.
        while loops.try_join_next().is_some() {}
        loops.spawn(run(self.inner.clone(), entry.clone()));
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
            // No TTL: the token does not expire (a root-like token); never renewed.
            ttl: if terms.ttl.is_zero() {
                Duration::from_secs(365 * 24 * 3600)
            } else {
                terms.ttl
            },
            renewable: terms.renewable && !terms.ttl.is_zero(),
            capped: false,
        };
        Ok((Arc::new(session), terms))
    }
}

impl Inner {
    fn tell(&self, task: &Task, change: TaskChange) {
        if let Some(journal) = self.journal.get() {
            journal(TaskEvent {
                agent: task.agent.clone(),
                task: task.task.clone(),
                change,
            });
        }
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, TaskRef), Arc<Task>>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn current(slot: &Slot) -> Option<Arc<Credential>> {
    slot.borrow()
        .clone()
        .filter(|c| c.is_valid_at(SystemTime::now() + MARGIN))
}

/// A task's life: renew its leases and token until its chain expires (or deputyd stops, or the
/// agent is removed), then withdraw its credentials and revoke its token.
async fn run(inner: Arc<Inner>, task: Arc<Task>) {
    let mut until = task.until.subscribe();
    loop {
        let end = *until.borrow_and_update();
        let Some(left) = end
            .duration_since(SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero())
        else {
            break;
        };
        let now = Instant::now();
        let (due, what) = next_renewal(&*task.state.lock().await);
        // Never sooner than a second from now: a lease Vault keeps granting seconds of must not
        // turn into a busy loop.
        let wake = due
            .map(|at| at.max(now + Duration::from_secs(1)))
            .unwrap_or(now + left)
            .min(now + left);
        tokio::select! {
            () = task.ended.cancelled() => break,
            changed = until.changed() => if changed.is_err() { break } else { continue },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        if let Some(what) = what
            && due.is_some_and(|at| at <= Instant::now())
        {
            renew(&task, what).await;
        }
    }
    task.ended.cancel();
    // Withdrawn before the revocation: nothing may use a credential being revoked.
    for slot in task.slots.values() {
        slot.send_replace(None);
    }
    {
        let mut tasks = inner.lock_tasks();
        let key = (task.agent.clone(), task.task.clone());
        // A new entry for the same task (a live chain after this one ended) stays.
        if tasks.get(&key).is_some_and(|e| Arc::ptr_eq(e, &task)) {
            tasks.remove(&key);
        }
    }
    // Taken under the lock a credential is issued under: none is issued after this.
    let session = task.state.lock().await.session.take();
    if let Some(session) = session {
        let revoked = match session.revoke_token().await {
            Ok(()) => {
                tracing::info!(agent = %task.agent, task = %task.task.id,
                    "task ended: its Vault token and credentials revoked");
                true
            }
            Err(e) => {
                tracing::warn!(agent = %task.agent, task = %task.task.id, error = %e,
                    "task ended, but revoking its Vault token failed; its credentials end \
                     with their TTL");
                false
            }
        };
        inner.tell(&task, TaskChange::Ended { revoked });
    }
    metrics::counter!(TASKS_ENDED, "agent" => task.agent.clone()).increment(1);
}

/// What to renew next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Renewal {
    Token,
    Lease(String),
}

fn next_renewal(state: &State) -> (Option<Instant>, Option<Renewal>) {
    let mut best: (Option<Instant>, Option<Renewal>) = (None, None);
    let mut consider = |renewing: &Renewing, what: Renewal| {
        if let Some(at) = renewing.due()
            && best.0.is_none_or(|b| at < b)
        {
            best = (Some(at), Some(what));
        }
    };
    if let Some(token) = &state.token {
        consider(token, Renewal::Token);
    }
    for (name, lease) in &state.leases {
        consider(lease, Renewal::Lease(name.clone()));
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
            let Some(token) = state.token.as_mut() else {
                return;
            };
            if now >= token.terms.expires_at() {
                // Gone, and its leases with it: what it issued no longer works. The task's next
                // call that needs a credential logs in again.
                tracing::warn!(agent = %task.agent, task = %task.task.id,
                    "a task's Vault token expired before it could be renewed; its credentials \
                     are withdrawn");
                *state = State {
                    generation: state.generation,
                    ..State::default()
                };
                for slot in task.slots.values() {
                    slot.send_replace(None);
                }
                return;
            }
            let asked = token.terms.ttl.max(Duration::from_secs(1));
            match session.renew_token(asked).await {
                Ok(granted) => token.renewed(now, asked, granted),
                Err(e) => {
                    tracing::warn!(agent = %task.agent, task = %task.task.id, error = %e,
                        "renewing a task's Vault token failed; retrying");
                    token.failed(now);
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
                    lease.renewed(now, asked, granted);
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
                Err(e) if e.is_lease_gone() => {
                    tracing::warn!(agent = %task.agent, task = %task.task.id, secret = %name,
                        error = %e, "a task's lease is gone; its credential is withdrawn");
                    state.leases.remove(&name);
                    if let Some(slot) = task.slots.get(&name) {
                        slot.send_replace(None);
                    }
                }
                Err(e) => {
                    tracing::warn!(agent = %task.agent, task = %task.task.id, secret = %name,
                        error = %e, "renewing a task credential failed; retrying");
                    lease.failed(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewing(ttl: u64, renewable: bool) -> Renewing {
        Renewing::new(
            "lease".into(),
            Terms {
                since: Instant::now(),
                ttl: Duration::from_secs(ttl),
                renewable,
                capped: false,
            },
        )
    }

    #[test]
    fn a_failed_renewal_is_retried_before_the_lease_ends() {
        let mut lease = renewing(30, true);
        let first = lease.due().expect("renewable");
        let now = Instant::now();
        lease.failed(now);
        let retry = lease.due().expect("retried");
        assert!(retry > now && retry < lease.terms.expires_at(), "{retry:?}");
        assert_ne!(retry, first);
        lease.renewed(
            Instant::now(),
            Duration::from_secs(30),
            Duration::from_secs(30),
        );
        assert!(lease.retry.is_none());
    }

    #[test]
    fn what_vault_will_not_extend_is_not_renewed() {
        assert!(renewing(30, false).due().is_none());
        let mut capped = renewing(30, true);
        capped.renewed(
            Instant::now(),
            Duration::from_secs(30),
            Duration::from_secs(5),
        );
        assert!(
            capped.due().is_none(),
            "Vault granted less than asked: its max TTL"
        );
    }

    #[test]
    fn the_next_renewal_is_the_earliest_of_the_token_and_the_leases() {
        let state = State {
            token: Some(renewing(3600, true)),
            leases: HashMap::from([
                ("slow".to_owned(), renewing(600, true)),
                ("fast".to_owned(), renewing(60, true)),
            ]),
            ..State::default()
        };
        assert_eq!(next_renewal(&state).1, Some(Renewal::Lease("fast".into())));
    }
}
