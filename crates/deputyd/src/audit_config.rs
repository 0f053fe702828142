//! The `[audit]` section: the node's audit trail.
//!
//! ```toml
//! [audit]
//! dir = "/var/lib/deputy/audit"   # default: the state directory's audit/
//! on_failure = "refuse"           # or "serve": keep serving and count what is lost
//! checkpoint_records = 1000       # a checkpoint signed with the node's SVID after so many
//! checkpoint_interval = "10s"     #   records, or so long after the last (if any was written)
//! rotate_bytes = 67108864         # a file this large is closed and renamed audit.SEQ.jsonl
//! syslog = "127.0.0.1:5514"       # also send each record there (RFC 5424 over UDP)
//! ```

use std::path::{Path, PathBuf};

use deputy_audit::OnFailure;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAudit {
    dir: Option<PathBuf>,
    on_failure: Option<String>,
    checkpoint_records: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    checkpoint_interval: Option<std::time::Duration>,
    rotate_bytes: Option<u64>,
    syslog: Option<String>,
}

/// The audit trail's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where the trail is written.
    pub dir: PathBuf,
    /// What deputyd does when it cannot be written.
    pub on_failure: OnFailure,
    /// When checkpoints are signed.
    pub checkpoints: deputy_audit::Checkpoints,
    /// The size past which a file is rotated.
    pub rotate_bytes: u64,
    /// A collector each record is also sent to (syslog over UDP).
    pub syslog: Option<std::net::SocketAddr>,
}

impl RawAudit {
    pub(crate) fn validate(&self, state_dir: &Path, problems: &mut Vec<String>) -> AuditConfig {
        let dir = self.dir.clone().unwrap_or_else(|| state_dir.join("audit"));
        if !dir.is_absolute() {
            problems.push(format!(
                "[audit] dir {} must be an absolute path",
                dir.display()
            ));
        }
        let on_failure = match self.on_failure.as_deref() {
            None | Some("refuse") => OnFailure::Refuse,
            Some("serve") => OnFailure::Serve,
            Some(other) => {
                problems.push(format!(
                    "[audit] on_failure {other:?} is neither \"refuse\" (refuse calls while the \
                     trail cannot be written; the default) nor \"serve\" (serve on, counting \
                     the records lost)"
                ));
                OnFailure::Refuse
            }
        };
        let defaults = deputy_audit::Checkpoints::default();
        let checkpoints = deputy_audit::Checkpoints {
            every_records: self.checkpoint_records.unwrap_or(defaults.every_records),
            every: self.checkpoint_interval.unwrap_or(defaults.every),
        };
        if checkpoints.every_records == 0
            || checkpoints.every < std::time::Duration::from_secs(1)
            || checkpoints.every > std::time::Duration::from_secs(3600)
        {
            problems.push(
                "[audit] checkpoint_records must be at least 1 and checkpoint_interval between \
                 1s and 1h"
                    .into(),
            );
        }
        let rotate_bytes = self.rotate_bytes.unwrap_or(64 * 1024 * 1024);
        if rotate_bytes < 64 * 1024 {
            problems.push("[audit] rotate_bytes must be at least 65536".into());
        }
        let syslog = self.syslog.as_deref().and_then(|address| {
            address
                .parse()
                .map_err(|e| {
                    problems.push(format!(
                        "[audit] syslog {address:?} is not an IP address and port ({e}); \
                         `127.0.0.1:514`"
                    ));
                })
                .ok()
        });
        AuditConfig {
            dir,
            on_failure,
            checkpoints,
            rotate_bytes,
            syslog,
        }
    }
}
