//! The flag a revocation raises on a call in flight: checked between stages and on every poll
//! of the call's work and response body, so it must cost a load, not a lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

#[derive(Debug, Default)]
pub(crate) struct Signal {
    cut: AtomicBool,
    /// The one task polling the call (its stages, then its response body).
    waker: AtomicWaker,
    why: OnceLock<String>,
}

impl Signal {
    /// Cuts the call, saying `why`.
    pub(crate) fn cut(&self, why: &str) {
        let _ = self.why.set(why.to_owned());
        self.cut.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    pub(crate) fn why(&self) -> String {
        self.why.get().cloned().unwrap_or_default()
    }

    /// Ready once the call is cut; otherwise the polling task is woken when it is.
    pub(crate) fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cut() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_cut() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
