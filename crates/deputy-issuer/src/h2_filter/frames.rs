//! HTTP/2 frames as the filter writes them (RFC 9113 section 6), and where frames end in the
//! server's byte stream, so that a frame of the filter's own is never written inside one of the
//! server's.

pub(super) const FRAME_DATA: u8 = 0x0;
pub(super) const FRAME_HEADERS: u8 = 0x1;
pub(super) const FRAME_RST_STREAM: u8 = 0x3;
/// Only servers push; h2 refuses one from a client, and the filter does not forward it.
pub(super) const FRAME_PUSH_PROMISE: u8 = 0x5;
pub(super) const FRAME_GOAWAY: u8 = 0x7;
pub(super) const FRAME_WINDOW_UPDATE: u8 = 0x8;
pub(super) const FRAME_CONTINUATION: u8 = 0x9;
pub(super) const FLAG_END_STREAM: u8 = 0x1;
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const FLAG_PADDED: u8 = 0x8;
pub(super) const FLAG_PRIORITY: u8 = 0x20;

/// Error codes (RFC 9113 section 7).
pub(super) const PROTOCOL_ERROR: u32 = 0x1;
pub(super) const FRAME_SIZE_ERROR: u32 = 0x6;
pub(super) const REFUSED_STREAM: u32 = 0x7;
pub(super) const CANCEL: u32 = 0x8;
pub(super) const COMPRESSION_ERROR: u32 = 0x9;
pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Appends one frame.
pub(super) fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// GOAWAY: the connection ends; streams up to `last_stream` may have been processed.
pub(super) fn goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    let mut payload = (last_stream & 0x7fff_ffff).to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    write_frame(out, FRAME_GOAWAY, 0, 0, &payload);
}

/// What h2's server answers a request whose header list is too large (RFC 9113 section
/// 10.5.1): a `431 Request Header Fields Too Large` response that ends the stream, then
/// RST_STREAM(REFUSED_STREAM) so that the client sends nothing more on it. The status is
/// written as a literal that is not indexed (name: static entry 8, `:status`), so it changes
/// no HPACK table: the server's encoder and the client's decoder stay in step.
pub(super) fn refuse_stream(out: &mut Vec<u8>, stream: u32) {
    write_frame(
        out,
        FRAME_HEADERS,
        FLAG_END_STREAM | FLAG_END_HEADERS,
        stream,
        &[0x08, 0x03, b'4', b'3', b'1'],
    );
    reset(out, stream, REFUSED_STREAM);
}

/// RST_STREAM: the stream ends, for the reason `code`.
pub(super) fn reset(out: &mut Vec<u8>, stream: u32, code: u32) {
    write_frame(out, FRAME_RST_STREAM, 0, stream, &code.to_be_bytes());
}

/// WINDOW_UPDATE of the connection: gives the client back flow-control credit for DATA the
/// server never saw (it would otherwise never be returned).
pub(super) fn connection_window_update(out: &mut Vec<u8>, bytes: u32) {
    write_frame(out, FRAME_WINDOW_UPDATE, 0, 0, &bytes.to_be_bytes());
}

/// Where the filter may write a frame of its own into a byte stream read in arbitrary pieces:
/// after the server's first frame (its SETTINGS must come first), at the end of a frame, and not
/// inside a header block (nothing may come between HEADERS and its CONTINUATION frames).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FrameBoundaries {
    header: [u8; 9],
    /// Bytes of the current frame header seen.
    header_seen: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// A whole frame has passed.
    started: bool,
    /// A HEADERS or PUSH_PROMISE frame without END_HEADERS passed, and no CONTINUATION ended it.
    in_header_block: bool,
}

impl FrameBoundaries {
    /// Whether a frame of the filter's own may be written now.
    pub(super) fn at_boundary(&self) -> bool {
        self.started && !self.in_header_block && self.header_seen == 0 && self.payload_left == 0
    }

    /// Counts `bytes` as passed on.
    pub(super) fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len());
                self.payload_left -= take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (9 - self.header_seen).min(bytes.len());
            self.header[self.header_seen..self.header_seen + take].copy_from_slice(&bytes[..take]);
            self.header_seen += take;
            bytes = &bytes[take..];
            if self.header_seen == 9 {
                self.header_seen = 0;
                self.payload_left = usize::from(self.header[0]) << 16
                    | usize::from(self.header[1]) << 8
                    | usize::from(self.header[2]);
                self.started = true;
                let (kind, flags) = (self.header[3], self.header[4]);
                if matches!(
                    kind,
                    FRAME_HEADERS | FRAME_PUSH_PROMISE | FRAME_CONTINUATION
                ) {
                    self.in_header_block = flags & FLAG_END_HEADERS == 0;
                }
            }
        }
    }

    /// How many of `bytes` to pass on to reach the next frame boundary (all of them when none
    /// is within them).
    pub(super) fn until_boundary(&self, bytes: &[u8]) -> usize {
        let mut ahead = *self;
        for (at, byte) in bytes.iter().enumerate() {
            ahead.pass(std::slice::from_ref(byte));
            if ahead.at_boundary() {
                return at + 1;
            }
        }
        bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_found_across_pieces() {
        let mut stream = Vec::new();
        write_frame(&mut stream, FRAME_DATA, 0, 1, b"hello");
        write_frame(&mut stream, FRAME_DATA, 0, 1, b"");
        write_frame(&mut stream, FRAME_DATA, 0, 1, b"world!");
        let mut seen = FrameBoundaries::default();
        assert!(!seen.at_boundary(), "not before the server's first frame");
        assert_eq!(seen.until_boundary(&stream), 14);
        seen.pass(&stream[..10]);
        assert!(!seen.at_boundary());
        assert_eq!(seen.until_boundary(&stream[10..]), 4);
        seen.pass(&stream[10..14]);
        assert!(seen.at_boundary());
        assert_eq!(seen.until_boundary(&stream[14..]), 9, "an empty frame");
        seen.pass(&stream[14..20]);
        assert_eq!(
            seen.until_boundary(&stream[20..22]),
            2,
            "no boundary within"
        );
    }

    #[test]
    fn nothing_is_written_inside_a_header_block() {
        let mut stream = Vec::new();
        write_frame(&mut stream, FRAME_HEADERS, 0, 1, b"\x88");
        write_frame(&mut stream, FRAME_CONTINUATION, 0, 1, b"\x82");
        write_frame(
            &mut stream,
            FRAME_CONTINUATION,
            FLAG_END_HEADERS,
            1,
            b"\x84",
        );
        let mut seen = FrameBoundaries::default();
        assert_eq!(seen.until_boundary(&stream), stream.len());
        seen.pass(&stream[..20]);
        assert!(!seen.at_boundary(), "between HEADERS and CONTINUATION");
        seen.pass(&stream[20..]);
        assert!(seen.at_boundary());
    }
}
