//! The uid behind a loopback TCP connection, from the kernel's socket table (sock_diag).
//!
//! A unix socket tells us who is on the other end (`SO_PEERCRED`), but TCP has no such
//! option: the kernel records no credentials on a TCP connection. When both ends are on
//! this host, though, the *caller's* socket is in this host's socket table too, and the
//! kernel knows who owns it (the uid that created it, the same value `ss -e` and
//! `/proc/net/tcp` show). `NETLINK_SOCK_DIAG` lets us ask for that one socket by its
//! 4-tuple: its source is the caller's address (our peer), its destination is our
//! listener's address (our accepted socket's local address).
//!
//! The answer is only meaningful while we still hold the accepted connection: as long as
//! our end is open, no other socket can take the caller's 4-tuple, so the socket the
//! kernel names is the one that connected to us.
//!
//! Every connection an agent opens is looked up, so the lookup is cheap: each thread keeps
//! its netlink socket between lookups, and the kernel answers an exact lookup while the
//! request is being sent (netlink requests to the kernel are handled in the sender's system
//! call), so the answer is read without waiting ([`Wait::No`], on the async worker) and only
//! an answer not there yet sends the caller to a blocking thread.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike as _};

/// Why the owner of a loopback caller's socket could not be found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerUidError {
    /// The connection is not between two loopback addresses of one family, so the
    /// caller is not known to be a process on this host whose socket we can look up.
    #[error("the connection from {peer} is not over loopback, so its owner cannot be looked up")]
    NotLoopback {
        /// The caller's address, as our accepted socket saw it.
        peer: SocketAddr,
    },
    /// Talking to the kernel over `NETLINK_SOCK_DIAG` failed (no netlink in this
    /// sandbox, a timeout, or an error the kernel returned for the query).
    #[error("sock_diag failed: {0}")]
    Netlink(#[from] io::Error),
    /// The kernel has no live socket at `peer` connected to us: the caller has already
    /// closed its end (a socket in `TIME_WAIT` has no owner any more), or it lives in
    /// another network namespace, whose sockets this namespace's table does not hold.
    #[error(
        "no socket at {peer} is connected to us: the connection is gone or belongs to another network namespace"
    )]
    NotFound {
        /// The caller's address, as our accepted socket saw it.
        peer: SocketAddr,
    },
    /// The kernel's reply could not be understood.
    #[error("the kernel's sock_diag reply is malformed: {0}")]
    Malformed(String),
    /// Asked not to wait, the kernel's answer was not there yet: ask again with
    /// [`Wait::Blocking`].
    #[error("the kernel's sock_diag answer was not ready")]
    NotReady,
}

/// How a lookup reads the kernel's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Blocks up to a few seconds: run it on a blocking thread.
    Blocking,
    /// Never blocks: an answer not there yet is [`PeerUidError::NotReady`].
    No,
}

thread_local! {
    /// This thread's socket to the kernel, kept between lookups (a socket, a bind and a
    /// connect saved per connection). A lookup that ends in any other way than an answer
    /// read drops it, so that nothing of an abandoned query is left to read.
    static SOCKET: RefCell<Option<Socket>> = const { RefCell::new(None) };
    /// The sequence number of this thread's next request; answers carry their request's, and
    /// others (the acknowledgement of the previous lookup) are skipped.
    static SEQUENCE: Cell<u32> = const { Cell::new(1) };
}

/// Room for one datagram from the kernel: an exact lookup's answer (one socket, no
/// extensions) and its acknowledgement are each under 200 bytes.
const RECEIVE_BUFFER: usize = 8 * 1024;
/// At most this many datagrams are read before giving up (an exact lookup takes two:
/// the socket, then the acknowledgement).
const MAX_DATAGRAMS: usize = 16;
/// How long one read from the kernel may block.
const RECEIVE_TIMEOUT_SECS: i64 = 2;
/// Netlink messages in a datagram start on 4-byte boundaries (`NLMSG_ALIGN`).
const NLMSG_ALIGNTO: usize = 4;
/// The size of a netlink message header.
const NLMSG_HDRLEN: usize = 16;
/// A request socket for a connection not yet accepted (the kernel's `TCP_NEW_SYN_RECV`).
const TCP_NEW_SYN_RECV: u8 = 12;

/// The uid that owns the local socket at `peer` connected to `local` (our accepted socket's
/// local address), looked up with NETLINK_SOCK_DIAG. Both must be loopback addresses of the same family.
///
/// There is no `SO_PEERCRED` for TCP, but when the caller is on this host its socket is
/// in the kernel's socket table with its owner's uid; this asks the kernel for exactly
/// that socket (source `peer`, destination `local`) rather than dumping every socket.
/// IPv4-mapped IPv6 addresses (an IPv4 caller accepted on a dual-stack listener) are
/// looked up as the IPv4 addresses they are.
///
/// With [`Wait::Blocking`] this blocks (for at most a few seconds); from async code run it in
/// `tokio::task::spawn_blocking`, or try [`Wait::No`] first. Call it while still holding the
/// accepted connection.
pub fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr, wait: Wait) -> Result<u32, PeerUidError> {
    let local = canonical(local);
    let wanted = canonical(peer);
    let family = match (wanted.ip(), local.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination))
            if source.is_loopback() && destination.is_loopback() =>
        {
            AF_INET
        }
        (IpAddr::V6(source), IpAddr::V6(destination))
            if source.is_loopback() && destination.is_loopback() =>
        {
            AF_INET6
        }
        _ => return Err(PeerUidError::NotLoopback { peer }),
    };

    let socket = match SOCKET.with(|kept| kept.borrow_mut().take()) {
        Some(socket) => socket,
        None => open_socket()?,
    };
    let sequence = SEQUENCE.with(|next| {
        let sequence = next.get();
        next.set(sequence.wrapping_add(1).max(1));
        sequence
    });
    let found = query(&socket, family, (wanted, local, peer), sequence, wait);
    if matches!(found, Ok(_) | Err(PeerUidError::NotFound { .. })) {
        SOCKET.with(|kept| *kept.borrow_mut() = Some(socket));
    }
    found
}

/// Sends the exact lookup of `wanted` -> `local` and reads the answer to `sequence`.
fn query(
    socket: &Socket,
    family: u8,
    (wanted, local, peer): (SocketAddr, SocketAddr, SocketAddr),
    sequence: u32,
    wait: Wait,
) -> Result<u32, PeerUidError> {
    send_request(socket, family, wanted, local, sequence)?;
    let flags = match wait {
        Wait::Blocking => 0,
        Wait::No => nix::libc::MSG_DONTWAIT,
    };
    let mut buffer = [0u8; RECEIVE_BUFFER];
    for _ in 0..MAX_DATAGRAMS {
        let size = match socket.recv(&mut &mut buffer[..], flags) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && wait == Wait::No => {
                return Err(PeerUidError::NotReady);
            }
            received => received?,
        };
        if size == 0 {
            return Err(PeerUidError::Malformed(
                "the kernel sent an empty datagram".to_owned(),
            ));
        }
        // Without MSG_TRUNC, `recv` returns at most the buffer's length; a datagram cut short
        // fails to parse (Malformed), which refuses the caller.
        if let Some(uid) = read_datagram(&buffer[..size], sequence, wanted, local, peer)? {
            return Ok(uid);
        }
    }
    Err(PeerUidError::Malformed(format!(
        "the kernel sent {MAX_DATAGRAMS} datagrams without answering the query"
    )))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for; others unchanged.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// A blocking `NETLINK_SOCK_DIAG` socket talking to the kernel, whose reads time out.
fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    setsockopt(
        &socket,
        ReceiveTimeout,
        &TimeVal::seconds(RECEIVE_TIMEOUT_SECS),
    )
    .map_err(io::Error::from)?;
    Ok(socket)
}

/// Ask for the one TCP socket whose source is `source` and destination is `destination`
/// (`inet_diag_req_v2` without `NLM_F_DUMP`: an exact lookup, answered by one message,
/// then the acknowledgement `NLM_F_ACK` asks for, or by an error such as `ENOENT`).
fn send_request(
    socket: &Socket,
    family: u8,
    source: SocketAddr,
    destination: SocketAddr,
    sequence: u32,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = sequence;
    let mut message: NetlinkMessage<SockDiagMessage> = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // An exact lookup ignores the state filter; the reply's state is checked instead.
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: source.port(),
                destination_port: destination.port(),
                source_address: source.ip(),
                destination_address: destination.ip(),
                interface_id: 0,
                // INET_DIAG_NOCOOKIE: we do not know the socket's cookie; any is fine.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    message.finalize();
    let mut request = vec![0u8; message.buffer_len()];
    message.serialize(&mut request[..]);

    let sent = socket.send(&request, 0)?;
    if sent != request.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes of the query", request.len()),
        ));
    }
    Ok(())
}

/// Read the netlink messages in one datagram: `Some(uid)` once the wanted socket is
/// found, `None` to keep reading, or the error that ends the query.
fn read_datagram(
    mut datagram: &[u8],
    sequence: u32,
    wanted: SocketAddr,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<Option<u32>, PeerUidError> {
    while datagram.len() >= NLMSG_HDRLEN {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(datagram)
            .map_err(|e| PeerUidError::Malformed(e.to_string()))?;
        let (header, payload) = message.into_parts();
        let length = header.length as usize;
        if length < NLMSG_HDRLEN {
            return Err(PeerUidError::Malformed(format!(
                "a netlink message claims a length of {length} bytes"
            )));
        }

        if header.sequence_number == sequence {
            match payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response))
                    if is_socket(&response.header, wanted, local) =>
                {
                    return owner(&response.header, peer).map(Some);
                }
                NetlinkPayload::Error(error) => {
                    // No code: the acknowledgement, sent after any answer, so there was none.
                    if error.code.is_none() {
                        return Err(PeerUidError::NotFound { peer });
                    }
                    let error = error.to_io();
                    return Err(if error.kind() == io::ErrorKind::NotFound {
                        PeerUidError::NotFound { peer }
                    } else {
                        PeerUidError::Netlink(error)
                    });
                }
                NetlinkPayload::Done(_) => return Err(PeerUidError::NotFound { peer }),
                NetlinkPayload::Overrun(_) => {
                    return Err(PeerUidError::Malformed(
                        "the kernel reported an overrun".to_owned(),
                    ));
                }
                _ => {}
            }
        }

        let next = length.next_multiple_of(NLMSG_ALIGNTO);
        datagram = datagram.get(next..).unwrap_or_default();
    }
    Ok(None)
}

/// Whether the kernel's answer is the caller's socket: source `wanted`, destination `local`.
/// (An exact lookup can also find a listener on the caller's port, which is not it.)
fn is_socket(header: &InetResponseHeader, wanted: SocketAddr, local: SocketAddr) -> bool {
    let id = &header.socket_id;
    id.source_address == wanted.ip()
        && id.source_port == wanted.port()
        && id.destination_address == local.ip()
        && id.destination_port == local.port()
}

/// The owner of the caller's socket, if it still has one. A socket in `TIME_WAIT` (the
/// caller has closed it) or a request socket is reported with uid 0, which would read as
/// root, so those count as gone.
fn owner(header: &InetResponseHeader, peer: SocketAddr) -> Result<u32, PeerUidError> {
    match header.state {
        TCP_TIME_WAIT | TCP_SYN_RECV | TCP_NEW_SYN_RECV | TCP_LISTEN => {
            Err(PeerUidError::NotFound { peer })
        }
        _ => Ok(header.uid),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn finds_the_owner_of_a_loopback_caller() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let _client =
            TcpStream::connect(listener.local_addr().expect("listener address")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");

        // Either way, and again on the socket the thread kept (the previous lookup's
        // acknowledgement is still queued on it, and skipped).
        for wait in [Wait::No, Wait::Blocking, Wait::No, Wait::No] {
            let uid = tcp_peer_uid(
                accepted.local_addr().expect("local address"),
                accepted.peer_addr().expect("peer address"),
                wait,
            )
            .expect("sock_diag names the caller's owner");
            assert_eq!(uid, nix::unistd::geteuid().as_raw());
        }
    }

    #[test]
    fn a_caller_off_loopback_is_refused() {
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("local address");
        let peer: SocketAddr = "192.0.2.7:40000".parse().expect("peer address");
        let err = tcp_peer_uid(local, peer, Wait::Blocking).expect_err("not loopback");
        assert!(
            matches!(err, PeerUidError::NotLoopback { peer: p } if p == peer),
            "{err:?}"
        );
    }

    #[test]
    fn a_connection_that_never_existed_is_not_found() {
        let local: SocketAddr = "127.0.0.1:2".parse().expect("local address");
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("peer address");
        let err = tcp_peer_uid(local, peer, Wait::No).expect_err("no such connection");
        assert!(
            matches!(err, PeerUidError::NotFound { peer: p } if p == peer),
            "{err:?}"
        );
    }
}
