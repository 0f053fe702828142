//! The HTTP/2 filter in front of the issuer's servers, spoken to frame by frame over the real
//! Workload API socket: it answers as h2 would (GOAWAY with the error code on broken framing,
//! one stream refused with 431 while the connection's other streams are answered).

mod common;

use std::time::Duration;

use deputy_issuer::testing::TestIssuer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).expect("small").to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A raw HTTP/2 client connection to the issuer's Workload API.
struct Client {
    socket: UnixStream,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
    read: Vec<u8>,
}

/// A frame the server sent.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
    /// A HEADERS frame's fields, decoded in order with the connection's table.
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Frame {
    fn status(&self) -> &str {
        self.fields
            .iter()
            .find(|(n, _)| n == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or_else(|| panic!("no :status in {self:?}"))
    }
}

impl Client {
    async fn connect(issuer: &TestIssuer) -> Self {
        let mut socket = UnixStream::connect(issuer.dir.path().join("workload.sock"))
            .await
            .expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).await.expect("write");
        Self {
            socket,
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.expect("write");
    }

    /// A Workload API call on `stream` (FetchJWTBundles, an empty message) with `extra` headers.
    async fn call(&mut self, stream: u32, extra: &[(&[u8], &[u8])]) {
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchJWTBundles"),
            (b":authority", b"localhost"),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"workload.spiffe.io", b"true"),
        ];
        headers.extend_from_slice(extra);
        let block = self.encoder.encode(headers);
        let mut bytes = Vec::new();
        for (i, chunk) in block.chunks(16_384).enumerate() {
            let (kind, last) = (
                if i == 0 { HEADERS } else { CONTINUATION },
                (i + 1) * 16_384 >= block.len(),
            );
            bytes.extend(frame(
                kind,
                if last { END_HEADERS } else { 0 },
                stream,
                chunk,
            ));
        }
        bytes.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        self.send(&bytes).await;
    }

    /// The next frame from the server, or `None` at the end of the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.read.len() >= 9 {
                let len = usize::from(self.read[0]) << 16
                    | usize::from(self.read[1]) << 8
                    | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let bytes: Vec<u8> = self.read.drain(..9 + len).collect();
                    let mut frame = Frame {
                        kind: bytes[3],
                        flags: bytes[4],
                        stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
                        payload: bytes[9..].to_vec(),
                        fields: Vec::new(),
                    };
                    if frame.kind == HEADERS {
                        frame.fields = self.decoder.decode(&frame.payload).expect("valid HPACK");
                    }
                    return Some(frame);
                }
            }
            let mut buf = [0u8; 16_384];
            let read = tokio::time::timeout(Duration::from_secs(20), self.socket.read(&mut buf))
                .await
                .expect("the server answers within 20 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Frames until one matches `wanted`; the server's SETTINGS are acknowledged on the way.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        while let Some(frame) = self.next().await {
            if frame.kind == SETTINGS && frame.flags & 0x1 == 0 {
                self.send(&self::frame(SETTINGS, 0x1, 0, &[])).await;
            }
            if wanted(&frame) {
                return frame;
            }
        }
        panic!("the connection ended before {what}");
    }
}

#[tokio::test]
async fn a_malformed_frame_gets_goaway_with_protocol_error() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let mut client = Client::connect(&issuer).await;
    client.call(1, &[]).await;
    client
        .until("stream 1's answer", |f| f.kind == HEADERS && f.stream == 1)
        .await;
    // A CONTINUATION that continues nothing.
    client
        .send(&frame(CONTINUATION, END_HEADERS, 3, &[0x82]))
        .await;
    let goaway = client.until("GOAWAY", |f| f.kind == GOAWAY).await;
    let word = |at: usize| u32::from_be_bytes(goaway.payload[at..at + 4].try_into().expect("4"));
    assert_eq!(word(4), 0x1, "PROTOCOL_ERROR");
    assert_eq!(word(0), 1, "stream 1 reached the server");
    while let Some(frame) = client.next().await {
        assert_ne!(frame.stream, 3, "stream 3 reached the server: {frame:?}");
    }
}

#[tokio::test]
async fn an_oversized_header_list_refuses_its_stream_and_the_others_are_answered() {
    let issuer = TestIssuer::start(&common::entries_for_me("1h")).await;
    let mut client = Client::connect(&issuer).await;
    client.call(1, &[]).await;
    let big = vec![b'x'; 20 * 1024];
    client.call(3, &[(b"x-padding", &big)]).await;
    client.call(5, &[]).await;
    let mut answered = Vec::new();
    let (mut refused, mut too_large) = (None, false);
    while answered.len() < 2 || refused.is_none() {
        let frame = client
            .until("every stream's answer", |f| {
                matches!(f.kind, HEADERS | RST_STREAM)
            })
            .await;
        match (frame.kind, frame.stream) {
            (HEADERS, 3) => {
                assert_eq!(frame.status(), "431");
                assert_ne!(frame.flags & END_STREAM, 0);
                too_large = true;
            }
            (RST_STREAM, 3) => {
                refused = Some(u32::from_be_bytes(
                    frame.payload[..4].try_into().expect("4"),
                ));
            }
            (RST_STREAM, stream) => panic!("stream {stream} was reset"),
            // Response headers, then trailers (no :status) on the same stream.
            (_, stream) if !answered.contains(&stream) => {
                assert_eq!(frame.status(), "200", "stream {stream}");
                answered.push(stream);
            }
            _ => {}
        }
    }
    assert!(too_large, "stream 3 was answered 431 before its reset");
    assert_eq!(refused, Some(0x7), "REFUSED_STREAM");
    answered.sort_unstable();
    assert_eq!(answered, [1, 5]);
    // And the connection still takes calls after the refusal.
    client.call(7, &[]).await;
    let answer = client
        .until("stream 7's answer", |f| f.kind == HEADERS && f.stream == 7)
        .await;
    assert_eq!(answer.status(), "200");
}
