//! The state of one identity, and the cell that publishes its material.
//!
//! Every new SVID, lost source and expiry goes through `IdentityCell`, so the rules live in
//! one place: material is published only for the expected SPIFFE ID, a lost source keeps the
//! last SVID serving until it expires, and an expired SVID is withdrawn (fail closed).

use std::sync::{Arc, Mutex};

use serde::Serialize;
use spiffe::X509Svid;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::material::TlsMaterial;

/// Where an identity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityState {
    /// No SVID has arrived yet. Nothing is served for this identity.
    Initializing,
    /// The source is connected and the SVID is valid.
    Available,
    /// The source went away. The last SVID is still valid and keeps serving until it expires,
    /// so that a restart of the issuer or SPIRE agent does not interrupt traffic.
    SourceUnavailable,
    /// The SVID expired and no new one arrived. The material is withdrawn: handshakes with this
    /// identity fail rather than present an expired certificate.
    Expired,
}

/// A snapshot of one identity, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityStatus {
    /// `deputyd` for the daemon's own identity, otherwise the agent's name.
    pub name: String,
    /// The SPIFFE ID this identity is expected to have (for the daemon: the one it received).
    pub spiffe_id: String,
    /// Where the identity stands.
    pub state: IdentityState,
    /// Which API and endpoint the SVIDs come from.
    pub source: String,
    /// Serial of the current SVID.
    pub serial: Option<String>,
    /// Expiry of the current SVID, RFC 3339.
    pub expires_at: Option<String>,
    /// Seconds until the current SVID expires (negative once expired).
    pub expires_in_seconds: Option<i64>,
    /// How many times a new SVID replaced a previous one.
    pub rotations: u64,
    /// The last error from the source, if any since the last success.
    pub last_error: Option<String>,
}

/// Receivers for one identity: its status and its material (`None` while there is none that
/// may be used).
#[derive(Debug, Clone)]
pub struct IdentityHandle {
    /// Status snapshots.
    pub status: watch::Receiver<IdentityStatus>,
    /// Material for handshakes; `None` until the first SVID and after expiry.
    pub material: watch::Receiver<Option<Arc<TlsMaterial>>>,
}

/// The one entry point for everything that happens to an identity.
#[derive(Debug)]
pub(crate) struct IdentityCell {
    /// The SPIFFE ID the SVIDs must carry; `None` for the daemon's own identity, which takes
    /// whatever the Workload API attests it as.
    expected: Option<spiffe::SpiffeId>,
    status: watch::Sender<IdentityStatus>,
    material: watch::Sender<Option<Arc<TlsMaterial>>>,
    // Serialises updates so a status never mixes two events.
    lock: Mutex<()>,
}

impl IdentityCell {
    pub(crate) fn new(
        name: &str,
        expected: Option<spiffe::SpiffeId>,
        source: String,
    ) -> (Arc<Self>, IdentityHandle) {
        let status = IdentityStatus {
            name: name.to_owned(),
            spiffe_id: expected
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            state: IdentityState::Initializing,
            source,
            serial: None,
            expires_at: None,
            expires_in_seconds: None,
            rotations: 0,
            last_error: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let (material_tx, material_rx) = watch::channel(None);
        let cell = Arc::new(Self {
            expected,
            status: status_tx,
            material: material_tx,
            lock: Mutex::new(()),
        });
        (
            cell,
            IdentityHandle {
                status: status_rx,
                material: material_rx,
            },
        )
    }

    /// A new SVID arrived from the source.
    pub(crate) fn svid_received(&self, svid: &X509Svid) -> Result<(), String> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expected) = &self.expected
            && svid.spiffe_id() != expected
        {
            let message = format!(
                "the source issued {} but this agent is configured as {expected}: fix the agent's \
                 selectors or spiffe_id so that they name the same registration entry",
                svid.spiffe_id()
            );
            self.status
                .send_modify(|s| s.last_error = Some(message.clone()));
            return Err(message);
        }
        let material = TlsMaterial::from_svid(svid).map_err(|e| e.to_string())?;
        let now = OffsetDateTime::now_utc();
        if !material.is_valid_at(now) {
            let message = format!(
                "the source sent an SVID for {} that is not valid now (valid {} to {}): check \
                 the clocks of this node and the issuer",
                material.spiffe_id, material.not_before, material.not_after
            );
            self.status
                .send_modify(|s| s.last_error = Some(message.clone()));
            return Err(message);
        }
        let same_serial = self
            .material
            .borrow()
            .as_ref()
            .is_some_and(|m| m.serial == material.serial);
        let rotated = self.material.borrow().is_some() && !same_serial;
        crate::metrics::svid_published(&material, rotated);
        self.status.send_modify(|s| {
            s.spiffe_id = material.spiffe_id.to_string();
            s.state = IdentityState::Available;
            s.serial = Some(material.serial.clone());
            s.expires_at = Some(rfc3339(material.not_after));
            s.expires_in_seconds = Some((material.not_after - now).whole_seconds());
            s.last_error = None;
            if rotated {
                s.rotations += 1;
            }
        });
        if !same_serial {
            self.material.send_replace(Some(Arc::new(material)));
        }
        Ok(())
    }

    /// The source answered again (without necessarily sending a new SVID).
    pub(crate) fn source_recovered(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let has_material = self.material.borrow().is_some();
        self.status.send_modify(|s| {
            if has_material {
                s.state = IdentityState::Available;
            }
            s.last_error = None;
        });
    }

    /// The source failed; the last SVID keeps serving while it is valid.
    pub(crate) fn source_lost(&self, error: String) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let has_material = self.material.borrow().is_some();
        self.status.send_modify(|s| {
            if has_material {
                s.state = IdentityState::SourceUnavailable;
            }
            s.last_error = Some(error);
        });
    }

    /// Withdraws material past its expiry; refreshes the time left otherwise.
    pub(crate) fn check_expiry(&self, now: OffsetDateTime) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(not_after) = self.material.borrow().as_ref().map(|m| m.not_after) else {
            return;
        };
        let expired = now >= not_after;
        if expired {
            self.material.send_replace(None);
            tracing::error!(
                identity = %self.status.borrow().name,
                "SVID expired with no replacement from the source; this identity stops serving \
                 until the source returns"
            );
        }
        self.status.send_modify(|s| {
            s.expires_in_seconds = Some((not_after - now).whole_seconds());
            if expired {
                s.state = IdentityState::Expired;
            }
        });
    }

    pub(crate) fn state(&self) -> IdentityState {
        self.status.borrow().state
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
