//! The inbound handshake: the first byte (plain HTTP is answered in words), the ClientHello
//! (its SNI picks the local agent), then TLS 1.3 with the peer's SVID verified.

use std::pin::pin;
use std::time::SystemTime;

use deputy_identity::SvidVerifyError;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::{Inbound, InboundAgent, plaintext_refusal};
use crate::connections::system_time;
use crate::metrics;
use crate::tls::{PeerCertError, UNRECOGNIZED_NAME_ALERT};

/// A finished inbound handshake.
pub(super) struct Handshaken {
    pub(super) tls: tokio_rustls::server::TlsStream<TcpStream>,
    pub(super) agent: InboundAgent,
    /// When the SVID this node presented expires.
    pub(super) local_expires: Option<SystemTime>,
}

/// Reads the ClientHello, picks the agent by SNI and completes the handshake; `None` when the
/// connection was refused (and told why, where TLS allows).
pub(super) async fn handshake(
    inbound: &Inbound,
    mut tcp: TcpStream,
    remote: std::net::SocketAddr,
) -> Option<Handshaken> {
    // A TLS connection starts with a handshake record (content type 22). Anything else, most
    // likely plain HTTP, gets an answer it can read instead of a TLS alert.
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == 0x16 => {}
        Ok(1) => {
            metrics::handshake_failed("inbound", "not_tls");
            tracing::warn!(%remote, "refused inbound connection: plaintext on the mTLS port");
            let _ = tcp.write_all(&plaintext_refusal()).await;
            let _ = tcp.shutdown().await;
            return None;
        }
        _ => return None,
    }
    let mut acceptor = pin!(LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        tcp
    ));
    let start = match acceptor.as_mut().await {
        Ok(start) => start,
        Err(e) => {
            metrics::handshake_failed("inbound", "bad_client_hello");
            tracing::warn!(%remote, error = %e, "refused inbound connection: bad ClientHello");
            return None;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    let Some(agent) = sni
        .as_deref()
        .filter(|name| !inbound.registry.is_retired(name))
        .and_then(|name| inbound.agents.get(name))
        .cloned()
    else {
        metrics::handshake_failed("inbound", "unknown_sni");
        tracing::warn!(%remote, sni = ?sni, "refused inbound connection: no such agent on this node");
        let mut accept = start.into_stream(inbound.tls.clone());
        if let Some(io) = accept.get_mut() {
            let _ = io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            let _ = io.shutdown().await;
        }
        return None;
    };
    // Read before the handshake picks the certificate: a rotation during it can only make the
    // recorded expiry earlier than the certificate's, never later.
    let expiry_now = || {
        inbound
            .materials
            .get(&agent.name)
            .and_then(|m| m.borrow().as_ref().map(|m| system_time(m.not_after)))
    };
    let before = expiry_now();
    match start.into_stream(inbound.tls.clone()).await {
        Ok(tls) => Some(Handshaken {
            tls,
            local_expires: Some(earlier_expiry(before, expiry_now())),
            agent,
        }),
        Err(e) => {
            let reason = handshake_failure_reason(&e);
            metrics::handshake_failed("inbound", reason);
            tracing::warn!(%remote, agent = %agent.name, reason, error = %e, "refused inbound handshake");
            None
        }
    }
}

fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    if let Some(e) = crate::tls::peer_cert_error(error) {
        return match e {
            PeerCertError::Svid(SvidVerifyError::NotAnSvid(_)) => "not_an_svid",
            PeerCertError::Svid(SvidVerifyError::UnknownTrustDomain(_)) => "unknown_trust_domain",
            PeerCertError::Svid(SvidVerifyError::Chain { .. }) => "untrusted_chain",
            _ => "bad_certificate",
        };
    }
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(_) => "tls",
        None => "io",
    }
}

/// The expiry of the SVID the server presented, not knowing which of the two read around the
/// handshake it picked: the earlier. An SVID missing at either read (expired, withdrawn) counts
/// as expiring now: the connection is drained at once rather than trusted without an expiry.
fn earlier_expiry(before: Option<SystemTime>, after: Option<SystemTime>) -> SystemTime {
    match (before, after) {
        (Some(before), Some(after)) => before.min(after),
        _ => SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_recorded_expiry_is_the_earlier_and_a_missing_svid_is_expired() {
        let now = SystemTime::now();
        let (soon, later) = (
            now + Duration::from_secs(60),
            now + Duration::from_secs(600),
        );
        assert_eq!(earlier_expiry(Some(later), Some(soon)), soon);
        assert_eq!(earlier_expiry(Some(soon), Some(later)), soon);
        assert!(earlier_expiry(None, Some(later)) <= SystemTime::now());
        assert!(earlier_expiry(Some(later), None) <= SystemTime::now());
    }
}
