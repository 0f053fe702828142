use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;

use super::*;

/// The sockets are the process's: one test at a time handles them ([`close_unclaimed`] takes
/// every unclaimed one).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// As if systemd had handed `fd` over as `name`.
fn inherit(name: &str, fd: impl Into<OwnedFd>) {
    let mut sockets = sockets();
    sockets.kept.insert(name.to_owned());
    sockets.armed = true;
    sockets.inherited.insert(name.to_owned(), fd.into());
}

fn loopback_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

#[tokio::test]
async fn an_inherited_tcp_listener_where_the_config_says_is_served_as_it_is() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (listener, addr) = loopback_listener();
    // A connection made before the hand-over waits in the queue for the taker.
    let early = TcpStream::connect(addr).expect("connect before the hand-over");
    inherit("t-same", listener);
    let taken = take_tcp("t-same", addr).expect("taken");
    assert_eq!(taken.local_addr().expect("addr"), addr);
    let (_, from) = taken.accept().await.expect("the queued connection");
    assert_eq!(from, early.local_addr().expect("local"));
    assert!(
        is_kept("t-same"),
        "systemd still holds it for the next process"
    );
    // A configured port 0 takes whichever port the socket has.
    let (listener, addr) = loopback_listener();
    inherit("t-any", listener);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    assert_eq!(
        take_tcp("t-any", any).expect("taken").local_addr().ok(),
        Some(addr)
    );
}

#[tokio::test]
async fn an_inherited_listener_bound_elsewhere_is_closed_and_released() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (listener, addr) = loopback_listener();
    inherit("t-moved", listener);
    let wanted = SocketAddr::from(([127, 0, 0, 1], addr.port().wrapping_add(1).max(1)));
    assert!(take_tcp("t-moved", wanted).is_none());
    assert!(!is_kept("t-moved"), "taken out of the store");
    let refused = TcpStream::connect(addr).expect_err("closed: nothing listens there");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    // Taken once: a second ask binds anew.
    assert!(take_tcp("t-moved", wanted).is_none());
}

#[tokio::test]
async fn a_socket_that_does_not_listen_is_not_taken() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = udp.local_addr().expect("addr");
    inherit("t-udp", udp);
    assert!(take_tcp("t-udp", addr).is_none());
    let file = std::fs::File::open("/dev/null").expect("a file");
    inherit("t-file", file);
    assert!(take_tcp("t-file", addr).is_none());
}

#[tokio::test]
async fn an_inherited_unix_listener_is_taken_while_its_file_is_there() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    inherit("u-same", listener);
    assert!(take_unix("u-same", &dir.path().join("other.sock")).is_none());

    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("b.sock")).expect("bind");
    inherit("u-b", listener);
    let taken = take_unix("u-b", &dir.path().join("b.sock")).expect("taken");
    let _client =
        std::os::unix::net::UnixStream::connect(dir.path().join("b.sock")).expect("connect");
    taken.accept().await.expect("accepted");

    // Someone deleted the file: the socket can no longer be reached by its path.
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("c.sock")).expect("bind");
    std::fs::remove_file(dir.path().join("c.sock")).expect("rm");
    inherit("u-c", listener);
    assert!(take_unix("u-c", &dir.path().join("c.sock")).is_none());
}

#[tokio::test]
async fn unclaimed_sockets_are_closed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (listener, addr) = loopback_listener();
    inherit("t-unclaimed", listener);
    let closed = close_unclaimed();
    assert!(closed.contains(&"t-unclaimed".to_owned()), "{closed:?}");
    assert!(!is_kept("t-unclaimed"));
    assert!(TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn without_systemd_a_new_listener_is_bound_and_not_kept() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // The tests run without NOTIFY_SOCKET, as deputyd does outside systemd.
    let listener = tcp("t-fresh", "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bound");
    assert!(listener.local_addr().is_ok());
    assert!(!is_kept("t-fresh"));
}

#[test]
fn names_are_distinct_per_agent_and_database() {
    assert_eq!(outbound("alpha"), "outbound.alpha");
    assert_eq!(
        postgres("alpha", "crm", "crm-ro"),
        "postgres.alpha.crm.crm-ro"
    );
}
