//! `Deputy-Context` handles: how an agent continues the task it was called for.
//!
//! When a verified chain arrives for a local agent, deputyd keeps the chain and gives the agent
//! an opaque handle (256 random bits). When the agent calls out with that handle, deputyd
//! extends the kept chain with a link signed by the agent's SVID. The handle is bound to the
//! agent it was issued to (another agent presenting it is refused) and dies with the chain.
//!
//! The calls each agent makes under each link it received are counted in the node's budget
//! ledger ([`deputy_state::BudgetLedger`]), by the link, not by the handle: the same link
//! received twice maps to the same count, and neither an evicted context nor a restart of
//! deputyd renews a budget.
//!
//! The store is bounded. When it is full, expired contexts go first, then the least recently
//! used; an agent holding an evicted handle gets a clear refusal and must be called again. The
//! ledger is bounded too, but never forgets an unexpired count: past its bound a new budgeted
//! chain is refused (503 `overloaded`).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deputy_delegation::VerifiedChain;
use deputy_state::{BudgetLedger, LedgerError};

use crate::problem::ProblemKind;

/// Prefix of every handle, so that a handle in a log or a bug report is recognisable.
const HANDLE_PREFIX: &str = "dctx_";

/// Random bytes per handle (256 bits; the issue asks for at least 128).
const HANDLE_BYTES: usize = 32;

/// Gauge: contexts held.
pub const CONTEXTS: &str = "deputy_contexts";
/// Counter: live contexts evicted because the store was full.
pub const CONTEXTS_EVICTED: &str = "deputy_contexts_evicted_total";

/// A chain received by a local agent; what it has spent under it is in the ledger.
#[derive(Debug)]
pub(crate) struct Context {
    /// The agent it was issued to (its name).
    pub(crate) agent: String,
    /// The verified chain, whose last link delegates to `agent`.
    pub(crate) chain: VerifiedChain,
    /// The last link's count in the ledger: the agent and the link's hash.
    ledger_key: String,
    budgets: Arc<BudgetLedger>,
}

impl Context {
    /// When the chain ends (unix seconds): the last link's expiry, the earliest of all.
    pub(crate) fn expires(&self) -> i64 {
        self.chain.last().exp
    }

    /// Calls left under the last link's budget, if it has one.
    pub(crate) fn remaining(&self) -> Option<u64> {
        let limit = self.chain.last().budget?.calls;
        Some(limit.saturating_sub(self.budgets.spent(&self.ledger_key)))
    }

    /// Counts one call, durably, before it is made. Returns what remains after it.
    pub(crate) fn spend(&self, now: i64) -> Result<Option<u64>, LedgerError> {
        let Some(limit) = self.chain.last().budget.map(|b| b.calls) else {
            return Ok(None);
        };
        on_disk(|| self.budgets.spend(&self.ledger_key, limit, now).map(Some))
    }

    /// Gives back a call that was counted but never left the node.
    pub(crate) fn refund(&self) {
        if self.chain.last().budget.is_none() {
            return;
        }
        if let Err(e) = on_disk(|| self.budgets.refund(&self.ledger_key)) {
            // Failing to give a call back errs on the side of the budget.
            tracing::warn!(agent = %self.agent, error = %e, "a budget refund was not recorded");
        }
    }
}

/// Runs a durable ledger commit, which waits for the disk: the worker's other tasks move to
/// another thread meanwhile (only budgeted calls pay for this; the multi-threaded runtime
/// allows it).
fn on_disk<T>(commit: impl FnOnce() -> T) -> T {
    if crate::may_block_in_place() {
        tokio::task::block_in_place(commit)
    } else {
        commit()
    }
}

/// The ledger key of the last link of `chain`: its hash, which covers its `jti`, its `aud`
/// (the one agent that may spend under it) and the chain it extends. Not the agent's name,
/// which a configuration may change.
fn ledger_key(chain: &VerifiedChain) -> String {
    chain.hashes.last().cloned().unwrap_or_default()
}

/// Longest a received budgeted link may live: its count is kept (on disk) until it expires, so
/// a link signed to live for years would hold a place in the ledger for years. deputyd signs
/// links for 10 minutes.
pub(crate) const MAX_BUDGETED_LINK_LIFETIME: i64 = 3600;

/// Why a handle cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ContextError {
    /// Never issued, evicted, or long expired.
    #[error(
        "this Deputy-Context is unknown to this deputyd (never issued here, expired, or evicted); \
         use the handle from the call you are serving, on the node that delivered it"
    )]
    Unknown,
    /// Issued to another agent.
    #[error(
        "this Deputy-Context was issued to another agent; an agent can only act under the \
         contexts delivered to it"
    )]
    NotYours,
    /// The chain has expired.
    #[error(
        "this Deputy-Context expired with its delegation chain; the task must be started again"
    )]
    Expired,
    /// What it acts under was revoked; the context was dropped.
    #[error("this Deputy-Context was dropped: {0}")]
    Revoked(String),
}

/// Handles of dropped (revoked) contexts remembered, so that an agent still holding one is told
/// why rather than that it is unknown.
const REVOKED_HANDLES_KEPT: usize = 1024;

#[derive(Debug)]
struct Inner {
    by_handle: lru::LruCache<String, std::sync::Arc<Context>>,
    /// (agent, last link hash) -> handle: one context per received link.
    by_link: HashMap<(String, String), String>,
    /// When expired contexts were last swept (unix seconds): a sweep walks the whole store, so
    /// it runs at most once a second; in between, a full store drops its least recently used.
    swept_at: i64,
    /// Handles dropped by a revocation -> why.
    revoked: lru::LruCache<String, String>,
}

/// Every context of this node, shared by the inbound and outbound sides.
#[derive(Debug)]
pub(crate) struct ContextStore {
    inner: Mutex<Inner>,
    random: SystemRandom,
    budgets: Arc<BudgetLedger>,
}

impl ContextStore {
    /// A store holding at most `capacity` contexts, counting budgets in `budgets`.
    pub(crate) fn new(capacity: usize, budgets: Arc<BudgetLedger>) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Inner {
                by_handle: lru::LruCache::new(capacity),
                by_link: HashMap::new(),
                swept_at: i64::MIN,
                revoked: lru::LruCache::new(
                    NonZeroUsize::new(REVOKED_HANDLES_KEPT).unwrap_or(NonZeroUsize::MIN),
                ),
            }),
            random: SystemRandom::new(),
            budgets,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle for `chain`, received by `agent`: the existing one if this link was received
    /// before, else a new one. A budgeted link the ledger has no room for is refused.
    pub(crate) fn issue(
        &self,
        agent: &str,
        chain: VerifiedChain,
        now: i64,
    ) -> Result<(String, std::sync::Arc<Context>), (ProblemKind, String)> {
        let link = chain.hashes[chain.hashes.len() - 1].clone();
        let key = (agent.to_owned(), link);
        let mut inner = self.lock();
        if let Some(handle) = inner.by_link.get(&key).cloned()
            && let Some(context) = inner.by_handle.get(&handle)
        {
            return Ok((handle, context.clone()));
        }
        let ledger_key = ledger_key(&chain);
        if chain.last().budget.is_some() {
            if chain.last().exp - now > MAX_BUDGETED_LINK_LIFETIME {
                return Err((
                    ProblemKind::ChainRejected,
                    format!(
                        "a budgeted link may live at most {MAX_BUDGETED_LINK_LIFETIME} s from \
                         now (its count is kept until it expires); this one lives {} s; sign \
                         budgeted links for less",
                        chain.last().exp - now
                    ),
                ));
            }
            self.budgets
                .admit(&ledger_key, chain.last().exp, now)
                .map_err(budget_refusal)?;
        }
        let mut bytes = [0u8; HANDLE_BYTES];
        self.random.fill(&mut bytes).map_err(|_| {
            (
                ProblemKind::ChainRejected,
                "cannot issue a context: the system random generator failed".to_owned(),
            )
        })?;
        let handle = format!("{HANDLE_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        if inner.by_handle.len() == inner.by_handle.cap().get() && inner.swept_at < now {
            inner.swept_at = now;
            purge_expired(&mut inner, now);
        }
        let context = std::sync::Arc::new(Context {
            agent: agent.to_owned(),
            chain,
            ledger_key,
            budgets: self.budgets.clone(),
        });
        if let Some((_, evicted)) = inner.by_handle.push(handle.clone(), context.clone()) {
            forget_link(&mut inner, &evicted);
            metrics::counter!(CONTEXTS_EVICTED).increment(1);
        }
        inner.by_link.insert(key, handle.clone());
        metrics::gauge!(CONTEXTS).set(inner.by_handle.len() as f64);
        Ok((handle, context))
    }

    /// Calls `agent` has left under the last link of `chain`: its budget less what the ledger
    /// counted under it (the link may have been received, and spent on, before).
    pub(crate) fn remaining_for(&self, chain: &VerifiedChain) -> Option<u64> {
        let granted = chain.last().budget?.calls;
        Some(granted.saturating_sub(self.budgets.spent(&ledger_key(chain))))
    }

    /// The context `handle` names, if `agent` may act under it at `now`.
    pub(crate) fn lookup(
        &self,
        handle: &str,
        agent: &str,
        now: i64,
    ) -> Result<std::sync::Arc<Context>, ContextError> {
        let context = {
            let mut inner = self.lock();
            match inner.by_handle.get(handle).cloned() {
                Some(context) => context,
                None => {
                    return Err(inner
                        .revoked
                        .get(handle)
                        .map_or(ContextError::Unknown, |why| {
                            ContextError::Revoked(why.clone())
                        }));
                }
            }
        };
        if context.agent != agent {
            return Err(ContextError::NotYours);
        }
        if context.expires() <= now {
            return Err(ContextError::Expired);
        }
        Ok(context)
    }

    /// When the last chain of `task` held here expires, if one is held.
    pub(crate) fn latest_expiry_of_task(&self, task: &str) -> Option<i64> {
        self.lock()
            .by_handle
            .iter()
            .filter(|(_, c)| c.chain.task() == task)
            .map(|(_, c)| c.expires())
            .max()
    }

    /// Drops every context `revocation` covers at `now` (their handles are remembered as
    /// revoked); returns the agent and task of each.
    pub(crate) fn revoke(
        &self,
        revocation: &deputy_state::Revocation,
        now: i64,
    ) -> Vec<(String, deputy_secrets::task::TaskRef)> {
        let mut inner = self.lock();
        let covered: Vec<String> = inner
            .by_handle
            .iter()
            .filter(|(_, c)| {
                let agents = c.chain.actors();
                revocation.covers(
                    &deputy_state::CallFacts {
                        task: Some(c.chain.task()),
                        principal: Some(c.chain.principal()),
                        originator: Some(c.chain.originator()),
                        agents: &agents,
                    },
                    now,
                )
            })
            .map(|(h, _)| h.clone())
            .collect();
        let why = crate::revocation::told(revocation);
        let mut dropped = Vec::new();
        for handle in &covered {
            if let Some(context) = inner.by_handle.pop(handle) {
                forget_link(&mut inner, &context);
                dropped.push((
                    context.agent.clone(),
                    crate::delegation::context_task_ref(&context),
                ));
            }
            inner.revoked.put(handle.clone(), why.clone());
        }
        metrics::gauge!(CONTEXTS).set(inner.by_handle.len() as f64);
        dropped
    }

    /// How many contexts are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_handle.len()
    }
}

/// The tasks behind the `Deputy-Context` handles this node issued, for what joins a task
/// outside an HTTP call (a PostgreSQL proxy session naming its handle).
#[derive(Debug, Clone)]
pub struct TaskContexts(pub(crate) std::sync::Arc<ContextStore>);

impl TaskContexts {
    /// The task behind `handle` if it was issued to `agent` and its chain is live, and when its
    /// chain expires.
    pub fn resolve(
        &self,
        agent: &str,
        handle: &str,
    ) -> Result<(deputy_secrets::task::TaskRef, std::time::SystemTime), String> {
        let now = crate::unix(std::time::SystemTime::now());
        let context = self
            .0
            .lookup(handle, agent, now)
            .map_err(|e| e.to_string())?;
        let expires = crate::at_unix(context.expires());
        Ok((crate::delegation::context_task_ref(&context), expires))
    }
}

/// The refusal of a call the ledger cannot count.
pub(crate) fn budget_refusal(error: LedgerError) -> (ProblemKind, String) {
    match error {
        LedgerError::Exhausted { limit } => (
            ProblemKind::BudgetExhausted,
            format!("all {limit} call(s) its delegation allows are made"),
        ),
        LedgerError::Expired => (
            ProblemKind::ContextRefused,
            ContextError::Expired.to_string(),
        ),
        other => (ProblemKind::Overloaded, other.to_string()),
    }
}

fn forget_link(inner: &mut Inner, context: &Context) {
    let link = context.chain.hashes[context.chain.hashes.len() - 1].clone();
    inner.by_link.remove(&(context.agent.clone(), link));
}

fn purge_expired(inner: &mut Inner, now: i64) {
    let expired: Vec<String> = inner
        .by_handle
        .iter()
        .filter(|(_, c)| c.expires() <= now)
        .map(|(h, _)| h.clone())
        .collect();
    for handle in expired {
        if let Some(context) = inner.by_handle.pop(&handle) {
            forget_link(inner, &context);
        }
    }
}

#[cfg(test)]
mod tests {
    use deputy_delegation::{Budget, LinkClaims};

    use super::*;

    /// A store of `capacity` contexts over a ledger in a directory of its own (kept with it).
    fn store_of(capacity: usize) -> (ContextStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = deputy_state::State::open(dir.path()).expect("state");
        let ledger = BudgetLedger::open(&state, 64, 0).expect("ledger");
        (ContextStore::new(capacity, Arc::new(ledger)), dir)
    }

    fn chain(hash: &str, exp: i64, budget: Option<u64>) -> VerifiedChain {
        VerifiedChain {
            links: vec![LinkClaims {
                iss: "spiffe://example.org/agent/a".into(),
                aud: "spiffe://example.org/agent/b".into(),
                sub: "user:alice".into(),
                task: "t1".into(),
                scope: vec!["tickets:read".into()],
                budget: budget.map(|calls| Budget { calls }),
                iat: 0,
                exp,
                jti: hash.into(),
                prev: None,
            }],
            compact: vec![format!("link-{hash}")],
            hashes: vec![hash.into()],
        }
    }

    #[test]
    fn a_handle_carries_at_least_128_random_bits_and_is_bound_to_its_agent() {
        let (store, _dir) = store_of(8);
        let (a, _) = store.issue("b", chain("h1", 100, None), 0).expect("issue");
        let (b, _) = store.issue("b", chain("h2", 100, None), 0).expect("issue");
        assert_ne!(a, b);
        let random = a.strip_prefix(HANDLE_PREFIX).expect("prefix");
        assert!(URL_SAFE_NO_PAD.decode(random).expect("b64").len() * 8 >= 128);
        assert!(store.lookup(&a, "b", 10).is_ok());
        assert_eq!(
            store.lookup(&a, "c", 10).err(),
            Some(ContextError::NotYours)
        );
        assert_eq!(
            store.lookup("dctx_nope", "b", 10).err(),
            Some(ContextError::Unknown)
        );
        assert_eq!(
            store.lookup(&a, "b", 100).err(),
            Some(ContextError::Expired)
        );
    }

    #[test]
    fn the_same_link_received_twice_shares_one_budget() {
        let (store, _dir) = store_of(8);
        let (first, context) = store.issue("b", chain("h1", 100, Some(2)), 0).expect("a");
        assert_eq!(context.spend(0), Ok(Some(1)));
        let (again, context) = store.issue("b", chain("h1", 100, Some(2)), 0).expect("b");
        assert_eq!(first, again);
        assert_eq!(context.remaining(), Some(1));
        assert_eq!(context.spend(0), Ok(Some(0)));
        assert_eq!(context.spend(0), Err(LedgerError::Exhausted { limit: 2 }));
        context.refund();
        assert_eq!(context.remaining(), Some(1));
        // Another agent receiving the same link (it cannot verify for both, but the store must
        // not mix them up) gets its own context.
        let (other, _) = store.issue("c", chain("h1", 100, Some(2)), 0).expect("c");
        assert_ne!(first, other);
    }

    #[test]
    fn the_budget_a_policy_sees_is_what_the_agent_has_not_spent() {
        let (store, _dir) = store_of(8);
        let received = chain("h1", 100, Some(3));
        assert_eq!(
            store.remaining_for(&received),
            Some(3),
            "a new link: all of it"
        );
        let (_, context) = store.issue("b", received.clone(), 0).expect("issue");
        context.spend(0).expect("spend");
        context.spend(0).expect("spend");
        assert_eq!(store.remaining_for(&received), Some(1), "received again");
        assert_eq!(
            store.remaining_for(&received),
            Some(1),
            "the count is the link's, whoever holds it"
        );
        assert_eq!(
            store.remaining_for(&chain("h2", 100, None)),
            None,
            "no budget"
        );
    }

    #[test]
    fn a_budgeted_link_that_would_hold_its_count_too_long_is_refused() {
        let (store, _dir) = store_of(8);
        let long = chain("h1", 10 + MAX_BUDGETED_LINK_LIFETIME + 1, Some(1));
        let (kind, detail) = store.issue("b", long, 10).expect_err("too long");
        assert_eq!(kind, ProblemKind::ChainRejected);
        assert!(detail.contains("may live at most"), "{detail}");
        let unbudgeted = chain("h2", 10 + MAX_BUDGETED_LINK_LIFETIME + 1, None);
        assert!(store.issue("b", unbudgeted, 10).is_ok());
    }

    #[test]
    fn an_evicted_context_does_not_renew_its_links_budget() {
        let (store, _dir) = store_of(1);
        let (_, context) = store.issue("b", chain("h1", 100, Some(1)), 0).expect("1");
        assert_eq!(context.spend(0), Ok(Some(0)));
        // A flood of other chains evicts the context...
        store.issue("b", chain("h2", 100, None), 0).expect("2");
        // ...and the link received again is as spent as it was.
        let (_, again) = store
            .issue("b", chain("h1", 100, Some(1)), 0)
            .expect("again");
        assert_eq!(again.remaining(), Some(0));
        assert_eq!(again.spend(0), Err(LedgerError::Exhausted { limit: 1 }));
    }

    #[test]
    fn a_full_store_drops_expired_contexts_first_then_the_least_recently_used() {
        let (store, _dir) = store_of(2);
        let (old, _) = store.issue("b", chain("h1", 10, None), 0).expect("1");
        let (live, _) = store.issue("b", chain("h2", 100, None), 0).expect("2");
        let (newer, _) = store.issue("b", chain("h3", 100, None), 50).expect("3");
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.lookup(&old, "b", 50).err(),
            Some(ContextError::Unknown)
        );
        assert!(store.lookup(&live, "b", 50).is_ok());
        assert!(store.lookup(&newer, "b", 50).is_ok());
        // Full of live contexts: the least recently used goes (`live` was used after `newer`).
        store.lookup(&live, "b", 50).expect("touch");
        let (_, _) = store.issue("b", chain("h4", 100, None), 50).expect("4");
        assert_eq!(
            store.lookup(&newer, "b", 50).err(),
            Some(ContextError::Unknown)
        );
        assert!(store.lookup(&live, "b", 50).is_ok());
    }
}
