//! deputyd's state that must outlive a restart, in one embedded database under the state
//! directory (`[state] dir`, `/var/lib/deputy` by default; systemd's `StateDirectory=`).
//!
//! Why redb: pure Rust (nothing to build in C), ACID transactions with a durable commit before
//! a call is forwarded, one file and one writer, which is what a per-node daemon needs; the
//! gateway's idempotency keys and the audit trail are tables of the same file. SQLite would add
//! a C build and SQL for lookups that are all by key.
//!
//! - [`BudgetLedger`]: the calls spent under each received delegation link, until it expires.
//! - [`Approvals`]: calls a policy allows once a human approves them, bound to exactly that call.
//! - [`IdempotentResponses`]: the first response to a write with an `Idempotency-Key`, for its
//!   retries.
//! - [`Revocations`]: tasks, agents and principals no call may act under any more.

pub mod approvals;
mod budget;
pub mod idempotency;
pub mod revocations;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use approvals::{Approval, ApprovalError, ApprovalState, Approvals, Binding};
pub use budget::{BudgetLedger, LedgerError};
pub use idempotency::{IdempotentResponses, Kept};
pub use revocations::{CallFacts, Revocation, RevocationError, Revocations, Subject};

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "deputyd.redb";

/// The state database cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The directory cannot be created or the file opened (permissions, another deputyd).
    #[error(
        "cannot open deputyd's state database {path}: {message}; give deputyd a state directory \
         of its own that it may write ([state] dir; systemd: StateDirectory=deputy), and run one \
         deputyd per directory"
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A read or a write failed.
    #[error("deputyd's state database failed: {0}")]
    Store(String),
}

/// The open state database.
#[derive(Debug, Clone)]
pub struct State {
    db: Arc<redb::Database>,
    path: PathBuf,
}

/// The database's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

impl State {
    /// Opens (creating it if needed, mode 0700) the state directory's database. A second
    /// deputyd on the same directory is refused: redb locks the file.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(DATABASE_FILE);
        let open_error = |message: String| StateError::Open {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| open_error(format!("cannot restrict the directory: {e}")))?;
        }
        // redb caches up to 1 GiB of pages by default, which a node daemon would hold for
        // good as its tables grow: the state is small and hot, a few MiB cache it.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn db(&self) -> &redb::Database {
        &self.db
    }
}

/// Any redb error, as the state's error.
pub(crate) fn store_error(error: impl std::fmt::Display) -> StateError {
    StateError::Store(error.to_string())
}
