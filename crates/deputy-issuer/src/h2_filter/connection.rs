//! The filter's I/O: a task per client connection moving bytes between the client's socket and
//! the server's end of an in-memory pipe. Client bytes go through the [`RequestRewriter`];
//! server bytes pass as they are, with the filter's own answers written between the server's
//! frames.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::frames::{FrameBoundaries, goaway};
use super::{Filtered, MAX_BLOCK, RequestRewriter};

/// A client connection as the HTTP/2 server sees it: the filtered bytes, and the kernel's
/// credentials of the real socket's peer (what attestation reads).
#[derive(Debug)]
pub(crate) struct FilteredConnection {
    io: DuplexStream,
    info: UdsConnectInfo,
}

impl FilteredConnection {
    /// Puts the filter between `stream` and the server, on a task of its own.
    pub(crate) fn new(stream: UnixStream) -> Self {
        let info = stream.connect_info();
        let (server_side, filter_side) = tokio::io::duplex(MAX_BLOCK);
        tokio::spawn(pump(stream, filter_side));
        Self {
            io: server_side,
            info,
        }
    }
}

impl Connected for FilteredConnection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for FilteredConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for FilteredConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Batches of the filter's answers waiting for the client; past it the client is not read.
const ANSWERS_IN_FLIGHT: usize = 16;
/// Bytes of answers held for a frame boundary of the server's; past it, none are taken in.
const MAX_QUEUED: usize = 64 * 1024;

/// What the client side tells the server side to write to the client.
#[derive(Debug)]
enum ToClient {
    /// The filter's own frames, between two of the server's.
    Frames(Vec<u8>),
    /// Frames (a GOAWAY), then the connection ends.
    Close(Vec<u8>),
}

/// Moves bytes between the client's socket and the server's end of the duplex. The connection
/// ends when the server closes its end, when the filter closes it (GOAWAY), or when the client's
/// socket fails; a client's half-close is passed on to the server, whose answers still go out.
async fn pump(client: UnixStream, server: DuplexStream) {
    let peer = client
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = tokio::io::split(server);
    // Bounded: a client that does not read its answers stops being read (no memory grows).
    let (answers, answered) = mpsc::channel(ANSWERS_IN_FLIGHT);
    let from_client = from_client(client_read, server_write, answers, peer);
    let to_client = to_client(server_read, client_write, answered);
    tokio::pin!(from_client);
    tokio::pin!(to_client);
    tokio::select! {
        () = &mut to_client => {}
        // The client's side ended (its half-close passed on, or GOAWAY queued): the server's
        // answers, and the filter's, still go out until the server's side ends too.
        () = &mut from_client => to_client.await,
    }
}

/// The client's bytes through the rewriter to the server; the filter's answers to the channel.
async fn from_client(
    mut client: tokio::net::unix::OwnedReadHalf,
    mut server: tokio::io::WriteHalf<DuplexStream>,
    answers: mpsc::Sender<ToClient>,
    peer: String,
) {
    let mut rewriter = RequestRewriter::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Filtered::default();
    loop {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.to_server.clear();
        out.to_client.clear();
        let fed = rewriter.feed(&buf[..n], &mut out);
        if !out.to_client.is_empty() {
            let frames = ToClient::Frames(std::mem::take(&mut out.to_client));
            if answers.send(frames).await.is_err() {
                break;
            }
        }
        if server.write_all(&out.to_server).await.is_err() {
            break;
        }
        if let Err(error) = fed {
            tracing::debug!(pid = %peer, %error, "closing a client connection that broke HTTP/2");
            let mut frames = Vec::new();
            if let Some(code) = error.goaway_code() {
                goaway(&mut frames, rewriter.last_stream(), code);
            }
            let _ = answers.send(ToClient::Close(frames)).await;
            break;
        }
    }
    if rewriter.rewritten() > 0 {
        tracing::debug!(pid = %peer, replaced = rewriter.rewritten(), "accepted unix-socket :authority values h2 would refuse");
    }
    // The server sees the client's half-close, or the end of a connection the filter closed.
    let _ = server.shutdown().await;
}

/// The server's bytes to the client, then the client's socket closed.
async fn to_client(
    mut server: tokio::io::ReadHalf<DuplexStream>,
    mut client: tokio::net::unix::OwnedWriteHalf,
    mut answered: mpsc::Receiver<ToClient>,
) {
    forward_to_client(&mut server, &mut client, &mut answered).await;
    let _ = client.shutdown().await;
}

/// The server's bytes to the client, with the filter's answers written at frame boundaries.
/// Ends when the server's side ends, after a [`ToClient::Close`], or when the client's socket
/// cannot be written.
async fn forward_to_client(
    server: &mut tokio::io::ReadHalf<DuplexStream>,
    client: &mut tokio::net::unix::OwnedWriteHalf,
    answered: &mut mpsc::Receiver<ToClient>,
) {
    let mut boundaries = FrameBoundaries::default();
    let mut queued = Vec::new();
    let mut closing = false;
    let mut listening = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Queued answers go out as soon as the server's bytes end at a frame boundary.
        if boundaries.at_boundary() && !queued.is_empty() {
            if client.write_all(&queued).await.is_err() {
                return;
            }
            queued.clear();
        }
        if closing && queued.is_empty() {
            return;
        }
        tokio::select! {
            read = server.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut chunk = &buf[..n];
                while !chunk.is_empty() {
                    let upto = if queued.is_empty() { chunk.len() } else { boundaries.until_boundary(chunk) };
                    if client.write_all(&chunk[..upto]).await.is_err() {
                        return;
                    }
                    boundaries.pass(&chunk[..upto]);
                    chunk = &chunk[upto..];
                    if boundaries.at_boundary() && !queued.is_empty() {
                        if client.write_all(&queued).await.is_err() {
                            return;
                        }
                        queued.clear();
                    }
                }
            }
            answer = answered.recv(), if listening && !closing && queued.len() < MAX_QUEUED => match answer {
                Some(ToClient::Frames(frames)) => queued.extend(frames),
                Some(ToClient::Close(frames)) => {
                    queued.extend(frames);
                    closing = true;
                }
                // The client's side is done; the server's answers still go out.
                None => listening = false,
            },
        }
    }
    // The server ended: what the filter still had to say goes out if it can (at a boundary).
    while let Ok(ToClient::Frames(frames) | ToClient::Close(frames)) = answered.try_recv() {
        queued.extend(frames);
    }
    if boundaries.at_boundary() && !queued.is_empty() {
        let _ = client.write_all(&queued).await;
    }
}
/// Wraps each accepted unix connection in the filter.
pub(crate) fn filtered(
    listener: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<FilteredConnection>> {
    futures::stream::unfold(Arc::new(listener), |listener| async move {
        let next = listener
            .accept()
            .await
            .map(|(stream, _)| FilteredConnection::new(stream));
        Some((next, listener))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2_filter::PREFACE;

    #[tokio::test]
    async fn the_servers_bytes_after_a_client_half_close_are_delivered() {
        let (mut client, filter_socket) = UnixStream::pair().expect("socket pair");
        let (mut server, filter_server_side) = tokio::io::duplex(MAX_BLOCK);
        let filter = tokio::spawn(pump(filter_socket, filter_server_side));
        let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        client.write_all(PREFACE).await.expect("write");
        client.write_all(&settings).await.expect("write");
        client.shutdown().await.expect("half-close");
        // The server gets the client's bytes, then its half-close.
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, [PREFACE, &settings[..]].concat());
        // Only now does the server answer; the answer still reaches the client.
        let answer = [0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];
        server.write_all(&answer).await.expect("write");
        drop(server);
        let mut delivered = Vec::new();
        client.read_to_end(&mut delivered).await.expect("read");
        assert_eq!(delivered, answer);
        filter.await.expect("the filter's task ends");
    }
}
