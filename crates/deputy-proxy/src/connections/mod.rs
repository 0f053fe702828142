//! The connection registry: every connection of the data path (an agent's plaintext connection
//! to its outbound listener, a peer's mTLS connection to the inbound listener, a pooled mTLS
//! connection to another node) is registered with what it carries, listed on the admin
//! listener's `/connections`, and drained when what it was admitted on no longer holds
//! ([`drain::reason_to_drain`]), when its agent is removed, or when deputyd stops.
//!
//! Draining is HTTP/2 GOAWAY (HTTP/1.1: `connection: close` after the response in flight), a
//! bounded grace for the streams in flight, then the connection is closed.

pub mod drain;
mod serve;
mod slots;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use spiffe::X509BundleSet;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use drain::DrainReason;
pub(crate) use serve::{Ended, close_if_draining, serve_until_drained};
pub(crate) use slots::{Slot, Slots};

use crate::tls::{Anchors, Bundles, same_bundle_set};

/// How often connections are checked against their admission: an expired SVID's connection is
/// drained within this of the expiry.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Tasks remembered per connection, the most recent.
const TASKS_KEPT: usize = 8;

/// Which of the data path's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A peer deputyd's mTLS connection to the inbound listener.
    Inbound,
    /// A local agent's plaintext connection to its outbound listener.
    Outbound,
    /// A pooled mTLS connection from this node to another deputyd, for one agent.
    Pool,
}

impl Side {
    /// The label used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Pool => "pool",
        }
    }
}

/// A connection about to be registered.
#[derive(Debug)]
pub struct Opening {
    /// Which connection.
    pub side: Side,
    /// The local agent it serves.
    pub agent: String,
    /// Where the other end is (address, or the outbound listener's unix socket).
    pub remote: String,
    /// When the SVID this node presented expires, if it presented one.
    pub local_expires: Option<SystemTime>,
    /// The peer's verified certificate chain, leaf first (empty for an agent's plaintext
    /// connection).
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// The trust bundle in force when the handshake began (what the chain was verified
    /// against): a bundle that changed since is checked again at registration.
    pub verified_under: Option<Arc<X509BundleSet>>,
}

/// One connection as `/connections` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// Unique while deputyd runs.
    pub id: u64,
    /// Which connection.
    pub side: Side,
    /// The local agent.
    pub agent: String,
    /// The peer's SPIFFE ID, for mTLS connections.
    pub peer: Option<String>,
    /// The other end.
    pub remote: String,
    /// When it was admitted (Unix seconds).
    pub opened_at: u64,
    /// When this node's SVID on it expires (Unix seconds).
    pub local_svid_expires_at: Option<u64>,
    /// When the peer's chain expires (Unix seconds).
    pub peer_svid_expires_at: Option<u64>,
    /// The tasks seen on it, most recent last.
    pub tasks: Vec<String>,
    /// Requests it has carried.
    pub requests: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Why it is being drained, if it is.
    pub draining: Option<String>,
}

/// What the registry and the connection's tasks share.
#[derive(Debug)]
struct Shared {
    id: u64,
    side: Side,
    agent: String,
    peer: Option<String>,
    remote: String,
    opened: SystemTime,
    /// For the age: a clock step must not keep a connection forever.
    opened_at: std::time::Instant,
    local_expires: Option<SystemTime>,
    peer_expires: Option<SystemTime>,
    peer_chain: Vec<CertificateDer<'static>>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    tasks: Mutex<VecDeque<String>>,
    drain: watch::Sender<Option<DrainReason>>,
    /// Told when the last request in flight ends.
    idle: Notify,
}

impl Shared {
    fn saw_task(&self, task: &str) {
        let mut tasks = lock(&self.tasks);
        if tasks.iter().any(|t| t == task) {
            return;
        }
        if tasks.len() == TASKS_KEPT {
            tasks.pop_front();
        }
        tasks.push_back(task.to_owned());
    }

    fn drain(&self, reason: DrainReason) -> bool {
        self.drain.send_if_modified(|current| {
            // A drain that lingers (a stop, the age) gives way to one that must not (a
            // revocation, an expiry): the connection then closes without its linger.
            if current
                .as_ref()
                .is_some_and(|c| !c.lingers() || reason.lingers())
            {
                return false;
            }
            tracing::info!(connection = self.id, side = self.side.name(), agent = %self.agent,
                peer = self.peer.as_deref().unwrap_or("-"), %reason, "draining connection");
            crate::metrics::connection_drained(self.side.name(), reason.name());
            *current = Some(reason);
            true
        })
    }

    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            side: self.side,
            agent: self.agent.clone(),
            peer: self.peer.clone(),
            remote: self.remote.clone(),
            opened_at: unix_seconds(self.opened),
            local_svid_expires_at: self.local_expires.map(unix_seconds),
            peer_svid_expires_at: self.peer_expires.map(unix_seconds),
            tasks: lock(&self.tasks).iter().cloned().collect(),
            requests: self.requests.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            draining: self.drain.borrow().as_ref().map(ToString::to_string),
        }
    }
}

/// Every open connection of the data path.
#[derive(Debug)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Arc<Shared>>>,
    next_id: AtomicU64,
    /// Agents removed by a reload: no new connection of theirs is admitted.
    retired: std::sync::RwLock<HashSet<String>>,
    /// deputyd is stopping: a connection registered from now on is drained at once.
    closing: std::sync::atomic::AtomicBool,
    anchors: Anchors,
    bundles: Bundles,
    /// The bundle set the peers were last verified against.
    verified_under: Mutex<Option<Arc<X509BundleSet>>>,
    max_age: Duration,
    /// How long a drained connection's streams may go on before it is closed.
    pub(crate) grace: Duration,
    emptied: Notify,
}

impl Registry {
    /// An empty registry; peers are verified again against `bundles` whenever they change.
    pub fn new(bundles: Bundles, max_age: Duration, grace: Duration) -> Self {
        let current = bundles.borrow().clone();
        Self {
            entries: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            retired: std::sync::RwLock::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            anchors: Anchors::new(bundles.clone()),
            verified_under: Mutex::new(current),
            bundles,
            max_age,
            grace,
            emptied: Notify::new(),
        }
    }

    /// Registers a connection; it is removed when the registration is dropped.
    pub fn register(self: &Arc<Self>, opening: Opening) -> Registration {
        let peer = crate::tls::peer_spiffe_id(Some(&opening.peer_chain)).map(|id| id.to_string());
        let peer_expires = earliest_expiry(&opening.peer_chain);
        let (drain, drained) = watch::channel(None);
        let shared = Arc::new(Shared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            side: opening.side,
            agent: opening.agent,
            peer,
            remote: opening.remote,
            opened: SystemTime::now(),
            opened_at: std::time::Instant::now(),
            local_expires: opening.local_expires,
            peer_expires,
            peer_chain: opening.peer_chain,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            tasks: Mutex::new(VecDeque::new()),
            drain,
            idle: Notify::new(),
        });
        lock(&self.entries).insert(shared.id, shared.clone());
        crate::metrics::connection_opened(shared.side.name());
        // Admitted at the handshake, but the world may have moved since: a sweep, a retire or
        // a stop that ran between the handshake and this insertion did not see this connection.
        // Only a peer's chain can stop verifying (an agent's own connection has none). The
        // bundle is read in a statement of its own: no read of it is held while the anchors
        // read it again.
        let bundle_changed = !shared.peer_chain.is_empty()
            && !same_bundle_set(
                opening.verified_under.as_ref(),
                self.bundles.borrow().as_ref(),
            );
        let anchors = bundle_changed.then(|| self.anchors.current());
        let reason = if self.closing.load(Ordering::Acquire) {
            Some(DrainReason::ShuttingDown)
        } else if self.is_retired(&shared.agent) {
            Some(DrainReason::AgentRemoved)
        } else {
            self.check(&shared, SystemTime::now(), anchors.as_deref())
        };
        if let Some(reason) = reason {
            shared.drain(reason);
        }
        Registration {
            registry: self.clone(),
            connection: ConnectionHandle(shared),
            drained,
        }
    }

    /// The open connections, oldest first.
    pub fn list(&self) -> Vec<ConnectionInfo> {
        // Copied out first: accepting and closing connections must not wait on the rendering.
        let entries: Vec<Arc<Shared>> = lock(&self.entries).values().cloned().collect();
        let mut all: Vec<ConnectionInfo> = entries.iter().map(|s| s.info()).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Removes `agent` from the data path: its listeners admit no new connection (they check
    /// [`is_retired`](Self::is_retired)) and its connections are drained; returns how many began
    /// draining.
    pub fn retire_agent(&self, agent: &str) -> usize {
        self.retired
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_owned());
        self.drain_where(|s| s.agent == agent, &DrainReason::AgentRemoved)
    }

    /// Drains the connections of a revoked agent: those of the local agent `local` (its name,
    /// if it is one of this node's) and those whose peer is `spiffe_id`. Returns how many
    /// began draining.
    pub fn drain_revoked(&self, local: Option<&str>, spiffe_id: &str, why: &str) -> usize {
        self.drain_where(
            |s| Some(s.agent.as_str()) == local || s.peer.as_deref() == Some(spiffe_id),
            &DrainReason::Revoked(why.to_owned()),
        )
    }

    /// The trust bundle in force now: taken before a handshake, it goes in its [`Opening`].
    pub fn current_bundles(&self) -> Option<Arc<X509BundleSet>> {
        self.bundles.borrow().clone()
    }

    /// Whether `agent` was removed.
    pub fn is_retired(&self, agent: &str) -> bool {
        self.retired
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(agent)
    }

    /// Drains every connection; with [`DrainReason::ShuttingDown`], those registered later too.
    pub fn drain_all(&self, reason: &DrainReason) -> usize {
        if *reason == DrainReason::ShuttingDown {
            self.closing.store(true, Ordering::Release);
        }
        self.drain_where(|_| true, reason)
    }

    fn drain_where(&self, which: impl Fn(&Shared) -> bool, reason: &DrainReason) -> usize {
        let chosen: Vec<Arc<Shared>> = lock(&self.entries)
            .values()
            .filter(|s| which(s))
            .cloned()
            .collect();
        chosen.iter().filter(|s| s.drain(reason.clone())).count()
    }

    /// Waits until no connection is open or `deadline` passes; returns how many are still open.
    pub async fn wait_empty(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let emptied = self.emptied.notified();
            let open = lock(&self.entries).len();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return lock(&self.entries).len();
            }
        }
    }

    /// Checks every connection against its admission now (see [`drain::reason_to_drain`]).
    pub fn sweep(&self) {
        let now = SystemTime::now();
        let current = self.bundles.borrow().clone();
        let bundles_changed = {
            let mut verified_under = lock(&self.verified_under);
            let changed = !same_bundle_set(verified_under.as_ref(), current.as_ref());
            *verified_under = current;
            changed
        };
        let anchors = bundles_changed.then(|| self.anchors.current());
        let entries: Vec<Arc<Shared>> = lock(&self.entries).values().cloned().collect();
        for shared in entries {
            if let Some(reason) = self.check(&shared, now, anchors.as_deref()) {
                shared.drain(reason);
            }
        }
    }

    fn check(
        &self,
        shared: &Shared,
        now: SystemTime,
        anchors: Option<&deputy_identity::TrustAnchors>,
    ) -> Option<DrainReason> {
        let verified = match (anchors, shared.peer_chain.split_first()) {
            (Some(anchors), Some((leaf, intermediates))) => {
                let usage = match shared.side {
                    Side::Inbound => webpki::KeyUsage::client_auth(),
                    Side::Outbound | Side::Pool => webpki::KeyUsage::server_auth(),
                };
                let at =
                    UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
                Some(
                    anchors
                        .verify_svid(leaf, intermediates, at, usage)
                        .map(drop)
                        .map_err(|e| e.to_string()),
                )
            }
            _ => None,
        };
        drain::reason_to_drain(&drain::ConnectionFacts {
            now,
            age: shared.opened_at.elapsed(),
            local_expires: shared.local_expires,
            peer_expires: shared.peer_expires,
            peer_verified: verified
                .as_ref()
                .map(|r| r.as_ref().map(|_| ()).map_err(String::as_str)),
            max_age: spread(self.max_age, shared.id),
        })
    }

    /// Sweeps every half second until `cancel`, and at once when the trust bundle changes.
    pub async fn keep_checking(self: Arc<Self>, cancel: CancellationToken) {
        let mut bundles = self.bundles.clone();
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = bundles.changed() => if changed.is_err() {
                    // The identity manager is gone; expiry and age still count.
                    bundles = self.bundles.clone();
                    tick.tick().await;
                },
            }
            self.sweep();
        }
    }
}

/// A registered connection, held by the task that serves it: dropped, the connection leaves the
/// registry.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    connection: ConnectionHandle,
    drained: watch::Receiver<Option<DrainReason>>,
}

impl Registration {
    /// What the requests on this connection record through.
    pub fn handle(&self) -> ConnectionHandle {
        self.connection.clone()
    }

    /// Why the connection is being drained, if it is.
    pub fn draining(&self) -> Option<DrainReason> {
        self.drained.borrow().clone()
    }

    /// Resolves when the connection's drain turns into one that does not linger.
    pub(crate) async fn escalated(&mut self) {
        let _ = self
            .drained
            .wait_for(|reason| reason.as_ref().is_some_and(|r| !r.lingers()))
            .await;
    }

    /// Resolves when the connection is to be drained.
    pub async fn drained(&mut self) -> DrainReason {
        match self.drained.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(DrainReason::ShuttingDown),
            // The sender lives in the registry entry this registration holds: unreachable, but
            // a connection nothing can drain must not be kept.
            Err(_) => DrainReason::ShuttingDown,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let shared = &self.connection.0;
        let mut entries = lock(&self.registry.entries);
        entries.remove(&shared.id);
        let empty = entries.is_empty();
        drop(entries);
        crate::metrics::connection_closed(shared.side.name());
        if empty {
            self.registry.emptied.notify_waiters();
        }
    }
}

/// A connection as its requests see it.
#[derive(Debug, Clone)]
pub struct ConnectionHandle(Arc<Shared>);

impl ConnectionHandle {
    /// Counts a request until the guard is dropped (when its response has been handed on).
    pub fn request_started(&self) -> InFlight {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.0.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        InFlight {
            shared: self.0.clone(),
            count: now,
        }
    }

    /// Remembers that a call of `task` was carried.
    pub fn saw_task(&self, task: &str) {
        self.0.saw_task(task);
    }

    /// Requests in flight on the connection now.
    pub fn in_flight(&self) -> u64 {
        self.0.in_flight.load(Ordering::Acquire)
    }

    /// Whether the connection is being drained.
    pub fn is_draining(&self) -> bool {
        self.0.drain.borrow().is_some()
    }

    /// Resolves when no request is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let told = self.0.idle.notified();
            if self.0.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            told.await;
        }
    }
}

/// Why one more request on a connection is refused (503 `overloaded`), if it is: the
/// connection came over its listener's limit, or holds `max_streams` requests already.
/// Returns the limit's name (for metrics) and what to tell the caller.
pub(crate) fn over_limit(
    slot: &Slot,
    slots: &Slots,
    in_flight: &InFlight,
    max_streams: u32,
    listener: impl FnOnce() -> String,
) -> Option<(&'static str, String)> {
    if matches!(slot, Slot::Overloaded { .. }) {
        return Some((
            "max_connections",
            format!(
                "{} holds its limit of {} connections ([limits] max_connections); retry \
                 shortly, reusing a connection",
                listener(),
                slots.limit
            ),
        ));
    }
    (in_flight.count() > u64::from(max_streams)).then(|| {
        (
            "max_streams",
            format!(
                "this connection to {} already carries {max_streams} requests ([limits] \
                 max_streams); retry when one finishes, or open another connection",
                listener()
            ),
        )
    })
}

/// How long a connection in `slot` is served: one from the overflow only briefly (it is
/// answered with its refusal and asked to close), the others as long as they last.
pub(crate) fn lifetime(slot: &Slot, limits: &crate::config::Limits) -> Duration {
    match slot {
        Slot::Served { .. } => Duration::MAX,
        Slot::Overloaded { .. } => limits.handshake,
    }
}

/// The refusal for `problem`; with `close` (a connection refused as a whole: over the
/// listener's limit, not attested) it also asks an HTTP/1.1 client to close (HTTP/2 drops the
/// header), which frees its overflow slot.
pub(crate) fn refusal_response(
    problem: &crate::problem::Problem,
    close: bool,
) -> http::Response<crate::body::Body> {
    let mut response = crate::body::problem_response(problem);
    if close {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight {
    shared: Arc<Shared>,
    count: u64,
}

impl InFlight {
    /// Requests in flight on the connection when this one started, itself included.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Remembers that the request is a call of `task`.
    pub fn saw_task(&self, task: &str) {
        self.shared.saw_task(task);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

/// The earliest `notAfter` of a chain; `None` for an empty chain. A certificate that does not
/// parse (a verified one does) counts as expired: what cannot be read is not trusted on.
fn earliest_expiry(chain: &[CertificateDer<'_>]) -> Option<SystemTime> {
    chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .ok()
                .and_then(|(_, cert)| u64::try_from(cert.validity().not_after.timestamp()).ok())
                .map_or(UNIX_EPOCH, |seconds| {
                    UNIX_EPOCH + Duration::from_secs(seconds)
                })
        })
        .min()
}

/// `max_age` less up to a tenth, spread by connection: connections opened together (at start,
/// after a peer's restart) are not all re-admitted in the same second.
fn spread(max_age: Duration, id: u64) -> Duration {
    let tenth_parts = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000;
    max_age.saturating_sub(max_age / 10 * u32::try_from(tenth_parts).unwrap_or(0) / 1000)
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The time an [`time::OffsetDateTime`] names.
pub(crate) fn system_time(at: time::OffsetDateTime) -> SystemTime {
    let seconds = u64::try_from(at.unix_timestamp()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests;
