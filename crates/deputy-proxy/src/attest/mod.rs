//! Who is calling an outbound listener: the uid of the process on the other end.

pub mod sock_diag;

use tokio::net::{TcpStream, UnixStream};

/// The uid of the caller on a unix socket (SO_PEERCRED, filled in by the kernel).
pub fn unix_caller_uid(stream: &UnixStream) -> Result<u32, String> {
    stream
        .peer_cred()
        .map(|cred| cred.uid())
        .map_err(|e| format!("the kernel gave no peer credentials: {e}"))
}

/// The uid of the caller on loopback TCP (the owner of its socket, from sock_diag): read at
/// once when the kernel's answer is there (it nearly always is), else on a blocking thread.
pub async fn tcp_caller_uid(stream: &TcpStream) -> Result<u32, String> {
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    match sock_diag::tcp_peer_uid(local, peer, sock_diag::Wait::No) {
        Err(sock_diag::PeerUidError::NotReady) => tokio::task::spawn_blocking(move || {
            sock_diag::tcp_peer_uid(local, peer, sock_diag::Wait::Blocking)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string()),
        found => found.map_err(|e| e.to_string()),
    }
}
