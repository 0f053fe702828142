//! The filter's pure part, byte for byte.

use super::frames::{FRAME_GOAWAY, FRAME_RST_STREAM, FRAME_WINDOW_UPDATE, REFUSED_STREAM};
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
    write_frame(&mut out, kind, flags, stream, payload);
    out
}

/// Splits a byte stream into frames (after the preface): (kind, flags, stream, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert!(bytes.starts_with(PREFACE));
    frames_of(&bytes[PREFACE.len()..])
}

/// Splits frames without a preface (the filter's answers to the client).
fn frames_of(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

/// Feeds `input` to a rewriter `step` bytes at a time; what goes to the server.
fn rewrite(input: &[u8], step: usize) -> Result<Vec<u8>, FilterError> {
    filter(input, step).map(|out| out.to_server)
}

/// Feeds `input` to a rewriter `step` bytes at a time; what goes to either side.
fn filter(input: &[u8], step: usize) -> Result<Filtered, FilterError> {
    let mut rewriter = RequestRewriter::new();
    let mut out = Filtered::default();
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
fn a_header_list_that_decodes_past_the_limit_refuses_its_stream_only() {
    // One 4 KiB value added to the client's table, then ten thousand one-byte references to
    // it: 14 KB on the wire, 40 MB decoded.
    let mut bomb = vec![0x7A, 0x7F, 0xA1, 0x1E];
    bomb.extend(std::iter::repeat_n(b'a', 4000));
    bomb.extend(std::iter::repeat_n(0xBE, 10_000));
    let mut client = loona_hpack::Encoder::new();
    let fine = request("localhost", "/SpiffeWorkloadAPI/FetchJWTBundles");
    let fine_block = client.encode(fine.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let mut input = PREFACE.to_vec();
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &bomb));
    input.extend(frame(FRAME_DATA, 0, 1, b"\0\0\0\0\0"));
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &fine_block));
    input.extend(frame(FRAME_DATA, FLAG_END_STREAM, 1, b"more"));
    input.extend(frame(FRAME_DATA, FLAG_END_STREAM, 3, b"\0\0\0\0\0"));
    // Stream 1 is forgotten after its END_STREAM: a later frame on it reaches the server
    // (which then answers as h2 does for a closed stream).
    input.extend(frame(FRAME_RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    let out = filter(&input, 777).expect("the connection goes on");
    // The server hears only of stream 3, headers intact, and of the late reset.
    let to_server = frames(&out.to_server);
    let streams: Vec<(u8, u32)> = to_server.iter().map(|f| (f.0, f.2)).collect();
    assert_eq!(
        streams,
        [(FRAME_HEADERS, 3), (FRAME_DATA, 3), (FRAME_RST_STREAM, 1)]
    );
    assert_eq!(server_view(&out.to_server), [fine]);
    // The client hears 431 then REFUSED_STREAM on stream 1, and gets its DATA's credit back.
    let to_client = frames_of(&out.to_client);
    assert_eq!(to_client.len(), 4, "{to_client:?}");
    let (kind, flags, stream, block) = &to_client[0];
    assert_eq!((*kind, *stream), (FRAME_HEADERS, 1));
    assert_eq!(*flags, FLAG_END_STREAM | FLAG_END_HEADERS);
    let status = loona_hpack::Decoder::new()
        .decode(block)
        .expect("valid HPACK");
    assert_eq!(status, [(b":status".to_vec(), b"431".to_vec())]);
    assert_eq!(
        to_client[1],
        (
            FRAME_RST_STREAM,
            0,
            1,
            REFUSED_STREAM.to_be_bytes().to_vec()
        )
    );
    assert_eq!(
        to_client[2],
        (FRAME_WINDOW_UPDATE, 0, 0, 5u32.to_be_bytes().to_vec())
    );
    assert_eq!(
        to_client[3],
        (FRAME_WINDOW_UPDATE, 0, 0, 4u32.to_be_bytes().to_vec())
    );
}

#[test]
fn a_never_indexed_field_stays_never_indexed() {
    // The client marks its credential never indexed (RFC 7541 6.2.3) and a trace id unindexed.
    let mut block = loona_hpack::Encoder::new().encode(
        request("/tmp/api.sock", "/x")
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice())),
    );
    representation::write_unindexed(&mut block, true, b"authorization", b"Bearer s3cr3t");
    representation::write_unindexed(&mut block, false, b"x-trace", b"t-1");
    let mut input = PREFACE.to_vec();
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
    // Sent twice: a field the filter had indexed would come out as a one-byte reference.
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &block));
    let out = rewrite(&input, 50).expect("rewrites");
    for (_, _, stream, payload) in frames(&out) {
        let kinds = representations(&payload).expect("valid");
        let fields = loona_hpack::Decoder::new().decode(&payload);
        assert_eq!(
            kinds[kinds.len() - 2..],
            [
                Representation::NeverIndexed,
                Representation::WithoutIndexing
            ],
            "stream {stream}: {fields:?}"
        );
    }
    let blocks = server_view(&out);
    assert_eq!(blocks.len(), 2);
    for block in blocks {
        assert!(block.contains(&(b"authorization".to_vec(), b"Bearer s3cr3t".to_vec())));
        assert!(block.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }
}

#[test]
fn connection_errors_carry_the_code_h2_would_send() {
    assert_eq!(FilterError::NoPreface.goaway_code(), None);
    assert_eq!(
        FilterError::FrameTooLarge(1 << 16).goaway_code(),
        Some(FRAME_SIZE_ERROR)
    );
    assert_eq!(
        FilterError::Hpack(String::new()).goaway_code(),
        Some(COMPRESSION_ERROR)
    );
    assert_eq!(
        FilterError::BadContinuation.goaway_code(),
        Some(PROTOCOL_ERROR)
    );
    let mut out = Vec::new();
    frames::goaway(&mut out, 7, PROTOCOL_ERROR);
    assert_eq!(
        frames_of(&out),
        [(FRAME_GOAWAY, 0, 0, [0, 0, 0, 7, 0, 0, 0, 1].to_vec())]
    );

    for stream in [0, 2] {
        let mut bad = PREFACE.to_vec();
        bad.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &[0x82]));
        assert_eq!(rewrite(&bad, 100), Err(FilterError::BadStream(stream)));
    }

    let mut push = PREFACE.to_vec();
    push.extend(frame(
        FRAME_PUSH_PROMISE,
        FLAG_END_HEADERS,
        1,
        &[0, 0, 0, 2, 0x82],
    ));
    assert_eq!(rewrite(&push, 100), Err(FilterError::PushPromise));
}

#[test]
fn oversized_trailers_of_a_stream_the_server_knows_reset_it_at_both_ends() {
    let headers = request("localhost", "/x");
    let mut client = loona_hpack::Encoder::new();
    let block = client.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let big = vec![b'x'; 20 * 1024];
    let trailers = client.encode([(&b"x-padding"[..], &big[..])]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
    input.extend(frame(FRAME_DATA, 0, 1, b"\0\0\0\0\0"));
    for (i, chunk) in trailers.chunks(MAX_FRAME).enumerate() {
        let kind = if i == 0 {
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        let last = (i + 1) * MAX_FRAME >= trailers.len();
        let flags =
            if last { FLAG_END_HEADERS } else { 0 } | if i == 0 { FLAG_END_STREAM } else { 0 };
        input.extend(frame(kind, flags, 1, chunk));
    }
    let out = filter(&input, 1000).expect("the connection goes on");
    let to_server = frames(&out.to_server);
    assert_eq!(
        to_server.last(),
        Some(&(FRAME_RST_STREAM, 0, 1, CANCEL.to_be_bytes().to_vec()))
    );
    assert_eq!(
        frames_of(&out.to_client),
        [(
            FRAME_RST_STREAM,
            0,
            1,
            PROTOCOL_ERROR.to_be_bytes().to_vec()
        )]
    );
}
