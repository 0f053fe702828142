//! The budget ledger: how many calls an agent has made under each delegation link it received.
//!
//! A link is counted by its hash (which covers its `jti` and the `prev` hash of the chain it
//! extends) for as long as it is unexpired, whatever happens to the context handles that point
//! at it: resending the link, evicting its context or restarting deputyd never restores a call.
//! Every spend is committed durably before the call it pays for is forwarded. The ledger is
//! bounded: past `capacity` unexpired links a new one is refused (the caller answers 503), and
//! no count is ever dropped before its link expires.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::sync::{Mutex, MutexGuard};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::{State, StateError, store_error};

/// link hash -> (calls spent, link expiry in unix seconds).
const SPENT: TableDefinition<'static, &str, (u64, i64)> = TableDefinition::new("budget_spent");

/// Why a call cannot be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Every call the link allows has been made.
    #[error("all {limit} call(s) of the link's budget are spent")]
    Exhausted {
        /// The link's budget.
        limit: u64,
    },
    /// The ledger holds its bound of unexpired links; none can be dropped before it expires.
    #[error(
        "this deputyd is counting the budgets of {capacity} unexpired delegation links, its \
         bound; a new budgeted chain is refused until some expire (retry later, or raise \
         [delegation] max_budgeted_links)"
    )]
    Full {
        /// The bound.
        capacity: usize,
    },
    /// The link has expired (or was never admitted): nothing more is spent under it.
    #[error("the link has expired; nothing more can be spent under it")]
    Expired,
    /// The durable write failed, so the call is not made.
    #[error("the budget could not be recorded durably ({0}); the call is not made")]
    Store(String),
}

#[derive(Debug, Clone, Copy)]
struct Count {
    spent: u64,
    exp: i64,
}

#[derive(Debug)]
struct Inner {
    links: HashMap<String, Count>,
    /// When expired links were last swept (unix seconds): at most once a second.
    swept_at: i64,
}

/// The calls spent under every unexpired budgeted link this node received.
#[derive(Debug)]
pub struct BudgetLedger {
    state: State,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl BudgetLedger {
    /// Opens the ledger of `state`, holding at most `capacity` unexpired links; links expired
    /// at `now` are dropped. More unexpired links than `capacity` (a lowered bound) are all
    /// kept, and new ones refused until they expire.
    pub fn open(state: &State, capacity: usize, now: i64) -> Result<Self, StateError> {
        let mut links = HashMap::new();
        let mut expired = Vec::new();
        {
            let read = state.db().begin_read().map_err(store_error)?;
            match read.open_table(SPENT) {
                Ok(table) => {
                    for row in table.iter().map_err(store_error)? {
                        let (link, count) = row.map_err(store_error)?;
                        let (spent, exp) = count.value();
                        if exp <= now {
                            expired.push(link.value().to_owned());
                        } else {
                            links.insert(link.value().to_owned(), Count { spent, exp });
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        let ledger = Self {
            state: state.clone(),
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                links,
                swept_at: now,
            }),
        };
        ledger.forget(&expired).map_err(StateError::Store)?;
        tracing::debug!(
            links = ledger.len(),
            expired = expired.len(),
            "budget ledger loaded"
        );
        Ok(ledger)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for `link` (expiring at `exp`) if it is new; returns the calls already spent
    /// under it. Refused when the ledger is full of unexpired links.
    pub fn admit(&self, link: &str, exp: i64, now: i64) -> Result<u64, LedgerError> {
        let mut inner = self.lock();
        self.slot(&mut inner, link, exp, now)
            .map(|count| count.spent)
    }

    /// Counts one call under the admitted `link` (whose budget is `limit` calls), durably, and
    /// returns the calls left after it.
    /// `now` is read by the caller just before the call leaves: a link that expired while the
    /// call waited spends nothing more. Only an admitted link can be spent under: one swept
    /// after it expired is never counted again from zero.
    pub fn spend(&self, link: &str, limit: u64, now: i64) -> Result<u64, LedgerError> {
        let mut inner = self.lock();
        let Some(count) = inner.links.get(link).copied() else {
            return Err(LedgerError::Expired);
        };
        if count.exp <= now {
            return Err(LedgerError::Expired);
        }
        if count.spent >= limit {
            return Err(LedgerError::Exhausted { limit });
        }
        let spent = count.spent + 1;
        // Durable first, so that nothing forwarded is ever uncounted; the lock keeps the write
        // and the count in step.
        self.write(link, spent, count.exp)
            .map_err(LedgerError::Store)?;
        if let Some(count) = inner.links.get_mut(link) {
            count.spent = spent;
        }
        Ok(limit - spent)
    }

    /// Gives back one call counted under `link` that never left the node.
    pub fn refund(&self, link: &str) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let Some(count) = inner.links.get(link).copied() else {
            return Ok(());
        };
        let Some(spent) = count.spent.checked_sub(1) else {
            return Ok(());
        };
        self.write(link, spent, count.exp)
            .map_err(LedgerError::Store)?;
        if let Some(count) = inner.links.get_mut(link) {
            count.spent = spent;
        }
        Ok(())
    }

    /// Calls spent under `link` so far (0 for a link never counted).
    pub fn spent(&self, link: &str) -> u64 {
        self.lock().links.get(link).map_or(0, |c| c.spent)
    }

    /// Links counted.
    pub fn len(&self) -> usize {
        self.lock().links.len()
    }

    /// Whether no link is counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The count of `link`, made room for if new.
    fn slot<'a>(
        &self,
        inner: &'a mut Inner,
        link: &str,
        exp: i64,
        now: i64,
    ) -> Result<&'a mut Count, LedgerError> {
        if !inner.links.contains_key(link) && inner.links.len() >= self.capacity {
            self.sweep(inner, now)?;
            if inner.links.len() >= self.capacity {
                return Err(LedgerError::Full {
                    capacity: self.capacity,
                });
            }
        }
        match inner.links.entry(link.to_owned()) {
            Slot::Occupied(slot) => Ok(slot.into_mut()),
            // A new link spent nothing: it reaches the disk with its first call.
            Slot::Vacant(slot) => Ok(slot.insert(Count { spent: 0, exp })),
        }
    }

    /// Drops the links expired at `now`, at most once a second.
    fn sweep(&self, inner: &mut Inner, now: i64) -> Result<(), LedgerError> {
        if inner.swept_at >= now {
            return Ok(());
        }
        inner.swept_at = now;
        let expired: Vec<String> = inner
            .links
            .iter()
            .filter(|(_, c)| c.exp <= now)
            .map(|(link, _)| link.clone())
            .collect();
        self.forget(&expired).map_err(LedgerError::Store)?;
        for link in &expired {
            inner.links.remove(link);
        }
        Ok(())
    }

    fn write(&self, link: &str, spent: u64, exp: i64) -> Result<(), String> {
        self.transaction(|table| {
            table.insert(link, (spent, exp))?;
            Ok(())
        })
    }

    fn forget(&self, links: &[String]) -> Result<(), String> {
        if links.is_empty() {
            return Ok(());
        }
        self.transaction(|table| {
            for link in links {
                table.remove(link.as_str())?;
            }
            Ok(())
        })
    }

    /// One durable write transaction on the ledger's table.
    fn transaction(
        &self,
        write: impl FnOnce(&mut redb::Table<'_, &str, (u64, i64)>) -> Result<(), redb::StorageError>,
    ) -> Result<(), String> {
        let mut txn = self.state.db().begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(SPENT).map_err(|e| e.to_string())?;
            write(&mut table).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "link-a";

    fn open(dir: &std::path::Path, capacity: usize, now: i64) -> BudgetLedger {
        BudgetLedger::open(&State::open(dir).expect("state"), capacity, now).expect("ledger")
    }

    #[test]
    fn a_budget_is_spent_once_and_stays_spent_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), 8, 100);
        assert_eq!(ledger.admit(LINK, 200, 100), Ok(0));
        assert_eq!(ledger.spend(LINK, 2, 100), Ok(1));
        assert_eq!(ledger.spend(LINK, 2, 100), Ok(0));
        assert_eq!(
            ledger.spend(LINK, 2, 100),
            Err(LedgerError::Exhausted { limit: 2 })
        );
        // Admitting the same link again restores nothing.
        assert_eq!(ledger.admit(LINK, 200, 100), Ok(2));
        drop(ledger);

        let reopened = open(dir.path(), 8, 150);
        assert_eq!(reopened.spent(LINK), 2);
        assert_eq!(
            reopened.spend(LINK, 2, 150),
            Err(LedgerError::Exhausted { limit: 2 })
        );
    }

    #[test]
    fn a_refund_gives_back_one_call_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), 8, 100);
        ledger.admit(LINK, 200, 100).expect("admit");
        assert_eq!(ledger.spend(LINK, 1, 100), Ok(0));
        ledger.refund(LINK).expect("refund");
        ledger.refund(LINK).expect("nothing more to give back");
        assert_eq!(ledger.spent(LINK), 0);
        drop(ledger);
        let reopened = open(dir.path(), 8, 100);
        assert_eq!(reopened.spent(LINK), 0, "the refund reached the disk");
    }

    #[test]
    fn a_full_ledger_refuses_new_links_and_keeps_every_unexpired_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), 2, 100);
        ledger.admit("a", 1000, 100).expect("admit");
        assert_eq!(ledger.spend("a", 1, 100), Ok(0));
        assert_eq!(ledger.admit("b", 1000, 100), Ok(0));
        assert_eq!(
            ledger.admit("c", 1000, 101),
            Err(LedgerError::Full { capacity: 2 })
        );
        // A known link is still served when full.
        assert_eq!(
            ledger.spend("a", 1, 101),
            Err(LedgerError::Exhausted { limit: 1 })
        );
        assert_eq!(ledger.spent("a"), 1);

        // Nor does a restart forget a count to make room.
        drop(ledger);
        let reopened = open(dir.path(), 2, 102);
        assert_eq!(reopened.spent("a"), 1);
        assert_eq!(
            reopened.admit("c", 1000, 102),
            Ok(0),
            "b spent nothing, so it was never written: its room is free after a restart"
        );
    }

    #[test]
    fn expired_links_are_dropped_when_room_is_needed_and_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), 1, 100);
        ledger.admit("old", 110, 100).expect("admit");
        assert_eq!(ledger.spend("old", 5, 100), Ok(4));
        assert_eq!(
            ledger.admit("new", 1000, 105),
            Err(LedgerError::Full { capacity: 1 })
        );
        assert_eq!(ledger.admit("new", 1000, 111), Ok(0), "old expired at 110");
        assert_eq!(ledger.spent("old"), 0);
        assert_eq!(
            ledger.spend("old", 5, 111),
            Err(LedgerError::Expired),
            "a swept link is never counted again from zero"
        );
        assert_eq!(ledger.spend("new", 5, 111), Ok(4));
        drop(ledger);
        let reopened = open(dir.path(), 1, 2000);
        assert!(reopened.is_empty(), "everything expired by 2000");
    }

    #[test]
    fn nothing_is_spent_under_a_link_that_expired_while_the_call_waited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path(), 8, 100);
        ledger.admit(LINK, 200, 100).expect("admit");
        assert_eq!(ledger.spend(LINK, 5, 199), Ok(4));
        assert_eq!(ledger.spend(LINK, 5, 200), Err(LedgerError::Expired));
        assert_eq!(ledger.spent(LINK), 1);
    }

    #[test]
    fn a_second_deputyd_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = State::open(dir.path()).expect("first");
        let error = State::open(dir.path()).expect_err("second");
        let message = error.to_string();
        assert!(
            message.contains("run one deputyd per directory"),
            "{message}"
        );
    }
}
