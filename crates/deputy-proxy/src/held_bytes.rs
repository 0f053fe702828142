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

/// What one request holds, returned when dropped.
#[derive(Debug, Default)]
pub(crate) struct Held {
    permit: Option<OwnedSemaphorePermit>,
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

    /// Adds `bytes` (a frame that arrived) to what `held` holds, or says why not. Never waits:
    /// a node that holds its limit answers 503 at once rather than queueing callers behind slow
    /// bodies.
    pub(crate) fn hold(&self, held: &mut Held, bytes: usize) -> Result<(), String> {
        let wanted = u32::try_from(bytes.min(self.limit)).unwrap_or(u32::MAX);
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| {
                format!(
                    "this node already holds its limit of {} bytes of request bodies being read \
                     for the policy ([limits] max_inspected_bytes); retry shortly",
                    self.limit
                )
            })?;
        match &mut held.permit {
            Some(holding) => holding.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
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
    fn bytes_past_the_node_limit_are_refused_until_some_are_returned() {
        let bound = HeldBytes::new(100);
        let mut first = Held::default();
        bound.hold(&mut first, 30).expect("within the limit");
        bound
            .hold(&mut first, 30)
            .expect("a second frame adds to the first");
        let mut second = Held::default();
        let refused = bound.hold(&mut second, 60).expect_err("over the limit");
        assert!(
            refused.contains("[limits] max_inspected_bytes"),
            "{refused}"
        );
        bound.hold(&mut second, 40).expect("what is left");
        drop(first);
        bound.hold(&mut second, 60).expect("returned");
        // A frame larger than the whole node holds the whole node.
        let bound = HeldBytes::new(10);
        bound
            .hold(&mut Held::default(), 1000)
            .expect("clamped to the limit");
    }
}
