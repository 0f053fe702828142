//! The node-wide bound on request body bytes held back for policy inspection: each request may
//! hold `peek_bytes`, but a thousand of them at once must not hold a thousand times that.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes the node may hold for inspection, shared by every request of both listeners.
#[derive(Debug, Clone)]
pub struct HeldBytes {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// A reservation, returned when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    _permit: OwnedSemaphorePermit,
}

impl HeldBytes {
    /// A bound of `limit` bytes (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Reserves `bytes` (a request's most), or says why not. Never waits: a node that holds its
    /// limit answers 503 at once rather than queueing callers behind slow bodies.
    pub(crate) fn reserve(&self, bytes: usize) -> Result<Held, String> {
        let wanted = u32::try_from(bytes.min(self.limit)).unwrap_or(u32::MAX);
        self.permits
            .clone()
            .try_acquire_many_owned(wanted)
            .map(|permit| Held { _permit: permit })
            .map_err(|_| {
                format!(
                    "this node already holds its limit of {} bytes of request bodies being read \
                     for the policy ([limits] max_inspected_bytes); retry shortly",
                    self.limit
                )
            })
    }
}

impl Default for HeldBytes {
    fn default() -> Self {
        Self::new(crate::config::Limits::default().max_inspected_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_past_the_node_limit_are_refused_until_one_is_returned() {
        let bound = HeldBytes::new(100);
        let first = bound.reserve(60).expect("within the limit");
        let refused = bound.reserve(60).expect_err("over the limit");
        assert!(
            refused.contains("[limits] max_inspected_bytes"),
            "{refused}"
        );
        let _small = bound.reserve(40).expect("what is left");
        drop(first);
        bound.reserve(60).expect("returned");
        // A request that may hold more than the whole node reserves the whole node.
        let bound = HeldBytes::new(10);
        drop(bound.reserve(1000).expect("clamped to the limit"));
    }
}
