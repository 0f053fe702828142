//! Accepting the HTTP/2 `:authority` that gRPC clients send on unix sockets.
//!
//! gRPC C-core (Python's grpcio and so py-spiffe, Ruby, PHP), grpc-java (java-spiffe) and
//! grpcurl send the socket path, or a percent-encoded form of it, as the `:authority` of calls on
//! a unix socket. The h2 crate under tonic refuses an authority that is not a valid URI
//! authority with `RST_STREAM(PROTOCOL_ERROR)` (hyperium/h2 PR #487, open), so those clients
//! could not reach the APIs; a SPIRE agent (Go's HTTP/2 server) accepts them. On a unix socket
//! the authority names nothing the server uses, so this filter sits between the socket and
//! the HTTP/2 server and replaces an authority h2 would refuse with `localhost`.
//!
//! Header blocks are HPACK-compressed against a table both ends keep, so one header cannot be
//! changed in place: the filter decodes every header block the client sends (with the
//! client's table) and encodes it again (with a table of its own, which h2's decoder mirrors).
//! Every other frame, and the whole server-to-client direction, passes byte for byte. A client
//! that breaks HTTP/2 framing or HPACK has its connection closed, as h2 would close it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// What replaces an authority h2 would refuse.
const REPLACEMENT: &[u8] = b"localhost";
/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest frame payload a client may send: the HTTP/2 default, which the issuer's servers
/// never raise (tonic's `max_frame_size` is left unset).
const MAX_FRAME: usize = 16_384;
/// Largest header block (all its fragments) the filter holds; Workload API calls send a few
/// hundred bytes, and hyper's server refuses header lists over 16 KiB anyway.
const MAX_BLOCK: usize = 64 * 1024;
/// Largest decoded header list the filter writes again, counted as HPACK counts it (name, value
/// and 32 bytes per field): hyper's server limit. Without it, a 64 KiB block of one-byte
/// references to a 4 KiB table entry would decode to a quarter of a gigabyte.
const MAX_HEADER_LIST: usize = 16 * 1024;
/// The HPACK table size h2 advertises (the protocol default; tonic does not change it), so the
/// most a client's table may hold.
const HPACK_TABLE: usize = 4096;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
/// Only servers push; h2 refuses one from a client, and the filter does not forward it.
const FRAME_PUSH_PROMISE: u8 = 0x5;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a client's connection was closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum FilterError {
    /// The connection did not start with the HTTP/2 client preface.
    #[error("the client did not send the HTTP/2 connection preface")]
    NoPreface,
    /// A frame was larger than the server allows.
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME} bytes allowed")]
    FrameTooLarge(usize),
    /// A header block was larger than the filter holds.
    #[error("a header block is larger than {MAX_BLOCK} bytes")]
    BlockTooLarge,
    /// Padding or priority fields did not fit in the frame.
    #[error("a HEADERS frame's padding or priority does not fit in the frame")]
    BadPadding,
    /// A CONTINUATION frame did not continue an open header block, or another frame
    /// interrupted one.
    #[error("CONTINUATION frames out of sequence")]
    BadContinuation,
    /// The decoded header list was larger than the server takes.
    #[error("a header list decodes to more than {MAX_HEADER_LIST} bytes")]
    HeaderListTooLarge,
    /// A client sent PUSH_PROMISE, which only servers may send.
    #[error("a client sent PUSH_PROMISE")]
    PushPromise,
    /// The header block could not be decompressed.
    #[error("the header block is not valid HPACK: {0}")]
    Hpack(String),
}

/// A header block being collected from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct OpenBlock {
    stream_id: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The pure part: bytes from the client in, bytes for the HTTP/2 server out.
pub(crate) struct AuthorityRewriter {
    preface_seen: bool,
    pending: Vec<u8>,
    block: Option<OpenBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    rewritten: u64,
}

impl std::fmt::Debug for AuthorityRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRewriter")
            .field("pending", &self.pending.len())
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl AuthorityRewriter {
    pub(crate) fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE);
        Self {
            preface_seen: false,
            pending: Vec::new(),
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            rewritten: 0,
        }
    }

    /// How many authorities were replaced so far.
    pub(crate) fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes the next bytes the client sent and appends to `out` whatever can be passed on.
    /// Bytes of an incomplete frame are kept for the next call.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
        self.pending.extend_from_slice(input);
        let mut at = 0;
        if !self.preface_seen {
            let have = self.pending.len().min(PREFACE.len());
            if self.pending[..have] != PREFACE[..have] {
                return Err(FilterError::NoPreface);
            }
            if have < PREFACE.len() {
                return Ok(());
            }
            out.extend_from_slice(PREFACE);
            self.preface_seen = true;
            at = PREFACE.len();
        }
        while let Some(header) = self.pending.get(at..at + 9) {
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if length > MAX_FRAME {
                return Err(FilterError::FrameTooLarge(length));
            }
            let Some(frame) = self.pending.get(at..at + 9 + length) else {
                break;
            };
            let (kind, flags) = (frame[3], frame[4]);
            let stream_id = [frame[5], frame[6], frame[7], frame[8]];
            let payload = &frame[9..];
            match (kind, self.block.as_mut()) {
                (FRAME_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                    if block.fragment.len() + payload.len() > MAX_BLOCK {
                        return Err(FilterError::BlockTooLarge);
                    }
                    block.fragment.extend_from_slice(payload);
                    block.flags |= flags & FLAG_END_HEADERS;
                }
                (_, Some(_)) | (FRAME_CONTINUATION, None) => {
                    return Err(FilterError::BadContinuation);
                }
                (FRAME_PUSH_PROMISE, None) => return Err(FilterError::PushPromise),
                (FRAME_HEADERS, None) => self.block = Some(open_block(flags, stream_id, payload)?),
                (_, None) => out.extend_from_slice(frame),
            }
            at += 9 + length;
            if self
                .block
                .as_ref()
                .is_some_and(|b| b.flags & FLAG_END_HEADERS != 0)
                && let Some(block) = self.block.take()
            {
                self.reencode(block, out)?;
            }
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// Decodes a whole block with the client's table and writes it again, authority fixed.
    fn reencode(&mut self, block: OpenBlock, out: &mut Vec<u8>) -> Result<(), FilterError> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                // Counted for every field, kept only while within the limit: the decoder must
                // still walk the whole block to keep its table in step with the client's.
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_HEADER_LIST {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| FilterError::Hpack(format!("{e:?}")))?;
        if size > MAX_HEADER_LIST {
            return Err(FilterError::HeaderListTooLarge);
        }
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                *value = REPLACEMENT.to_vec();
                self.rewritten += 1;
            }
        }
        let mut encoded = Vec::new();
        if let Some(priority) = block.priority {
            encoded.extend_from_slice(&priority);
        }
        encoded.extend_from_slice(
            &self
                .encoder
                .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))),
        );
        // The first frame keeps the block's END_STREAM and PRIORITY flags; padding is dropped.
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut kind = FRAME_HEADERS;
        let mut flags = block.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= FLAG_END_HEADERS;
            }
            write_frame(out, kind, flags, block.stream_id, chunk);
            kind = FRAME_CONTINUATION;
            flags = 0;
        }
        if encoded.is_empty() {
            write_frame(out, kind, flags | FLAG_END_HEADERS, block.stream_id, &[]);
        }
        Ok(())
    }
}

/// Starts a block from a HEADERS frame: padding removed, priority fields kept aside.
fn open_block(flags: u8, stream_id: [u8; 4], payload: &[u8]) -> Result<OpenBlock, FilterError> {
    let mut rest = payload;
    let mut padding = 0;
    if flags & FLAG_PADDED != 0 {
        let (&pad, tail) = rest.split_first().ok_or(FilterError::BadPadding)?;
        padding = usize::from(pad);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, tail) = rest.split_at_checked(5).ok_or(FilterError::BadPadding)?;
        priority = Some(fields.try_into().map_err(|_| FilterError::BadPadding)?);
        rest = tail;
    }
    let fragment = rest
        .get(
            ..rest
                .len()
                .checked_sub(padding)
                .ok_or(FilterError::BadPadding)?,
        )
        .ok_or(FilterError::BadPadding)?;
    Ok(OpenBlock {
        stream_id,
        flags,
        priority,
        fragment: fragment.to_vec(),
    })
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: [u8; 4], payload: &[u8]) {
    let length = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id);
    out.extend_from_slice(payload);
}

/// Whether h2 accepts `value` as an authority (the same parser it uses).
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

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

/// Moves bytes between the client's socket and the server's end of the duplex: client bytes
/// through the rewriter, server bytes as they are. Ends when either side closes.
async fn pump(client: UnixStream, server: DuplexStream) {
    let peer = client
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let inbound = async {
        let mut rewriter = AuthorityRewriter::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::with_capacity(buf.len());
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            out.clear();
            if let Err(error) = rewriter.feed(&buf[..n], &mut out) {
                tracing::debug!(pid = %peer, %error, "closing a client connection that broke HTTP/2");
                break;
            }
            if server_write.write_all(&out).await.is_err() {
                break;
            }
        }
        if rewriter.rewritten() > 0 {
            tracing::debug!(pid = %peer, replaced = rewriter.rewritten(), "accepted unix-socket :authority values h2 would refuse");
        }
    };
    let outbound = tokio::io::copy(&mut server_read, &mut client_write);
    // Either direction ending ends the connection: the server sees EOF, the client a close.
    tokio::select! {
        () = inbound => {}
        _ = outbound => {}
    }
    let _ = server_write.shutdown().await;
    let _ = client_write.shutdown().await;
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

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn request(authority: &str, path: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("workload.spiffe.io", "true"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, kind, flags, stream.to_be_bytes(), payload);
        out
    }

    /// Splits a byte stream into frames (after the preface): (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        frames
    }

    /// Feeds `input` to a rewriter `step` bytes at a time.
    fn rewrite(input: &[u8], step: usize) -> Result<Vec<u8>, FilterError> {
        let mut rewriter = AuthorityRewriter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            rewriter.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    /// Decodes every header block of the server's view, as h2 would.
    fn server_view(bytes: &[u8]) -> Vec<Headers> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut fragment = Vec::new();
        for (kind, flags, _, payload) in frames(bytes) {
            match kind {
                FRAME_HEADERS => {
                    let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    fragment = payload[skip..].to_vec();
                }
                FRAME_CONTINUATION => fragment.extend_from_slice(&payload),
                _ => continue,
            }
            if flags & FLAG_END_HEADERS != 0 {
                blocks.push(decoder.decode(&fragment).expect("valid HPACK"));
            }
        }
        blocks
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_across_a_shared_table() {
        // The client indexes the path-valued authority, then refers to it by index.
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for (stream, path) in [
            (1, "/SpiffeWorkloadAPI/FetchX509SVID"),
            (3, "/SpiffeWorkloadAPI/FetchJWTSVID"),
        ] {
            let headers = request("/run/spire/agent/public/api.sock", path);
            let block = client.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
        }
        for step in [1, 7, input.len()] {
            let out = rewrite(&input, step).expect("rewrites");
            let blocks = server_view(&out);
            assert_eq!(blocks.len(), 2);
            for (block, path) in blocks.iter().zip([
                "/SpiffeWorkloadAPI/FetchX509SVID",
                "/SpiffeWorkloadAPI/FetchJWTSVID",
            ]) {
                assert_eq!(block, &request("localhost", path), "step {step}");
            }
            // SETTINGS and DATA frames pass unchanged.
            let kinds: Vec<u8> = frames(&out).iter().map(|f| f.0).collect();
            assert_eq!(kinds, [0x4, FRAME_HEADERS, 0x0, FRAME_HEADERS, 0x0]);
            assert_eq!(
                frames(&out)[2],
                (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec())
            );
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let headers = request("localhost:8081", "/x");
        let block = loona_hpack::Encoder::new()
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &block,
        ));
        let out = rewrite(&input, 5).expect("rewrites");
        assert_eq!(server_view(&out), [headers]);
        assert_eq!(frames(&out)[0].1, FLAG_END_HEADERS | FLAG_END_STREAM);
    }

    #[test]
    fn padding_priority_and_continuations_are_understood() {
        let headers = request("%2Ftmp%2Fapi.sock", "/x");
        let block = loona_hpack::Encoder::new()
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let (first, second) = block.split_at(10);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority: stream 0, weight 16
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, second));
        let out = rewrite(&input, 3).expect("rewrites");
        assert_eq!(server_view(&out), [request("localhost", "/x")]);
        let (kind, flags, stream, payload) = &frames(&out)[0];
        assert_eq!((*kind, *stream), (FRAME_HEADERS, 5));
        assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(payload[..5], [0, 0, 0, 0, 16]);
    }

    #[test]
    fn broken_framing_closes_the_connection() {
        let mut no_preface = b"GET / HTTP/1.1\r\n".to_vec();
        no_preface.extend_from_slice(&[0; 16]);
        assert_eq!(rewrite(&no_preface, 4), Err(FilterError::NoPreface));

        let mut orphan = PREFACE.to_vec();
        orphan.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b"\x82"));
        assert_eq!(rewrite(&orphan, 100), Err(FilterError::BadContinuation));

        let mut interrupted = PREFACE.to_vec();
        interrupted.extend(frame(FRAME_HEADERS, 0, 1, b"\x82"));
        interrupted.extend(frame(0x0, 0, 1, b"data"));
        assert_eq!(
            rewrite(&interrupted, 100),
            Err(FilterError::BadContinuation)
        );

        let mut huge = PREFACE.to_vec();
        huge.extend_from_slice(&[0x01, 0x00, 0x00, 0x0, 0, 0, 0, 0, 1]);
        assert_eq!(rewrite(&huge, 100), Err(FilterError::FrameTooLarge(65_536)));

        let mut overpadded = PREFACE.to_vec();
        overpadded.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        assert_eq!(rewrite(&overpadded, 100), Err(FilterError::BadPadding));

        let mut bad_hpack = PREFACE.to_vec();
        bad_hpack.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff],
        ));
        assert!(matches!(
            rewrite(&bad_hpack, 100),
            Err(FilterError::Hpack(_))
        ));
    }

    #[test]
    fn a_header_list_that_decodes_past_the_limit_closes_the_connection() {
        // One 4 KiB value added to the client's table, then ten thousand one-byte references to
        // it: 14 KB on the wire, 40 MB decoded.
        let mut block = vec![0x7A, 0x7F, 0xA1, 0x1E];
        block.extend(std::iter::repeat_n(b'a', 4000));
        block.extend(std::iter::repeat_n(0xBE, 10_000));
        let mut bomb = PREFACE.to_vec();
        bomb.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        assert_eq!(rewrite(&bomb, 1000), Err(FilterError::HeaderListTooLarge));

        let mut push = PREFACE.to_vec();
        push.extend(frame(
            FRAME_PUSH_PROMISE,
            FLAG_END_HEADERS,
            1,
            &[0, 0, 0, 2, 0x82],
        ));
        assert_eq!(rewrite(&push, 100), Err(FilterError::PushPromise));
    }
}
