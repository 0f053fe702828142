//! deputyd's listening sockets, kept open across a restart.
//!
//! A restart must not refuse a connection. So every socket deputyd listens on is also given to
//! systemd's file descriptor store (`FDSTORE=1`, under a name: [`keep`]), and the next process
//! is handed them back (`LISTEN_FDS`, `LISTEN_FDNAMES`) and takes each by name ([`take_tcp`],
//! [`take_unix`]) instead of binding again. Between the two processes the sockets stay open in
//! systemd, the kernel queues the connections that arrive, and the next process accepts them.
//! Sockets of a `.socket` unit are taken the same way, by their `FileDescriptorName=`.
//!
//! An inherited socket is taken only if it is bound where the configuration now says; one the
//! configuration moved or no longer names is closed and taken out of the store
//! ([`close_unclaimed`]), so that its address refuses connections instead of queueing them
//! forever.
//!
//! The names: `admin`, `inbound`, `operator`, `outbound.<agent>`,
//! `postgres.<agent>.<database>.<secret>` ([`outbound`], [`postgres`]).
//!
//! Without systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`) nothing is inherited and nothing kept:
//! every socket is bound as usual.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{LazyLock, Mutex, MutexGuard};

use sd_notify::NotifyState;

/// The name of agent `agent`'s outbound listener.
pub fn outbound(agent: &str) -> String {
    format!("outbound.{agent}")
}

/// The name of agent `agent`'s PostgreSQL listener for `database` with credentials `secret`
/// (the caller numbers a second one with the same three).
pub fn postgres(agent: &str, database: &str, secret: &str) -> String {
    format!("postgres.{agent}.{database}.{secret}")
}

#[derive(Debug, Default)]
struct Sockets {
    /// Handed over at start and not claimed yet, by name.
    inherited: HashMap<String, OwnedFd>,
    /// Held by systemd for the next process: given to its store, or handed over by it.
    kept: HashSet<String>,
    /// Sockets were handed over at start.
    handed_over: bool,
    /// The process takes part: it looked for sockets at start ([`adopt_from_systemd`]), so it
    /// will take back what it keeps. Another program sharing this code (`deputy node`) keeps
    /// nothing, lest its sockets pile up in a store nobody takes them from.
    armed: bool,
    /// Names whose inherited socket was refused: systemd may still hold it for a moment.
    released: HashSet<String>,
}

/// The process's sockets: handed over by systemd to the process, not to one of its parts.
static SOCKETS: LazyLock<Mutex<Sockets>> = LazyLock::new(Mutex::default);

fn sockets() -> MutexGuard<'static, Sockets> {
    SOCKETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the sockets systemd handed to this process (`LISTEN_FDS` for this `LISTEN_PID`, named
/// by `LISTEN_FDNAMES`) and unsets those variables, so that no child takes them too. Returns
/// their names.
///
/// # Safety
///
/// Changes the environment: call it before any other thread starts.
#[allow(unsafe_code)] // Descriptors by number, and the environment: see the safety notes.
pub unsafe fn adopt_from_systemd() -> io::Result<Vec<String>> {
    // SAFETY: the caller promises no other thread runs.
    let handed = unsafe { sd_notify::listen_fds_with_names_and_unset_env()? };
    let mut sockets = sockets();
    let mut names = Vec::new();
    for (raw, name) in handed {
        // SAFETY: systemd passed this descriptor to this process, and nothing else here owns
        // it: it is taken once, before anything else runs.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if sockets.inherited.contains_key(&name) {
            tracing::warn!(
                name,
                "systemd handed over two sockets of one name: the second is closed"
            );
            continue;
        }
        names.push(name.clone());
        sockets.kept.insert(name.clone());
        sockets.inherited.insert(name, fd);
    }
    sockets.handed_over = !names.is_empty();
    sockets.armed = true;
    Ok(names)
}

/// Whether this process takes part in keeping sockets over a restart (it looked for them at
/// start, as deputyd does).
pub fn armed() -> bool {
    sockets().armed
}

/// Whether this process was handed sockets at start: it is a restart, and the connections
/// that queued meanwhile are waiting to be accepted.
pub fn handed_over() -> bool {
    sockets().handed_over
}

/// The inherited TCP listener `name`, if there is one and it listens on `addr` (a port 0 in
/// `addr` takes whatever port it has). One bound elsewhere is closed and taken out of the store.
/// Call within a tokio runtime.
pub fn take_tcp(name: &str, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    let fd = sockets().inherited.remove(name)?;
    let taken = listening(&fd).and_then(|()| {
        let listener = std::net::TcpListener::from(fd);
        let bound = listener
            .local_addr()
            .map_err(|e| format!("its address cannot be read ({e})"))?;
        if bound.ip() != addr.ip() || (addr.port() != 0 && bound.port() != addr.port()) {
            return Err(format!("it is bound to {bound}, not {addr}"));
        }
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|e| format!("it cannot be served ({e})"))
    });
    adopted(name, &addr.to_string(), taken)
}

/// The inherited unix listener `name`, if there is one and it is bound at `path` (and a socket
/// is still there). One bound elsewhere is closed and taken out of the store. Call within a
/// tokio runtime.
pub fn take_unix(name: &str, path: &Path) -> Option<tokio::net::UnixListener> {
    let fd = sockets().inherited.remove(name)?;
    let taken = listening(&fd).and_then(|()| {
        let listener = std::os::unix::net::UnixListener::from(fd);
        let bound = listener
            .local_addr()
            .map_err(|e| format!("its address cannot be read ({e})"))?;
        if bound.as_pathname() != Some(path) {
            return Err(format!(
                "it is bound to {:?}, not {}",
                bound.as_pathname(),
                path.display()
            ));
        }
        // The file must still be the socket deputyd made: a socket of another user put in its
        // place would be left reachable and this one not.
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
        match std::fs::symlink_metadata(path) {
            Ok(meta)
                if meta.file_type().is_socket()
                    && meta.uid() == nix::unistd::geteuid().as_raw() => {}
            Ok(meta) if meta.file_type().is_socket() => {
                return Err(format!(
                    "{} is a socket of uid {}, not deputyd's",
                    path.display(),
                    meta.uid()
                ));
            }
            _ => return Err(format!("{} no longer names a socket", path.display())),
        }
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
            .map_err(|e| format!("it cannot be served ({e})"))
    });
    adopted(name, &path.display().to_string(), taken)
}

fn adopted<L>(name: &str, wanted: &str, taken: Result<L, String>) -> Option<L> {
    match taken {
        Ok(listener) => {
            tracing::info!(
                name,
                address = wanted,
                "listening socket taken over from systemd"
            );
            Some(listener)
        }
        Err(why) => {
            tracing::warn!(
                name,
                address = wanted,
                why,
                "the socket systemd handed over is not used: {why}; a new one is bound"
            );
            release(name);
            sockets().released.insert(name.to_owned());
            None
        }
    }
}

/// Whether `fd` is a listening stream socket.
fn listening(fd: &OwnedFd) -> Result<(), String> {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    match (
        getsockopt(fd, sockopt::SockType),
        getsockopt(fd, sockopt::AcceptConn),
    ) {
        (Ok(SockType::Stream), Ok(true)) => Ok(()),
        (Ok(_), Ok(_)) => Err("it is not a listening stream socket".into()),
        (Err(e), _) | (_, Err(e)) => Err(format!("it is not a socket ({e})")),
    }
}

/// A TCP listener `name` on `addr`: the inherited one if it is there ([`take_tcp`]), else a
/// new one, given to systemd to keep ([`keep`]).
pub async fn tcp(name: &str, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    if let Some(listener) = take_tcp(name, addr) {
        return Ok(listener);
    }
    // systemd takes a released socket out of its store when it reads the message: until then
    // an address that overlaps it is still in use, for a moment.
    let mut tries = if sockets().released.contains(name) {
        20
    } else {
        1
    };
    let listener = loop {
        tries -= 1;
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 0 => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            bound => break bound?,
        }
    };
    keep(name, listener.as_fd());
    Ok(listener)
}

/// Gives the listening socket `fd` to systemd's file descriptor store as `name`, when deputyd
/// runs under systemd; a unit without a store (`FileDescriptorStoreMax=0`) ignores it.
pub fn keep(name: &str, fd: BorrowedFd<'_>) {
    if !armed() || std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // systemd's rule for a name (fdname_is_valid): printable ASCII but `:`, at most 255.
    if name.is_empty()
        || name.len() > 255
        || !name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':')
    {
        tracing::warn!(
            name,
            "a socket with this name cannot be kept by systemd; a restart closes it"
        );
        return;
    }
    match sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd]) {
        Ok(()) => {
            sockets().kept.insert(name.to_owned());
        }
        Err(e) => tracing::warn!(
            name,
            error = %e,
            "cannot give the socket to systemd to keep; a restart closes it"
        ),
    }
}

/// Whether systemd keeps the socket `name` for the next process: its unix socket file must
/// then stay where it is.
pub fn is_kept(name: &str) -> bool {
    sockets().kept.contains(name)
}

/// Takes the socket `name` out of systemd's store (its agent was removed): the next process
/// is not handed it, and once deputyd closes it, its address refuses connections.
pub fn release(name: &str) {
    if !sockets().kept.remove(name) {
        return;
    }
    if let Err(e) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]) {
        tracing::warn!(name, error = %e, "cannot take the socket out of systemd's store");
    }
}

/// Closes the inherited sockets nothing took (the configuration no longer names them) and
/// takes them out of systemd's store. Returns their names.
pub fn close_unclaimed() -> Vec<String> {
    let unclaimed: Vec<String> = sockets().inherited.drain().map(|(name, _)| name).collect();
    for name in &unclaimed {
        tracing::info!(
            name,
            "a socket systemd handed over is not in the configuration: closed"
        );
        release(name);
    }
    unclaimed
}

#[cfg(test)]
mod tests;
