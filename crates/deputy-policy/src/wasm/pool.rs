//! The wasm instances of one policy, bounded: at most `max_live` exist at once (idle or in use),
//! so a burst of concurrent decisions cannot make a node hold a burst of instances (each may
//! grow to [`MAX_INSTANCE_MEMORY`](super::MAX_INSTANCE_MEMORY)). A decision that finds none
//! idle and the bound reached waits for one to be given back, until its deadline.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// What [`Instances::take`] hands out: an idle instance, or the right to make one.
pub(crate) enum Taken<'a, T> {
    Idle(T),
    /// No instance was idle and the bound had room: make one (the place is counted already).
    Make(Slot<'a, T>),
}

/// A counted place for an instance being made: [`Slot::made`] gives it to the instance;
/// dropped otherwise (the instance could not be made), the place is free again.
#[must_use]
pub(crate) struct Slot<'a, T> {
    pool: &'a Instances<T>,
    made: bool,
}

impl<T> Slot<'_, T> {
    /// The instance exists: it keeps the place until it is retired.
    pub(crate) fn made(mut self) {
        self.made = true;
        self.pool.lock().made += 1;
    }
}

impl<T> Drop for Slot<'_, T> {
    fn drop(&mut self) {
        if !self.made {
            self.pool.retire();
        }
    }
}

/// The pool. `T` is an instance; the pool counts it from [`Taken::Make`] until it is given
/// back for good ([`Instances::retire`]) or dropped by its slot.
#[derive(Debug)]
pub(crate) struct Instances<T> {
    state: Mutex<State<T>>,
    returned: Condvar,
    max_live: usize,
}

#[derive(Debug)]
struct State<T> {
    idle: Vec<T>,
    live: usize,
    peak: usize,
    made: u64,
}

/// Counts of one policy's instances, for tests and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceCounts {
    /// Instances existing now (idle or in use).
    pub live: usize,
    /// Most that existed at once.
    pub peak: usize,
    /// Instances made since the policy loaded (the first one included).
    pub made: u64,
    /// The bound on `live`.
    pub max_live: usize,
}

impl<T> Instances<T> {
    #[cfg(test)]
    fn new(max_live: usize) -> Self {
        Self::starting_with(max_live, Vec::new())
    }

    /// A pool of at most `max_live` holding `first`, the instance made while loading.
    pub(crate) fn with_first(max_live: usize, first: T) -> Self {
        Self::starting_with(max_live, vec![first])
    }

    fn starting_with(max_live: usize, idle: Vec<T>) -> Self {
        let live = idle.len();
        Self {
            state: Mutex::new(State {
                idle,
                live,
                peak: live,
                made: live as u64,
            }),
            returned: Condvar::new(),
            max_live: max_live.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle instance, or a slot to make one, waiting until `deadline` while the bound is
    /// reached; `None` when the deadline passed first.
    pub(crate) fn take(&self, deadline: Instant) -> Option<Taken<'_, T>> {
        let mut state = self.lock();
        loop {
            if let Some(instance) = state.idle.pop() {
                return Some(Taken::Idle(instance));
            }
            if state.live < self.max_live {
                state.live += 1;
                state.peak = state.peak.max(state.live);
                return Some(Taken::Make(Slot {
                    pool: self,
                    made: false,
                }));
            }
            let wait = deadline.checked_duration_since(Instant::now())?;
            state = self
                .returned
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Keeps `instance` for the next decision.
    pub(crate) fn give_back(&self, instance: T) {
        self.lock().idle.push(instance);
        self.returned.notify_one();
    }

    /// An instance that is not kept (it trapped, or grew too large) no longer counts.
    pub(crate) fn retire(&self) {
        let mut state = self.lock();
        state.live = state.live.saturating_sub(1);
        drop(state);
        self.returned.notify_one();
    }

    pub(crate) fn counts(&self) -> InstanceCounts {
        let state = self.lock();
        InstanceCounts {
            live: state.live,
            peak: state.peak,
            made: state.made,
            max_live: self.max_live,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn past_the_bound_a_caller_waits_for_a_returned_instance() {
        let pool = Arc::new(Instances::<u32>::new(1));
        let soon = || Instant::now() + Duration::from_secs(5);
        let Some(Taken::Make(slot)) = pool.take(soon()) else {
            panic!("the first take makes one");
        };
        slot.made();
        let waiter = std::thread::spawn({
            let pool = pool.clone();
            move || match pool.take(Instant::now() + Duration::from_secs(30)) {
                Some(Taken::Idle(n)) => n,
                _ => panic!("the waiter gets the returned instance"),
            }
        });
        pool.give_back(7);
        assert_eq!(waiter.join().expect("waiter"), 7);
        assert_eq!(pool.counts().peak, 1);
    }

    #[test]
    fn a_caller_past_the_bound_gives_up_at_its_deadline() {
        let pool = Instances::<u32>::new(1);
        let Some(Taken::Make(slot)) = pool.take(Instant::now() + Duration::from_secs(5)) else {
            panic!("the first take makes one");
        };
        slot.made();
        assert!(pool.take(Instant::now()).is_none(), "the bound is reached");
        pool.retire();
        // A place freed by a retired instance; a slot dropped unmade frees it again.
        assert!(matches!(pool.take(Instant::now()), Some(Taken::Make(_))));
        assert_eq!(pool.counts().live, 0);
        assert_eq!(pool.counts().made, 1);
    }
}
