//! The parts of PostgreSQL's wire protocol the proxy speaks itself: the client's first packet
//! (SSL and GSS requests, a cancel, or the startup message), and the few messages it answers
//! with (`AuthenticationOk`, `ErrorResponse`). Pure: bytes in, values out.

use bytes::{BufMut as _, BytesMut};

/// The largest first packet accepted (PostgreSQL itself allows 10000 bytes).
pub const MAX_STARTUP_BYTES: usize = 10_000;

const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// What a client's first packet asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum First {
    /// TLS first, please (answered `N`: the proxy listens on loopback or a unix socket).
    Ssl,
    /// GSS encryption first, please (answered `N`).
    Gss,
    /// Cancel a running query: forwarded as it is to the server, which checks its key.
    Cancel(Vec<u8>),
    /// A session, with its parameters (`user`, `database`, `application_name`, ...).
    Startup(Vec<(String, String)>),
}

/// Why a first packet was refused.
pub type WireError = String;

/// The length a first packet declares, from its first four bytes.
pub fn packet_length(head: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(head) as usize;
    if !(8..=MAX_STARTUP_BYTES).contains(&len) {
        return Err(format!(
            "a startup packet of {len} bytes (8 to {MAX_STARTUP_BYTES} accepted)"
        ));
    }
    Ok(len)
}

/// Reads a whole first packet (its length prefix included).
pub fn parse_first(packet: &[u8]) -> Result<First, WireError> {
    let code = packet
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("a startup packet shorter than 8 bytes")?;
    match code {
        SSL_REQUEST => Ok(First::Ssl),
        GSS_REQUEST => Ok(First::Gss),
        CANCEL_REQUEST => Ok(First::Cancel(packet.to_vec())),
        PROTOCOL_3_0 => parse_parameters(&packet[8..]).map(First::Startup),
        other => Err(format!(
            "protocol {}.{} is not spoken here (3.0 is)",
            other >> 16,
            other & 0xffff
        )),
    }
}

fn parse_parameters(mut rest: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut parameters = Vec::new();
    loop {
        let (name, after) = cstr(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err("bytes after the startup parameters".into());
            }
            return Ok(parameters);
        }
        let (value, after) = cstr(after)?;
        parameters.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

fn cstr(bytes: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or("a startup parameter is not terminated")?;
    let text =
        std::str::from_utf8(&bytes[..end]).map_err(|_| "a startup parameter is not UTF-8")?;
    Ok((text, &bytes[end + 1..]))
}

/// `AuthenticationOk`.
pub fn authentication_ok() -> [u8; 9] {
    [b'R', 0, 0, 0, 8, 0, 0, 0, 0]
}

/// A FATAL `ErrorResponse` with SQLSTATE `code`.
pub fn fatal(code: &str, message: &str) -> BytesMut {
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(b'E');
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    #[test]
    fn a_startup_message_gives_its_parameters() {
        let packet = startup(&[("user", "agent"), ("database", "appdb")]);
        assert_eq!(
            packet_length(packet[..4].try_into().expect("4")),
            Ok(packet.len())
        );
        assert_eq!(
            parse_first(&packet),
            Ok(First::Startup(vec![
                ("user".into(), "agent".into()),
                ("database".into(), "appdb".into())
            ]))
        );
    }

    #[test]
    fn requests_and_bad_packets_are_told_apart() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_first(&ssl), Ok(First::Ssl));
        let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        cancel.extend([0; 8]);
        assert!(matches!(parse_first(&cancel), Ok(First::Cancel(_))));
        assert!(packet_length([0, 0, 0, 4]).is_err());
        assert!(packet_length([0, 1, 0, 0]).is_err());
        let mut unterminated = startup(&[("user", "a")]);
        unterminated.truncate(unterminated.len() - 2);
        assert!(parse_first(&unterminated).is_err());
        let v2 = [0, 0, 0, 8, 0, 2, 0, 0];
        assert!(parse_first(&v2).expect_err("v2").contains("2.0"));
    }

    #[test]
    fn an_error_response_is_framed() {
        let e = fatal("28000", "no");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
            e.len() - 1
        );
        assert!(e.ends_with(b"Mno\0\0"));
    }
}
