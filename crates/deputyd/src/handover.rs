//! Handing the node over to a new deputyd binary without refusing a connection.
//!
//! An upgrade replaces `/usr/bin/deputyd`, then reloads the unit. `ExecReload=` first runs the
//! new binary's `deputyd --check` on the configuration: one that does not pass fails the reload
//! and leaves this process serving, with the code and configuration it has. One that passes is
//! followed by SIGHUP, and a deputyd whose binary was replaced answers it by handing over
//! instead of reloading in place: it drains its connections as on SIGTERM and exits with
//! [`EXIT_HANDED_OVER`], which the unit restarts on (`RestartForceExitStatus=`). Its listening
//! sockets stay open in systemd's file descriptor store all along (`deputy_listen`), so the
//! connections that arrive meanwhile wait in the kernel's queue for the new process.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

/// The exit status that asks systemd to start the new binary: `EX_TEMPFAIL` ("try again"),
/// which the unit lists in both `SuccessExitStatus=` and `RestartForceExitStatus=`.
pub const EXIT_HANDED_OVER: u8 = 75;

/// The binary this process runs, to tell when it has been replaced on disk.
#[derive(Debug)]
pub struct Binary {
    /// Where it was started from.
    path: Option<PathBuf>,
    /// The file it runs: `/proc/self/exe` reaches it even once it is unlinked.
    file: Option<(u64, u64)>,
}

impl Binary {
    /// The binary this process runs.
    pub fn running() -> Self {
        // A binary replaced before this runs reads as "/usr/bin/deputyd (deleted)".
        let path = std::env::current_exe().ok().map(|path| {
            let shown = path.to_string_lossy();
            match shown.strip_suffix(" (deleted)") {
                Some(path) => PathBuf::from(path),
                None => path,
            }
        });
        let file = identity(std::path::Path::new("/proc/self/exe"));
        Self { path, file }
    }

    /// The path of a replaced binary: another file is at the path this process was started
    /// from (an upgrade renames the new one over it). `None` while it is the same file, or
    /// when that cannot be told.
    pub fn replaced(&self) -> Option<&std::path::Path> {
        let path = self.path.as_deref()?;
        let now = identity(path)?;
        (Some(now) != self.file).then_some(path)
    }
}

/// A file's device and inode.
fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether a hand-over can be picked up: the unit asks for it (`DEPUTYD_HANDOVER=1`: it keeps
/// the sockets and restarts deputyd on [`EXIT_HANDED_OVER`]), deputyd runs under systemd, and it
/// takes part in keeping sockets (`deputy node`, say, does not). Otherwise a replaced binary is
/// reloaded in place, as before.
pub fn possible() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && std::env::var("DEPUTYD_HANDOVER").as_deref() == Ok("1")
        && deputy_listen::armed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "binary" in a directory of its own, as if this process ran it.
    fn started_from() -> (tempfile::TempDir, PathBuf, Binary) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deputyd");
        std::fs::write(&path, b"old").expect("write");
        let binary = Binary {
            file: identity(&path),
            path: Some(path.clone()),
        };
        (dir, path, binary)
    }

    #[test]
    fn a_binary_renamed_over_the_old_one_is_seen_as_replaced() {
        let (dir, path, binary) = started_from();
        assert_eq!(binary.replaced(), None, "the same file");
        assert!(
            Binary::running().file.is_some(),
            "the running binary is known"
        );
        // As dpkg does: the new file is written beside it and renamed over it.
        let new = dir.path().join("deputyd.dpkg-new");
        std::fs::write(&new, b"new").expect("write");
        std::fs::rename(&new, &path).expect("rename");
        assert_eq!(binary.replaced(), Some(path.as_path()));
    }

    #[test]
    fn a_binary_that_is_gone_is_not_handed_over_to() {
        let (_dir, path, binary) = started_from();
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(binary.replaced(), None);
    }
}
