//! A plain HTTP/1.1 or h2c client, as an agent would use against its outbound listener.

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A request body.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A small body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Which HTTP the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, in clear text.
    H2c,
}

/// Sends one request over a fresh connection to `addr`.
pub async fn send(
    addr: &str,
    protocol: Protocol,
    request: Request<Body>,
) -> Result<Response<Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    send_on(tcp, protocol, request).await
}

/// Sends one request as a process of user `uid` would: over a connection whose socket `uid`
/// owns, which is what an outbound listener attests. Needs root, as the suite does.
pub async fn send_as(
    uid: u32,
    addr: &str,
    protocol: Protocol,
    request: Request<Body>,
) -> Result<Response<Incoming>, String> {
    let addr = addr.to_owned();
    let std = tokio::task::spawn_blocking(move || connect_as(uid, &addr))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())?;
    send_on(tcp, protocol, request).await
}

/// Connects from a socket owned by `uid`. Linux credentials belong to a thread, and the raw
/// `setresuid` system call (unlike libc's wrapper, which applies it to every thread) changes
/// only the calling one: a scoped thread takes `uid` as its effective uid, creates and connects
/// the socket (which records its creator's uid), and ends, taking the credentials with it.
fn connect_as(uid: u32, addr: &str) -> std::io::Result<std::net::TcpStream> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                set_thread_euid(uid)?;
                std::net::TcpStream::connect(addr)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}

#[allow(unsafe_code)]
fn set_thread_euid(uid: u32) -> std::io::Result<()> {
    let keep = nix::libc::uid_t::MAX; // -1: leave the real and saved uids as they are
    // SAFETY: setresuid takes three integers and touches no memory of this process.
    let rc = unsafe { nix::libc::syscall(nix::libc::SYS_setresuid, keep, uid, keep) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn send_on(
    tcp: tokio::net::TcpStream,
    protocol: Protocol,
    request: Request<Body>,
) -> Result<Response<Incoming>, String> {
    let io = TokioIo::new(tcp);
    match protocol {
        Protocol::Http1 => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())
        }
        Protocol::H2c => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// An h2c connection to `addr`, for several requests at once on one connection.
pub async fn h2c_connection(
    addr: &str,
) -> Result<hyper::client::conn::http2::SendRequest<Body>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one HTTP/1.1 request over a fresh connection to a unix socket.
pub async fn send_unix(
    path: &std::path::Path,
    request: Request<Body>,
) -> Result<Response<Incoming>, String> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// A GET of `http://{service}{path}` through an outbound listener.
pub fn get(service: &str, path: &str, protocol: Protocol) -> Request<Body> {
    let builder = Request::builder();
    let builder = match protocol {
        // What an HTTP_PROXY-configured client sends: the absolute URI.
        Protocol::Http1 => builder.uri(format!("http://{service}{path}")),
        Protocol::H2c => builder.uri(format!("http://{service}{path}")),
    };
    builder
        .header(http::header::HOST, service)
        .body(full(Bytes::new()))
        .expect("request")
}

/// A GET of beta's `path` over HTTP/1.1 starting alice's task (`user:alice`, `events:read`):
/// the call the connection, fault, partition and clock tests make through alpha's listener.
pub fn alice_calls_beta(path: &str) -> Request<Body> {
    let mut request = get("beta", path, Protocol::Http1);
    let headers = request.headers_mut();
    headers.insert("deputy-principal", HeaderValue::from_static("user:alice"));
    headers.insert("deputy-scope", HeaderValue::from_static("events:read"));
    request
}

async fn whole_body(response: Response<Incoming>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// The whole body as text.
pub async fn text(response: Response<Incoming>) -> String {
    String::from_utf8_lossy(&whole_body(response).await).into_owned()
}

/// The whole body as JSON.
pub async fn json(response: Response<Incoming>) -> serde_json::Value {
    let bytes = whole_body(response).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Asserts that `response` is the problem `kind` (`urn:deputy:problem:KIND`) with `status`, its
/// detail saying `detail_has`; returns the problem.
pub async fn expect_problem(
    response: Response<Incoming>,
    status: http::StatusCode,
    kind: &str,
    detail_has: &str,
) -> serde_json::Value {
    assert_eq!(response.status(), status);
    let problem = json(response).await;
    assert_eq!(
        problem["type"],
        format!("urn:deputy:problem:{kind}"),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains(detail_has)),
        "{detail_has:?} not in {problem}"
    );
    problem
}
