//! Outbound mTLS connections, pooled per (agent, service) and multiplexed over HTTP/2.
//!
//! A connection is made with the calling agent's current SVID; when the SVID rotates, the next
//! request opens a new connection (a new handshake with the new certificate) while requests in
//! flight finish on the old one. Every connection is registered
//! ([`crate::connections::Registry`]); a drained one is handed out no more.
//!
//! A pair holds as many connections as its requests in flight need, up to `[limits]
//! max_pool_connections`: a connection carries at most `[limits] max_streams` of them (what the
//! receiving node serves on one connection before it answers 503 `overloaded`, with the same
//! settings), and a request past that opens another. Without it a thousand open event streams
//! between two agents would meet the receiving node's per-connection limit and most would be
//! refused, though neither node is loaded; with no bound, one busy agent could take every one of
//! a peer's inbound connection places. Past the bound (connections of an older SVID still
//! finishing their requests count too), a request is refused 503 `overloaded` here.
//!
//! A connection leaves the pair's list only once it has no request in flight: while it is
//! listed, its requests are answered and its registration (what drains it) lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deputy_identity::TlsMaterial;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::Body;
use crate::config::{Limits, MeshPeer, Timeouts};
use crate::connections::{
    ConnectionHandle, Ended, InFlight, Opening, Registry, Side, serve_until_drained, system_time,
};
use crate::metrics;
use crate::problem::ProblemKind;
use crate::tls::{Bundles, PeerCertError, client_config, peer_cert_error};

/// Why no connection could be had; each maps to a problem the agent sees.
#[derive(Debug)]
pub struct ConnectError {
    /// The problem kind.
    pub kind: ProblemKind,
    /// What happened and what to do.
    pub detail: String,
}

#[derive(Debug)]
struct Pooled {
    sender: SendRequest<Body>,
    connection: ConnectionHandle,
    serial: String,
    last_used: Instant,
}

impl Pooled {
    /// Whether a request made with `serial` may be sent on this connection: made with that
    /// SVID, open, not drained, and busy or used within `idle`.
    fn usable(&self, serial: &str, idle: std::time::Duration) -> bool {
        self.serial == serial
            && !self.sender.is_closed()
            && !self.connection.is_draining()
            && (self.connection.in_flight() > 0 || self.last_used.elapsed() < idle)
    }
}

type Slot = Arc<tokio::sync::Mutex<Vec<Pooled>>>;

/// A mesh service as the pool reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The name agents call it by, sent as SNI.
    pub name: &'a str,
    /// Who it is and where its deputyd listens.
    pub peer: &'a MeshPeer,
}

/// The pool.
#[derive(Debug)]
pub struct Pool {
    slots: Mutex<HashMap<(String, String), Slot>>,
    bundles: Bundles,
    timeouts: Timeouts,
    limits: Limits,
    registry: Arc<Registry>,
}

impl Pool {
    /// An empty pool, registering its connections in `registry`.
    pub fn new(
        bundles: Bundles,
        timeouts: Timeouts,
        limits: Limits,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            bundles,
            timeouts,
            limits,
            registry,
        }
    }

    /// A ready sender to the mesh service `name` at `peer` as `agent` holding `material`, reusing a pooled connection
    /// made with the same SVID, and the request counted in flight on that connection (counted
    /// here, before the connection is handed out: a drain that came between handing it out and
    /// counting the request would close the connection under it).
    pub async fn sender(
        &self,
        agent: &str,
        service: &Target<'_>,
        material: &TlsMaterial,
    ) -> Result<(SendRequest<Body>, InFlight), ConnectError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry((agent.to_owned(), service.name.to_owned()))
                .or_default()
                .clone()
        };
        // One connect at a time per pair; others wait and reuse it.
        let mut slot = slot.lock().await;
        // Connections of an older SVID, drained or idle too long are handed out no more, and
        // kept until their requests in flight are answered; closed ones answer nothing more.
        let (serial, idle) = (&material.serial, self.timeouts.idle);
        slot.retain(|pooled| {
            pooled.usable(serial, idle)
                || (pooled.connection.in_flight() > 0 && !pooled.sender.is_closed())
        });
        // The first with room (the oldest: a burst's extra connections then fall idle and
        // go).
        let room = u64::from(self.limits.max_streams);
        let with_room = slot
            .iter_mut()
            .find(|p| p.usable(serial, idle) && p.connection.in_flight() < room);
        if let Some(pooled) = with_room {
            pooled.last_used = Instant::now();
            let mut sender = pooled.sender.clone();
            // Counted before waiting for the connection to be ready: a drain that comes while
            // it waits then sees this request in flight and gives it the grace.
            let in_flight = pooled.connection.request_started();
            if sender.ready().await.is_ok() && !pooled.connection.is_draining() {
                return Ok((sender, in_flight));
            }
        } else if slot.len() >= self.limits.max_pool_connections
            && slot.iter().any(|p| p.usable(serial, idle))
        {
            // Every place the pair may take at the peer is full (connections of an older SVID
            // still finishing count too). Refused here: the peer would refuse it, or, past its
            // hard ceiling, hold it until the request timeout.
            metrics::overloaded("outbound", "max_pool_connections");
            return Err(ConnectError {
                kind: ProblemKind::Overloaded,
                detail: format!(
                    "agent {agent} has {} connections to {} (the most [limits] \
                     max_pool_connections allows), each carrying [limits] max_streams = {room} \
                     requests; retry once one is answered, or raise the limits",
                    slot.len(),
                    service.name
                ),
            });
        }
        let (sender, connection) = self.connect(agent, service, material).await?;
        let in_flight = connection.request_started();
        slot.push(Pooled {
            sender: sender.clone(),
            connection,
            serial: material.serial.clone(),
            last_used: Instant::now(),
        });
        Ok((sender, in_flight))
    }

    async fn connect(
        &self,
        agent: &str,
        service: &Target<'_>,
        material: &TlsMaterial,
    ) -> Result<(SendRequest<Body>, ConnectionHandle), ConnectError> {
        let unavailable = |detail: String| ConnectError {
            kind: ProblemKind::UpstreamUnavailable,
            detail,
        };
        let config = client_config(
            material,
            service.peer.spiffe_id.clone(),
            self.bundles.clone(),
        )
        .map_err(|e| unavailable(format!("cannot build the TLS client: {e}")))?;
        let server_name = ServerName::try_from(service.name.to_owned()).map_err(|_| {
            unavailable(format!(
                "service name {:?} cannot be sent as SNI",
                service.name
            ))
        })?;
        let verified_under = self.registry.current_bundles();
        let connect =
            async {
                let tcp = TcpStream::connect(&service.peer.address).await.map_err(|e| {
                unavailable(format!(
                    "cannot connect to {} at {}: {e}; is its deputyd running and its inbound \
                     listener reachable?",
                    service.name, service.peer.address
                ))
            })?;
                let _ = tcp.set_nodelay(true);
                tokio_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| handshake_error(service, &e))
            };
        let tls = tokio::time::timeout(self.timeouts.connect, connect)
            .await
            .map_err(|_| {
                metrics::handshake_failed("outbound", "timeout");
                unavailable(format!(
                    "connecting to {} at {} took longer than {:?}",
                    service.name, service.peer.address, self.timeouts.connect
                ))
            })??;
        metrics::handshake_succeeded("outbound");
        let peer_chain = crate::tls::owned_chain(tls.get_ref().1.peer_certificates());
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(self.limits.keepalive_interval)
            .keep_alive_timeout(self.limits.keepalive_timeout)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(format!("HTTP/2 with {} failed: {e}", service.name)))?;
        let mut registration = self.registry.register(Opening {
            side: Side::Pool,
            agent: agent.to_owned(),
            remote: service.peer.address.clone(),
            local_expires: Some(system_time(material.not_after)),
            peer_chain,
            verified_under,
        });
        let handle = registration.handle();
        let name = service.name.to_owned();
        tokio::spawn(async move {
            // A client connection has no shutdown of its own: drained, it is handed out no
            // more and closed once its requests are answered.
            let ended = serve_until_drained(connection, &mut registration, None, |_| {}).await;
            if let Ended::Finished(Err(e)) = ended {
                tracing::debug!(service = %name, error = %e, "outbound connection ended");
            }
        });
        Ok((sender, handle))
    }
}

fn handshake_error(service: &Target<'_>, error: &std::io::Error) -> ConnectError {
    match peer_cert_error(error) {
        Some(e @ PeerCertError::IdentityMismatch { .. }) => {
            metrics::handshake_failed("outbound", "peer_identity_mismatch");
            ConnectError {
                kind: ProblemKind::PeerIdentityMismatch,
                detail: format!(
                    "refused to send the request to {} at {}: {e}. Check the service's \
                     spiffe_id and address in deputyd's config",
                    service.name, service.peer.address
                ),
            }
        }
        Some(e) => {
            metrics::handshake_failed("outbound", "peer_not_trusted");
            ConnectError {
                kind: ProblemKind::PeerNotTrusted,
                detail: format!("{} at {}: {e}", service.name, service.peer.address),
            }
        }
        None => {
            metrics::handshake_failed("outbound", "tls");
            ConnectError {
                kind: ProblemKind::UpstreamUnavailable,
                detail: format!(
                    "the TLS handshake with {} at {} failed: {error}",
                    service.name, service.peer.address
                ),
            }
        }
    }
}
