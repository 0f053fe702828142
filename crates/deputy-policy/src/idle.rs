//! A bounded pool of idle evaluators (regorus VMs, wasm instances): each is used by one
//! evaluation at a time, taken before it and given back after it unless it failed part-way.

use std::sync::Mutex;

/// Most idle evaluators kept per policy.
const MAX_IDLE: usize = 16;

/// The idle evaluators of one policy.
#[derive(Debug)]
pub(crate) struct Idle<T>(Mutex<Vec<T>>);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> Idle<T> {
    /// An idle evaluator, if one is waiting.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `item` for the next evaluation, unless enough are kept already.
    pub(crate) fn give_back(&self, item: T) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(item);
        }
    }
}
