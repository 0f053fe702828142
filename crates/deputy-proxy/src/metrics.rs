//! Data-path metrics. Names are part of Deputy's interface.

use std::time::Duration;

/// Counter: requests by `direction`, `service` and `status`.
pub const REQUESTS: &str = "deputy_requests_total";
/// Histogram: request duration until response headers, by `direction` and `service`.
pub const REQUEST_DURATION: &str = "deputy_request_duration_seconds";
/// Counter: body bytes by `direction`, `service` and `flow` (`request` or `response`).
pub const BYTES: &str = "deputy_bytes_total";
/// Gauge: open connections by `direction` (`inbound`, `outbound`: an agent's to its listener,
/// `pool`: this node's to others).
pub const OPEN_CONNECTIONS: &str = "deputy_open_connections";
/// Counter: connections drained by `direction` and `reason`.
pub const DRAINED_CONNECTIONS: &str = "deputy_connections_drained_total";
/// Counter: calls refused because a limit was reached, by `direction` and `limit`.
pub const OVERLOADED: &str = "deputy_overloaded_total";
/// Counter: requests sent again on another pooled connection, by `service`, because the one
/// the pool handed out closed before the request was written.
pub const RESENT: &str = "deputy_requests_resent_total";
/// Counter: completed TLS handshakes by `direction`.
pub const HANDSHAKES: &str = "deputy_tls_handshakes_total";
/// Counter: failed TLS handshakes by `direction` and `reason`.
pub const HANDSHAKE_FAILURES: &str = "deputy_tls_handshake_failures_total";

/// Describes the metrics, for the exporter's HELP lines.
pub fn describe() {
    metrics::describe_counter!(REQUESTS, "Requests by direction, service and status");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request to response headers"
    );
    metrics::describe_counter!(BYTES, metrics::Unit::Bytes, "Body bytes carried");
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Open connections by direction");
    metrics::describe_counter!(
        DRAINED_CONNECTIONS,
        "Connections drained by reason (SVID expired, peer no longer trusted, agent removed, \
         maximum age, stopping)"
    );
    metrics::describe_counter!(OVERLOADED, "Calls refused with 503 overloaded, by limit");
    metrics::describe_counter!(
        RESENT,
        "Requests sent again because their pooled connection closed before they were written"
    );
    metrics::describe_counter!(HANDSHAKES, "Completed TLS handshakes");
    metrics::describe_counter!(HANDSHAKE_FAILURES, "Failed TLS handshakes by reason");
    metrics::describe_gauge!(crate::context::CONTEXTS, "Deputy-Context handles held");
    metrics::describe_counter!(
        crate::context::CONTEXTS_EVICTED,
        "Live contexts evicted because the store was full"
    );
}

pub(crate) fn request_done(direction: &'static str, service: &str, status: u16, took: Duration) {
    metrics::counter!(REQUESTS, "direction" => direction, "service" => service.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "direction" => direction, "service" => service.to_owned())
        .record(took.as_secs_f64());
}

pub(crate) fn connection_opened(direction: &'static str) {
    metrics::gauge!(OPEN_CONNECTIONS, "direction" => direction).increment(1.0);
}

pub(crate) fn connection_closed(direction: &'static str) {
    metrics::gauge!(OPEN_CONNECTIONS, "direction" => direction).decrement(1.0);
}

pub(crate) fn connection_drained(direction: &'static str, reason: &'static str) {
    metrics::counter!(DRAINED_CONNECTIONS, "direction" => direction, "reason" => reason)
        .increment(1);
}

pub(crate) fn resent(service: &str) {
    metrics::counter!(RESENT, "service" => service.to_owned()).increment(1);
}

pub(crate) fn overloaded(direction: &'static str, limit: &'static str) {
    metrics::counter!(OVERLOADED, "direction" => direction, "limit" => limit).increment(1);
}

pub(crate) fn handshake_succeeded(direction: &'static str) {
    metrics::counter!(HANDSHAKES, "direction" => direction).increment(1);
}

pub(crate) fn handshake_failed(direction: &'static str, reason: &'static str) {
    metrics::counter!(HANDSHAKE_FAILURES, "direction" => direction, "reason" => reason)
        .increment(1);
}

pub(crate) fn bytes(direction: &'static str, service: &str, request: u64, response: u64) {
    metrics::counter!(BYTES, "direction" => direction, "service" => service.to_owned(), "flow" => "request")
        .increment(request);
    metrics::counter!(BYTES, "direction" => direction, "service" => service.to_owned(), "flow" => "response")
        .increment(response);
}
