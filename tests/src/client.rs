//! A plain HTTP/1.1 or h2c client, as an agent would use against its outbound listener.

use bytes::Bytes;
use http::{Request, Response};
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

/// The whole body as JSON.
pub async fn json(response: Response<Incoming>) -> serde_json::Value {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}
