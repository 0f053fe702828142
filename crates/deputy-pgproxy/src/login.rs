//! deputyd's side of a session: connect to PostgreSQL and authenticate as the agent's current
//! database user, with SCRAM-SHA-256 (or MD5, where the server still asks for it), by
//! postgres-protocol's implementation. The password never leaves this module except inside
//! the SCRAM exchange.

use bytes::BytesMut;
use deputy_secrets::SecretString;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Why deputyd could not open the session.
#[derive(Debug)]
pub(crate) enum LoginError {
    /// The connection to PostgreSQL failed.
    Io(String),
    /// PostgreSQL refused (its ErrorResponse, passed to the client as it is).
    Refused(BytesMut),
    /// PostgreSQL asked for something the proxy does not do.
    Unsupported(String),
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// Largest message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// Sends the startup message with `parameters` (the agent's, with `user` set to the
/// credential's) and authenticates. Returns what PostgreSQL sent after `AuthenticationOk`
/// (already read), which belongs to the client.
pub(crate) async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    server: &mut S,
    parameters: &[(String, String)],
    username: &str,
    password: &SecretString,
) -> Result<BytesMut, LoginError> {
    let mut out = BytesMut::new();
    let params = parameters
        .iter()
        .filter(|(k, _)| k != "user")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(std::iter::once(("user", username)));
    frontend::startup_message(params, &mut out)?;
    server.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    let mut scram_done = false;
    let mut md5_sent = false;
    loop {
        let raw = read_message(server, &mut buf).await?;
        let message = Message::parse(&mut raw.clone())?
            .ok_or_else(|| LoginError::Io("a message cut short".into()))?;
        out.clear();
        match message {
            Message::AuthenticationOk => {
                // Only a session deputyd authenticated: a completed SCRAM exchange (the server's
                // signature checked) or an MD5 answer. A server that lets anyone in without a
                // password ("trust") is not one the credential speaks for.
                return match (&scram, md5_sent) {
                    (Some(_), _) if scram_done => Ok(buf),
                    (None, true) => Ok(buf),
                    _ => Err(LoginError::Unsupported(
                        "PostgreSQL accepted the session before authentication finished (trust \
                         or an incomplete SCRAM exchange); deputyd opens only sessions it \
                         authenticated: use scram-sha-256 in pg_hba.conf"
                            .into(),
                    )),
                };
            }
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<String> =
                    body.mechanisms().map(|m| Ok(m.to_owned())).collect()?;
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(LoginError::Unsupported(format!(
                        "PostgreSQL offers SASL mechanisms {mechanisms:?}, not SCRAM-SHA-256"
                    )));
                }
                let exchange =
                    ScramSha256::new(password.expose().as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut out)?;
                scram = Some(exchange);
            }
            Message::AuthenticationSaslContinue(body) => {
                let exchange = scram.as_mut().ok_or_else(out_of_order)?;
                exchange.update(body.data())?;
                frontend::sasl_response(exchange.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                // Checks the server's signature: a server that does not know the password
                // cannot pass for PostgreSQL (AuthenticationOk is accepted only after this).
                scram
                    .as_mut()
                    .ok_or_else(out_of_order)?
                    .finish(body.data())?;
                scram_done = true;
                continue;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(
                    username.as_bytes(),
                    password.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
                md5_sent = true;
            }
            Message::AuthenticationCleartextPassword => {
                return Err(LoginError::Unsupported(
                    "PostgreSQL asks for the password in clear text; set password_encryption \
                     and pg_hba.conf to scram-sha-256"
                        .into(),
                ));
            }
            Message::ErrorResponse(_) => return Err(LoginError::Refused(raw)),
            _ => {
                return Err(LoginError::Unsupported(
                    "PostgreSQL asked for an authentication the proxy does not do (Kerberos, \
                     GSS or SSPI); use scram-sha-256"
                        .into(),
                ));
            }
        }
        server.write_all(&out).await?;
    }
}

fn out_of_order() -> LoginError {
    LoginError::Unsupported("a SCRAM message out of order".into())
}

/// One whole backend message (tag, length and body), read into `buf` as needed.
async fn read_message<S: AsyncRead + Unpin>(
    server: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, LoginError> {
    loop {
        if let Some(header) = Header::parse(buf)? {
            let len = header.len() as usize + 1;
            if len > MAX_AUTH_MESSAGE {
                return Err(LoginError::Unsupported(format!(
                    "an authentication message of {len} bytes"
                )));
            }
            if buf.len() >= len {
                return Ok(buf.split_to(len));
            }
        }
        buf.reserve(4096);
        if server.read_buf(buf).await? == 0 {
            return Err(LoginError::Io("PostgreSQL closed the connection".into()));
        }
    }
}
