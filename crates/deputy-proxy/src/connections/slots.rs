//! Connection slots of one listener: a bounded number served, a few more told they are over
//! the limit, the rest closed at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections over the limit that are still answered (503 `overloaded`, so the caller learns
/// why); past these, a connection is closed unanswered, so that a flood costs nothing to refuse.
const OVERFLOW: usize = 32;

/// A listener's slots.
#[derive(Debug)]
pub(crate) struct Slots {
    served: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    /// The configured limit, for the refusal's words.
    pub(crate) limit: usize,
}

/// A connection's slot, held while it is open.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Within the limit: served.
    Served {
        /// Freed when the connection ends.
        _permit: OwnedSemaphorePermit,
    },
    /// Over the limit: every request on it is answered 503 `overloaded`.
    Overloaded {
        /// Freed when the connection ends.
        _permit: OwnedSemaphorePermit,
    },
}

impl Slots {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            served: Arc::new(Semaphore::new(limit)),
            overflow: Arc::new(Semaphore::new(OVERFLOW)),
            limit,
        }
    }

    /// A slot for a new connection; `None`: close it unanswered.
    pub(crate) fn take(&self) -> Option<Slot> {
        if let Ok(permit) = self.served.clone().try_acquire_owned() {
            return Some(Slot::Served { _permit: permit });
        }
        self.take_overflow()
    }

    /// A slot from the overflow only, for a connection that is to be refused anyway.
    pub(crate) fn take_overflow(&self) -> Option<Slot> {
        let permit = self.overflow.clone().try_acquire_owned().ok()?;
        Some(Slot::Overloaded { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_connections_are_answered_then_closed_and_a_freed_slot_serves_again() {
        let slots = Slots::new(2);
        let first = slots.take();
        let _second = slots.take();
        assert!(matches!(first, Some(Slot::Served { .. })));
        let over: Vec<_> = (0..OVERFLOW).map(|_| slots.take()).collect();
        assert!(
            over.iter()
                .all(|s| matches!(s, Some(Slot::Overloaded { .. })))
        );
        assert!(
            slots.take().is_none(),
            "past the overflow: closed unanswered"
        );
        drop(first);
        assert!(matches!(slots.take(), Some(Slot::Served { .. })));
    }
}
