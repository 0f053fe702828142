//! Identity metrics. Names are part of Deputy's interface; dashboards depend on them.

use crate::material::TlsMaterial;

/// Gauge: unix time at which the current SVID of `spiffe_id` expires.
pub const SVID_EXPIRY: &str = "deputy_svid_expiry_timestamp_seconds";
/// Counter: SVIDs that replaced a previous one, by `spiffe_id`.
pub const SVID_ROTATIONS: &str = "deputy_svid_rotations_total";
/// Counter: errors from an identity source, by `source` (`workload_api`, `delegated_identity_api`).
pub const SOURCE_ERRORS: &str = "deputy_identity_source_errors_total";

/// Describes the metrics, for the Prometheus exporter's HELP lines.
pub fn describe() {
    metrics::describe_gauge!(
        SVID_EXPIRY,
        metrics::Unit::Seconds,
        "Unix time at which the current X.509-SVID expires"
    );
    metrics::describe_counter!(SVID_ROTATIONS, "X.509-SVIDs that replaced a previous one");
    metrics::describe_counter!(SOURCE_ERRORS, "Errors from an identity source");
}

pub(crate) fn svid_published(material: &TlsMaterial, rotated: bool) {
    let id = material.spiffe_id.to_string();
    metrics::gauge!(SVID_EXPIRY, "spiffe_id" => id.clone())
        .set(material.not_after.unix_timestamp() as f64);
    if rotated {
        metrics::counter!(SVID_ROTATIONS, "spiffe_id" => id).increment(1);
    }
}

pub(crate) fn source_error(source: &'static str) {
    metrics::counter!(SOURCE_ERRORS, "source" => source).increment(1);
}
