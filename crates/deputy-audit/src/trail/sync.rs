//! The thread that flushes the trail to disk (group commit) and notices a file removed or
//! replaced under it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::SYNC_EVERY;

/// How often the syncing thread looks whether the file was removed or replaced.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What the syncing thread keeps an eye on.
pub(super) struct Watched {
    pub(super) current: Arc<Mutex<(File, u64)>>,
    pub(super) path: PathBuf,
    pub(super) dirty: Arc<AtomicBool>,
    pub(super) wake: Arc<Condvar>,
    pub(super) replaced: Arc<AtomicBool>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Watched {
    /// Sleeps until records are written, lets a batch gather for at most [`SYNC_EVERY`], flushes
    /// it; and at least every [`LOOK_EVERY`] looks whether the file at the path is still this
    /// one (removed or renamed, records would go nowhere anyone reads). Idle, it costs nothing.
    pub(super) fn sync_until_stopped(self) {
        use std::os::unix::fs::MetadataExt as _;
        let idle = Mutex::new(());
        loop {
            {
                let guard = idle.lock().unwrap_or_else(|p| p.into_inner());
                let _ = self
                    .wake
                    .wait_timeout_while(guard, LOOK_EVERY, |()| {
                        !self.dirty.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire)
                    })
                    .unwrap_or_else(|p| p.into_inner());
            }
            let stopping = self.stop.load(Ordering::Acquire);
            if self.dirty.load(Ordering::Acquire) {
                if !stopping {
                    std::thread::sleep(SYNC_EVERY);
                }
                self.dirty.store(false, Ordering::Release);
                let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = current.0.sync_data() {
                    tracing::error!(error = %e, "the audit trail could not be flushed to disk");
                }
            }
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let here = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            let moved = here != Some(current.1);
            drop(current);
            if moved && !self.replaced.swap(true, Ordering::AcqRel) {
                tracing::error!(file = %self.path.display(),
                    "the audit trail's file was removed or replaced; its records are lost \
                     until deputyd is restarted");
            }
            if stopping {
                return;
            }
        }
    }
}
