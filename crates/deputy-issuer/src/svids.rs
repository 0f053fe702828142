//! The issuer's state: the CA, the registry in force, and the current SVID of every identity
//! that has been asked for, rotated at half-life.
//!
//! Every change (a rotation, a reload) bumps one `watch` generation; open streams wake on it
//! and push what changed for them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use deputy_identity::Selector;
use spiffe::SpiffeId;
use tokio::sync::watch;

use crate::authority::{Authority, AuthorityError, MintedSvid};
use crate::entries::{Entry, Registry};

/// How often the rotation task looks for SVIDs past half-life.
pub const ROTATION_CHECK: Duration = Duration::from_millis(250);

/// The issuer: shared by both API servers and the rotation task.
#[derive(Debug)]
pub struct Issuer {
    authority: Authority,
    registry: RwLock<Arc<Registry>>,
    svids: Mutex<HashMap<SpiffeId, Arc<MintedSvid>>>,
    generation: watch::Sender<u64>,
    closing: tokio_util::sync::CancellationToken,
}

impl Issuer {
    /// An issuer for `authority`'s trust domain serving `registry`.
    pub fn new(authority: Authority, registry: Registry) -> Self {
        Self {
            authority,
            registry: RwLock::new(Arc::new(registry)),
            svids: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The CA.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The registry in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the registry; open streams re-evaluate what their callers are entitled to.
    pub fn replace_registry(&self, registry: Registry) {
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        self.bump();
    }

    /// Wakes on every change that may alter a response.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Ends every open stream: clients see the stream end and reconnect elsewhere or later,
    /// and the servers can finish their graceful shutdown.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Cancelled once the issuer is closing.
    pub fn closing(&self) -> &tokio_util::sync::CancellationToken {
        &self.closing
    }

    /// The entries that match `selectors`.
    pub fn entries_for(&self, selectors: &BTreeSet<Selector>) -> Vec<Entry> {
        self.registry()
            .matching(selectors)
            .into_iter()
            .cloned()
            .collect()
    }

    /// The current X.509-SVID of an entry, minted now if there is none yet or it is due.
    pub fn x509_svid(&self, entry: &Entry) -> Result<Arc<MintedSvid>, AuthorityError> {
        let mut svids = self.svids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(svid) = svids.get(&entry.spiffe_id)
            && SystemTime::now() < svid.rotate_at()
            && svid.ttl == entry.x509_ttl
        {
            return Ok(svid.clone());
        }
        let svid = Arc::new(
            self.authority
                .mint_x509_svid(&entry.spiffe_id, entry.x509_ttl)?,
        );
        svids.insert(entry.spiffe_id.clone(), svid.clone());
        Ok(svid)
    }

    /// Rotates every cached SVID past half-life (or whose entry's TTL changed);
    /// returns how many were rotated.
    pub fn rotate_due(&self, now: SystemTime) -> usize {
        let registry = self.registry();
        let due: Vec<Entry> = {
            let mut svids = self.svids.lock().unwrap_or_else(|p| p.into_inner());
            // Identities whose entry was removed are forgotten, not rotated.
            svids.retain(|id, _| registry.entries.iter().any(|e| &e.spiffe_id == id));
            registry
                .entries
                .iter()
                .filter(|e| {
                    svids
                        .get(&e.spiffe_id)
                        .is_some_and(|s| now >= s.rotate_at() || s.ttl != e.x509_ttl)
                })
                .cloned()
                .collect()
        };
        let mut rotated = 0;
        for entry in &due {
            match self
                .authority
                .mint_x509_svid(&entry.spiffe_id, entry.x509_ttl)
            {
                Ok(svid) => {
                    tracing::info!(spiffe_id = %entry.spiffe_id, serial = %svid.serial, "rotated X.509-SVID");
                    self.svids
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(entry.spiffe_id.clone(), Arc::new(svid));
                    rotated += 1;
                }
                Err(e) => {
                    tracing::error!(spiffe_id = %entry.spiffe_id, error = %e, "rotation failed")
                }
            }
        }
        if rotated > 0 {
            self.bump();
        }
        rotated
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Runs rotation until the returned future is dropped.
    pub async fn run_rotation(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ROTATION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.rotate_due(SystemTime::now());
        }
    }
}
