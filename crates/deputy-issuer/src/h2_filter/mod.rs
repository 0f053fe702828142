//! An HTTP/2 filter in front of the issuer's gRPC servers, so that they accept the `:authority`
//! gRPC clients send on unix sockets.
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
//! client's table) and encodes it again (with a table of its own, which h2's decoder mirrors),
//! keeping each field's representation where it matters (a never-indexed field stays never
//! indexed). Every other frame passes byte for byte, and so does the server's direction, except
//! for the frames the filter answers with itself, written between the server's frames
//! (`connection.rs`). The filter answers as h2 would:
//!
//! - a client that breaks HTTP/2 framing or HPACK gets GOAWAY with the matching error code and
//!   its connection is closed;
//! - a header list larger than the server takes refuses that stream only (`431`, then
//!   `RST_STREAM(REFUSED_STREAM)`), and the connection's other streams go on;
//! - a client's half-close is passed on, and the server's answers still reach the client.

mod connection;
mod frames;
mod representation;
#[cfg(test)]
mod tests;

pub(crate) use connection::filtered;

use frames::{
    CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED,
    FLAG_PRIORITY, FRAME_CONTINUATION, FRAME_DATA, FRAME_HEADERS, FRAME_PUSH_PROMISE,
    FRAME_RST_STREAM, FRAME_SIZE_ERROR, PROTOCOL_ERROR, write_frame,
};
use representation::{Representation, representations, write_unindexed};

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
/// Largest decoded header list the filter passes on, counted as HPACK counts it (name, value
/// and 32 bytes per field): hyper's server limit. Without it, a 64 KiB block of one-byte
/// references to a 4 KiB table entry would decode to a quarter of a gigabyte.
const MAX_HEADER_LIST: usize = 16 * 1024;
/// The HPACK table size h2 advertises (the protocol default; tonic does not change it), so the
/// most a client's table may hold.
const HPACK_TABLE: usize = 4096;
/// Most refused streams whose frames the filter keeps from the server: past it the oldest is
/// forgotten (a frame on it then reaches the server, which closes the connection as h2 does
/// for a frame on a stream it never opened).
const MAX_REFUSED_STREAMS: usize = 64;

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
    /// A client sent PUSH_PROMISE, which only servers may send.
    #[error("a client sent PUSH_PROMISE")]
    PushPromise,
    /// The header block could not be decompressed.
    #[error("the header block is not valid HPACK: {0}")]
    Hpack(String),
    /// HEADERS on the connection's own stream (0), or a server-initiated (even) one.
    #[error("HEADERS on stream {0}, which a client may not open")]
    BadStream(u32),
}

impl FilterError {
    /// The GOAWAY error code h2 would close the connection with (RFC 9113 section 7); `None`
    /// for a client that never spoke HTTP/2, which h2 closes without a frame.
    pub(crate) fn goaway_code(&self) -> Option<u32> {
        match self {
            Self::NoPreface => None,
            Self::FrameTooLarge(_) => Some(FRAME_SIZE_ERROR),
            Self::BlockTooLarge => Some(ENHANCE_YOUR_CALM),
            Self::Hpack(_) => Some(COMPRESSION_ERROR),
            Self::BadPadding | Self::BadContinuation | Self::PushPromise | Self::BadStream(_) => {
                Some(PROTOCOL_ERROR)
            }
        }
    }
}

/// A header block being collected from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// What the filter makes of the client's bytes: frames for the server, and frames it answers
/// the client with itself.
#[derive(Debug, Default)]
pub(crate) struct Filtered {
    pub(crate) to_server: Vec<u8>,
    pub(crate) to_client: Vec<u8>,
}

/// The pure part: bytes from the client in, bytes for the HTTP/2 server (and the filter's own
/// answers to the client) out.
pub(crate) struct RequestRewriter {
    preface_seen: bool,
    pending: Vec<u8>,
    block: Option<OpenBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    rewritten: u64,
    /// The highest stream whose headers reached the server: GOAWAY's last stream.
    last_stream: u32,
    /// Streams refused by the filter whose frames the client may still send; the server never
    /// heard of them, so their frames must not reach it.
    refused: Vec<u32>,
}

impl std::fmt::Debug for RequestRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRewriter")
            .field("pending", &self.pending.len())
            .field("rewritten", &self.rewritten)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl RequestRewriter {
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
            last_stream: 0,
            refused: Vec::new(),
        }
    }

    /// How many authorities were replaced so far.
    pub(crate) fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// The highest stream the server may have acted on.
    pub(crate) fn last_stream(&self) -> u32 {
        self.last_stream
    }

    /// Takes the next bytes the client sent and appends to `out` whatever can be passed on, or
    /// answered. Bytes of an incomplete frame are kept for the next call.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Filtered) -> Result<(), FilterError> {
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
            out.to_server.extend_from_slice(PREFACE);
            self.preface_seen = true;
            at = PREFACE.len();
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.frames(&pending, &mut at, out);
        self.pending = pending;
        self.pending.drain(..at);
        result
    }

    /// Handles the whole frames of `bytes` from `at` on, moving `at` past them.
    fn frames(
        &mut self,
        bytes: &[u8],
        at: &mut usize,
        out: &mut Filtered,
    ) -> Result<(), FilterError> {
        while let Some(header) = bytes.get(*at..*at + 9) {
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if length > MAX_FRAME {
                return Err(FilterError::FrameTooLarge(length));
            }
            let Some(frame) = bytes.get(*at..*at + 9 + length) else {
                break;
            };
            *at += 9 + length;
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[9..];
            match (kind, self.block.as_mut()) {
                (FRAME_CONTINUATION, Some(block)) if block.stream == stream => {
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
                (FRAME_HEADERS, None) if stream == 0 || stream % 2 == 0 => {
                    return Err(FilterError::BadStream(stream));
                }
                (FRAME_HEADERS, None) => self.block = Some(open_block(flags, stream, payload)?),
                (_, None) if self.refused.contains(&stream) => {
                    self.drop_refused(kind, flags, stream, payload.len(), out);
                }
                (_, None) => out.to_server.extend_from_slice(frame),
            }
            if self
                .block
                .as_ref()
                .is_some_and(|b| b.flags & FLAG_END_HEADERS != 0)
                && let Some(block) = self.block.take()
            {
                self.header_block(block, out)?;
            }
        }
        Ok(())
    }

    /// A frame on a stream the filter refused: not for the server. DATA is given back to the
    /// connection's flow-control window; the stream is forgotten once the client ends it.
    fn drop_refused(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        length: usize,
        out: &mut Filtered,
    ) {
        if kind == FRAME_DATA && length > 0 {
            frames::connection_window_update(&mut out.to_client, length as u32);
        }
        let ended = kind == FRAME_RST_STREAM
            || (matches!(kind, FRAME_DATA | FRAME_HEADERS) && flags & FLAG_END_STREAM != 0);
        if ended {
            self.refused.retain(|s| *s != stream);
        }
    }

    /// Decodes a whole block with the client's table; writes it again for the server with the
    /// authority fixed, or refuses its stream when the header list is too large.
    fn header_block(&mut self, block: OpenBlock, out: &mut Filtered) -> Result<(), FilterError> {
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
        let ends_stream = block.flags & FLAG_END_STREAM != 0;
        if self.refused.contains(&block.stream) {
            // Trailers of a refused stream: decoded (the table moved on), not passed on.
            if ends_stream {
                self.refused.retain(|s| *s != block.stream);
            }
            return Ok(());
        }
        if size > MAX_HEADER_LIST && block.stream <= self.last_stream {
            // Trailers of a stream the server knows: both ends are told the stream is over.
            frames::reset(&mut out.to_server, block.stream, CANCEL);
            frames::reset(&mut out.to_client, block.stream, PROTOCOL_ERROR);
            return Ok(());
        }
        if size > MAX_HEADER_LIST {
            frames::refuse_stream(&mut out.to_client, block.stream);
            if !ends_stream {
                if self.refused.len() >= MAX_REFUSED_STREAMS {
                    self.refused.remove(0);
                }
                self.refused.push(block.stream);
            }
            return Ok(());
        }
        // The decoder accepted the block, so its fields parse; `representations` agrees.
        let kinds = representations(&block.fragment)
            .filter(|kinds| kinds.len() == headers.len())
            .ok_or_else(|| FilterError::Hpack("a field the decoder took was not read".into()))?;
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
        for ((name, value), kind) in headers.iter().zip(kinds) {
            match kind {
                Representation::Indexable => self
                    .encoder
                    .encode_header_into((name, value), &mut encoded)
                    .expect("writing to a Vec cannot fail"),
                Representation::WithoutIndexing => {
                    write_unindexed(&mut encoded, false, name, value);
                }
                Representation::NeverIndexed => write_unindexed(&mut encoded, true, name, value),
            }
        }
        // The first frame keeps the block's END_STREAM and PRIORITY flags; padding is dropped.
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut kind = FRAME_HEADERS;
        let mut flags = block.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= FLAG_END_HEADERS;
            }
            write_frame(&mut out.to_server, kind, flags, block.stream, chunk);
            kind = FRAME_CONTINUATION;
            flags = 0;
        }
        if encoded.is_empty() {
            write_frame(
                &mut out.to_server,
                kind,
                flags | FLAG_END_HEADERS,
                block.stream,
                &[],
            );
        }
        self.last_stream = self.last_stream.max(block.stream);
        Ok(())
    }
}

/// Starts a block from a HEADERS frame: padding removed, priority fields kept aside.
fn open_block(flags: u8, stream: u32, payload: &[u8]) -> Result<OpenBlock, FilterError> {
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
        stream,
        flags,
        priority,
        fragment: fragment.to_vec(),
    })
}

/// Whether h2 accepts `value` as an authority (the same parser it uses).
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}
