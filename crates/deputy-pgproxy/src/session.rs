//! One agent's sessions through one proxy: attest, read the startup, log in as the agent's
//! current database user, splice, and close when that credential lapses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deputy_proxy::attest::{tcp_caller_uid, unix_caller_uid};
use deputy_proxy::outbound::OutboundListener;
use deputy_secrets::Credential;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::login::{LoginError, login};
use crate::task::{Credentials, take_context};
use crate::wire::{self, First};
use crate::{PgProxyConfig, PgUpstream};

/// Open sessions, by agent.
pub const SESSIONS: &str = "deputy_pg_sessions";
/// Sessions ended, by agent and why.
pub const SESSIONS_ENDED: &str = "deputy_pg_sessions_ended_total";

/// How long a client may take to send its startup.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A local client's connection.
pub(crate) enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

type Stream = Either<TcpStream, UnixStream>;

/// Accepts the agent's sessions until `stop`.
pub(crate) async fn serve(
    config: Arc<PgProxyConfig>,
    listener: OutboundListener,
    credentials: Credentials,
    stop: CancellationToken,
) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = crate::accept(&listener) => accepted,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        match accepted {
            Ok(client) => {
                let (config, credentials, stop) =
                    (config.clone(), credentials.clone(), stop.clone());
                sessions.spawn(async move { session(config, credentials, client, stop).await });
            }
            Err(e) => {
                tracing::warn!(agent = %config.agent, error = %e, "PostgreSQL proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Each session sees `stop` too and closes; wait for them to be gone.
    while sessions.join_next().await.is_some() {}
}

async fn session(
    config: Arc<PgProxyConfig>,
    credentials: Credentials,
    client: Client,
    stop: CancellationToken,
) {
    let (uid, mut client): (Result<u32, String>, Stream) = match client {
        Client::Tcp(s) => (tcp_caller_uid(&s).await, Either::Left(s)),
        Client::Unix(s) => (unix_caller_uid(&s), Either::Right(s)),
    };
    let agent = config.agent.as_str();
    match uid {
        Ok(uid) if config.uids.contains(&uid) => {}
        Ok(uid) => {
            tracing::warn!(%agent, uid, "PostgreSQL proxy: a caller of another uid was refused");
            let message = format!(
                "uid {uid} may not use agent {agent}'s database proxy (allowed uids: {:?})",
                config.uids
            );
            let _ = client.write_all(&wire::fatal("28000", &message)).await;
            return;
        }
        Err(e) => {
            let _ = client
                .write_all(&wire::fatal(
                    "28000",
                    &format!("the caller is not attested: {e}"),
                ))
                .await;
            return;
        }
    }
    let mut parameters =
        match tokio::time::timeout(STARTUP_TIMEOUT, startup(&mut client, &config)).await {
            Ok(Ok(Some(parameters))) => parameters,
            // A cancel request, handled; or the client went away.
            Ok(Ok(None)) => return,
            Ok(Err(message)) => {
                let _ = client.write_all(&wire::fatal("08P01", &message)).await;
                return;
            }
            Err(_) => return,
        };
    let followed = match take_context(&mut parameters) {
        Ok(context) => {
            credentials
                .for_session(agent, &config.secret, context.as_deref())
                .await
        }
        Err(e) => Err(e),
    };
    let (credential, watch) = match followed {
        Ok(followed) => followed,
        Err(message) => {
            let _ = client.write_all(&wire::fatal("28000", &message)).await;
            return;
        }
    };
    let (Some(user), Some(password)) = (credential.field("username"), credential.field("password"))
    else {
        let _ = client
            .write_all(&wire::fatal(
                "28000",
                "the secret is not a database credential",
            ))
            .await;
        return;
    };
    let mut server = match connect(&config.upstream).await {
        Ok(server) => server,
        Err(e) => {
            let message = format!(
                "deputyd cannot reach PostgreSQL at {}: {e}",
                config.upstream
            );
            let _ = client.write_all(&wire::fatal("08006", &message)).await;
            return;
        }
    };
    let leftover = match login(&mut server, &parameters, user.expose(), password).await {
        Ok(leftover) => leftover,
        Err(e) => {
            let reply = match e {
                LoginError::Refused(raw) => raw,
                LoginError::Io(e) => wire::fatal("08006", &format!("PostgreSQL: {e}")),
                LoginError::Unsupported(e) => wire::fatal("28000", &e),
            };
            let _ = client.write_all(&reply).await;
            return;
        }
    };
    if client.write_all(&wire::authentication_ok()).await.is_err()
        || client.write_all(&leftover).await.is_err()
    {
        return;
    }
    tracing::info!(%agent, secret = %config.secret, generation = credential.generation,
        database = %config.database, "PostgreSQL session opened");
    metrics::gauge!(SESSIONS, "agent" => agent.to_owned()).increment(1.0);
    let reason = tokio::select! {
        () = stop.cancelled() => "deputyd stopped serving the agent",
        reason = lapse(watch, &credential) => reason,
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => match copied {
            Ok(_) => "closed",
            Err(_) => "a connection failed",
        },
    };
    metrics::gauge!(SESSIONS, "agent" => agent.to_owned()).decrement(1.0);
    metrics::counter!(SESSIONS_ENDED, "agent" => agent.to_owned(), "reason" => reason).increment(1);
    tracing::info!(%agent, secret = %config.secret, reason, "PostgreSQL session ended");
}

/// Reads the client's startup (answering SSL and GSS requests with `N`, forwarding a cancel):
/// its parameters with `database` checked, or `None` when there is no session to open.
async fn startup<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    config: &PgProxyConfig,
) -> Result<Option<Vec<(String, String)>>, String> {
    loop {
        let mut head = [0u8; 4];
        if client.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        let len = wire::packet_length(head)?;
        let mut packet = vec![0u8; len];
        packet[..4].copy_from_slice(&head);
        client
            .read_exact(&mut packet[4..])
            .await
            .map_err(|e| e.to_string())?;
        match wire::parse_first(&packet)? {
            First::Ssl | First::Gss => {
                // No encryption on a local socket; the client goes on in the clear.
                client.write_all(b"N").await.map_err(|e| e.to_string())?;
            }
            First::Cancel(packet) => {
                // The key is the server's to check: it was passed to the client as it is.
                if let Ok(mut server) = connect(&config.upstream).await {
                    let _ = server.write_all(&packet).await;
                }
                return Ok(None);
            }
            First::Startup(mut parameters) => {
                // PostgreSQL takes the last of a repeated parameter: one name, one value, so
                // that what is checked here is what the server uses.
                let mut names = std::collections::HashSet::new();
                if let Some((name, _)) = parameters.iter().find(|(k, _)| !names.insert(k.as_str()))
                {
                    return Err(format!("the startup parameter {name:?} is given twice"));
                }
                if parameters.iter().any(|(k, _)| k == "replication") {
                    return Err("replication connections are not proxied".into());
                }
                match parameters.iter_mut().find(|(k, _)| k == "database") {
                    Some((_, database)) if *database != config.database => {
                        return Err(format!(
                            "this proxy opens sessions on database {:?} only, not {database:?}",
                            config.database
                        ));
                    }
                    Some(_) => {}
                    None => parameters.push(("database".into(), config.database.clone())),
                }
                return Ok(Some(parameters));
            }
        }
    }
}

async fn connect(upstream: &PgUpstream) -> std::io::Result<Stream> {
    let connect = async {
        match upstream {
            PgUpstream::Tcp(addr) => TcpStream::connect(addr).await.map(|s| {
                let _ = s.set_nodelay(true);
                Either::Left(s)
            }),
            PgUpstream::Unix(path) => UnixStream::connect(path).await.map(Either::Right),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Resolves when the credential the session logged in with stops being the agent's: withdrawn
/// (revoked, the agent removed, deputyd stopping), replaced by a new one, or past its expiry. A
/// renewal extends it.
async fn lapse(
    watch: Option<watch::Receiver<Option<Arc<Credential>>>>,
    credential: &Credential,
) -> &'static str {
    let Some(mut watch) = watch else {
        return "the secret is no longer declared";
    };
    let mut expires = credential.expires_at;
    loop {
        let until_expiry =
            expires.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        let expired = async {
            match until_expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => return "its credential expired",
            changed = watch.changed() => {
                if changed.is_err() {
                    return "the secret is no longer declared";
                }
                match &*watch.borrow_and_update() {
                    None => return "its credential was revoked",
                    Some(current) if current.generation == credential.generation => {
                        expires = current.expires_at;
                    }
                    // Replaced: the old credential may be revoked with the token that issued
                    // it (and a withdrawal may have been overwritten by the new one before this
                    // session saw it), so the session ends; the client reconnects on the new.
                    Some(_) => return "its credential was replaced",
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn config() -> PgProxyConfig {
        PgProxyConfig {
            agent: "a".into(),
            uids: vec![1],
            listen: deputy_proxy::ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr")),
            upstream: PgUpstream::Tcp("127.0.0.1:1".into()),
            database: "appdb".into(),
            secret: "db".into(),
        }
    }

    fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend(k.as_bytes());
            body.push(0);
            body.extend(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    async fn first(
        packets: &[Vec<u8>],
    ) -> (Result<Option<Vec<(String, String)>>, String>, Vec<u8>) {
        let (mut client, mut proxy) = tokio::io::duplex(4096);
        for packet in packets {
            client.write_all(packet).await.expect("write");
        }
        let result = startup(&mut proxy, &config()).await;
        drop(proxy);
        let mut answered = Vec::new();
        let _ = client.read_to_end(&mut answered).await;
        (result, answered)
    }

    #[tokio::test]
    async fn the_database_is_the_configured_one_and_said_once() {
        let (ok, _) = first(&[startup_packet(&[("user", "x")])]).await;
        let params = ok.expect("ok").expect("a session");
        assert!(
            params.contains(&("database".into(), "appdb".into())),
            "{params:?}"
        );

        let (other, _) = first(&[startup_packet(&[("database", "other")])]).await;
        assert!(other.expect_err("refused").contains("only"));

        // PostgreSQL would take the last: refused outright.
        let twice = startup_packet(&[("database", "appdb"), ("database", "other")]);
        let (twice, _) = first(&[twice]).await;
        assert!(twice.expect_err("refused").contains("twice"));

        let (replication, _) = first(&[startup_packet(&[
            ("database", "appdb"),
            ("replication", "true"),
        ])])
        .await;
        assert!(replication.expect_err("refused").contains("replication"));
    }

    #[tokio::test]
    async fn an_ssl_request_is_declined_and_the_startup_read_after_it() {
        let ssl = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let (ok, answered) = first(&[ssl, startup_packet(&[("user", "x")])]).await;
        assert!(ok.expect("ok").is_some());
        assert_eq!(answered, b"N");
    }
}
