//! The wasm instances of one policy, bounded: at most `max_live` exist at once (idle or in use),
//! so a burst of concurrent decisions cannot make a node hold a burst of instances (each may
//! grow to [`MAX_INSTANCE_MEMORY`](super::MAX_INSTANCE_MEMORY)). A decision that finds none
//! idle and the bound reached waits for one to be given back, until its deadline.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A counted place in the pool, holding an instance (an idle one, or one made for it). Given
/// back with [`Lease::give_back`] it is kept for the next decision; dropped in any other way (an
/// error, a trap, a panic unwinding through the decision) the place is freed and the instance
/// with it, so no failure can shrink the pool.
#[must_use]
pub(crate) struct Lease<'a, T> {
    pool: &'a Instances<T>,
    instance: Option<T>,
}

impl<T> Lease<'_, T> {
    /// The instance, if the place holds one yet (none when the pool had no idle one).
    pub(crate) fn instance(&mut self) -> Option<&mut T> {
        self.instance.as_mut()
    }

    /// Puts a newly made instance in the place.
    pub(crate) fn fill(&mut self, instance: T) -> &mut T {
        self.pool.lock().made += 1;
        self.instance.insert(instance)
    }

    /// Keeps the instance for the next decision (a place without one is freed).
    pub(crate) fn give_back(mut self) {
        let pool = self.pool;
        if let Some(instance) = self.instance.take() {
            // The place stays counted: it is the idle instance's now.
            std::mem::forget(self);
            pool.keep(instance);
        }
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        self.pool.retire();
    }
}

/// The pool: idle instances, and the count of places (idle or leased).
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

    /// A place with an idle instance, or an empty place to make one in, waiting until
    /// `deadline` while the bound is reached; `None` when the deadline passed first.
    pub(crate) fn take(&self, deadline: Instant) -> Option<Lease<'_, T>> {
        let mut state = self.lock();
        loop {
            if let Some(instance) = state.idle.pop() {
                return Some(Lease {
                    pool: self,
                    instance: Some(instance),
                });
            }
            if state.live < self.max_live {
                state.live += 1;
                state.peak = state.peak.max(state.live);
                return Some(Lease {
                    pool: self,
                    instance: None,
                });
            }
            let wait = deadline.checked_duration_since(Instant::now())?;
            state = self
                .returned
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn keep(&self, instance: T) {
        self.lock().idle.push(instance);
        self.returned.notify_one();
    }

    /// A place whose instance is not kept (it trapped, grew too large, or was never made).
    fn retire(&self) {
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
        let mut lease = pool.take(soon()).expect("the first take has room");
        assert!(lease.instance().is_none(), "nothing idle: make one");
        lease.fill(7);
        let waiter = std::thread::spawn({
            let pool = pool.clone();
            move || {
                let mut lease = pool
                    .take(Instant::now() + Duration::from_secs(30))
                    .expect("the waiter gets the returned instance");
                let n = *lease.instance().expect("idle");
                lease.give_back();
                n
            }
        });
        lease.give_back();
        assert_eq!(waiter.join().expect("waiter"), 7);
        assert_eq!(pool.counts().peak, 1);
        assert_eq!(pool.counts().made, 1);
    }

    #[test]
    fn a_caller_past_the_bound_gives_up_at_its_deadline() {
        let pool = Instances::<u32>::new(1);
        let mut lease = pool.take(Instant::now()).expect("room");
        lease.fill(1);
        assert!(pool.take(Instant::now()).is_none(), "the bound is reached");
        drop(lease);
        assert_eq!(pool.counts().live, 0, "a lease dropped frees its place");
        assert!(pool.take(Instant::now()).is_some());
    }

    #[test]
    fn a_panic_during_a_decision_frees_its_place() {
        let pool = Arc::new(Instances::<u32>::with_first(1, 1));
        let panicked = std::thread::spawn({
            let pool = pool.clone();
            move || {
                let _lease = pool.take(Instant::now()).expect("the idle one");
                panic!("a builtin panicked");
            }
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(pool.counts().live, 0);
        let mut lease = pool.take(Instant::now()).expect("room again");
        assert!(
            lease.instance().is_none(),
            "the panicked instance is not reused"
        );
    }
}
