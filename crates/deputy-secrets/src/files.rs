//! Credentials rendered into files, for agents that must read one themselves (a client library
//! that only takes a password file). Each file is rendered from a template whenever a
//! credential it reads is issued or renewed, written atomically (a temporary file in the same
//! directory, mode 0400, owned by the agent's uid, synced, then renamed over the old one), and
//! removed when a credential it reads is withdrawn (revoked, expired, the agent removed, deputyd
//! stopping): a file never holds a credential that no longer works.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use crate::store::CredentialStore;
use crate::template::Template;

/// One rendered file.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// The agent whose credentials it holds.
    pub agent: String,
    /// Where it is written (absolute).
    pub path: PathBuf,
    /// What it holds.
    pub contents: Template,
    /// Its owner (the agent's uid) and group.
    pub owner: (u32, u32),
}

/// Keeps `spec` rendered until `cancel`, then removes it.
pub async fn run(spec: FileSpec, store: CredentialStore, cancel: CancellationToken) {
    let watches: Vec<_> = spec
        .contents
        .secrets()
        .filter_map(|secret| store.watch(&spec.agent, secret))
        .map(WatchStream::new)
        .collect();
    // Each watch yields its current value first: the file is rendered at start.
    let mut changes = futures::stream::select_all(watches);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            change = changes.next() => {
                if change.is_none() {
                    break;
                }
                render(&spec, &store).await;
            }
        }
    }
    remove(&spec.path).await;
}

async fn render(spec: &FileSpec, store: &CredentialStore) {
    match spec.contents.render(store, &spec.agent) {
        Ok(contents) => {
            let (path, owner) = (spec.path.clone(), spec.owner);
            let written = tokio::task::spawn_blocking(move || {
                write_atomically(&path, contents.expose().as_bytes(), owner)
            })
            .await;
            match written {
                Ok(Ok(())) => tracing::info!(agent = %spec.agent, path = %spec.path.display(),
                    "credential file rendered"),
                Ok(Err(e)) => tracing::warn!(agent = %spec.agent, path = %spec.path.display(),
                    error = %e, "cannot write the credential file"),
                Err(e) => tracing::warn!(error = %e, "the credential file writer failed"),
            }
        }
        // Not (or no longer) available: no file, rather than a stale credential.
        Err(_) => remove(&spec.path).await,
    }
}

async fn remove(path: &Path) {
    let path = path.to_owned();
    let _ = tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "credential file removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e,
            "cannot remove the credential file"),
    })
    .await;
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never part of
/// one, and never a moment where another uid could read it.
pub fn write_atomically(path: &Path, bytes: &[u8], (uid, gid): (u32, u32)) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let staging = dir.join(format!(".{}.deputy-new", name.to_string_lossy()));
    let _ = std::fs::remove_file(&staging);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&staging)?;
    let result = (|| {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    std::fs::rename(&staging, path)?;
    // The rename itself made durable.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_mode_0400() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/db.env");
        let me = (nix_uid(), nix_gid());
        write_atomically(&path, b"one", me).expect("write");
        write_atomically(&path, b"two", me).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o400);
        assert_eq!((meta.uid(), meta.gid()), me);
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .collect();
        assert_eq!(left.len(), 1, "no staging file left behind");
    }

    fn nix_uid() -> u32 {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0)
    }

    fn nix_gid() -> u32 {
        std::fs::metadata("/proc/self")
            .map(|m| m.gid())
            .unwrap_or(0)
    }
}
