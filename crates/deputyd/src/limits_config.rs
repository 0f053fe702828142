//! The `[limits]` section: the data path's bounds ([`Limits`]), each with a default sized for a
//! 2-core node.
//!
//! ```toml
//! [limits]
//! max_connection_age = "1h"     # a connection is drained and re-admitted at this age
//! drain_grace = "10s"           # streams in flight after a drain (and on SIGTERM)
//! handshake = "5s"              # the whole TLS handshake on the inbound port
//! max_handshakes = 256          # inbound handshakes in progress; past it, closed at accept
//! keepalive_interval = "30s"    # HTTP/2 PING on idle connections (servers and pool)
//! keepalive_timeout = "10s"     # an unanswered PING closes the connection
//! max_connections = 1024        # per listener; past it, 503 overloaded
//! max_streams = 256             # requests per connection; past it, 503 overloaded
//! max_pool_connections = 4      # connections to a peer node per (agent, service)
//! max_inspected_bytes = 67108864  # body bytes held for the policy, node-wide
//! ```

use std::time::Duration;

use deputy_proxy::Limits;
use serde::Deserialize;

/// Longest drain grace: SIGTERM waits this long at most, and a supervisor must let it.
const MAX_DRAIN_GRACE: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLimits {
    #[serde(with = "humantime_serde")]
    max_connection_age: Duration,
    #[serde(with = "humantime_serde")]
    drain_grace: Duration,
    #[serde(with = "humantime_serde")]
    handshake: Duration,
    max_handshakes: usize,
    #[serde(with = "humantime_serde")]
    keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    keepalive_timeout: Duration,
    max_connections: usize,
    max_streams: u32,
    max_pool_connections: usize,
    max_inspected_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_connection_age: l.max_connection_age,
            drain_grace: l.drain_grace,
            handshake: l.handshake,
            max_handshakes: l.max_handshakes,
            keepalive_interval: l.keepalive_interval,
            keepalive_timeout: l.keepalive_timeout,
            max_connections: l.max_connections,
            max_streams: l.max_streams,
            max_pool_connections: l.max_pool_connections,
            max_inspected_bytes: l.max_inspected_bytes,
        }
    }
}

impl RawLimits {
    /// The limits, with every problem pushed onto `problems`. `peek_bytes` is what one request
    /// may hold for the policy: the node-wide bound must fit at least one.
    pub(crate) fn validate(self, peek_bytes: Option<usize>, problems: &mut Vec<String>) -> Limits {
        let durations = [
            ("max_connection_age", self.max_connection_age),
            ("drain_grace", self.drain_grace),
            ("handshake", self.handshake),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                problems.push(format!("limits.{name} must be above zero"));
            }
        }
        if self.max_connection_age < Duration::from_secs(10) && !self.max_connection_age.is_zero() {
            problems.push(format!(
                "limits.max_connection_age = {:?} would reconnect constantly; keep it at least 10s",
                self.max_connection_age
            ));
        }
        if self.max_connections == 0
            || self.max_streams == 0
            || self.max_handshakes == 0
            || self.max_pool_connections == 0
        {
            problems.push(
                "limits.max_connections, max_streams, max_handshakes and max_pool_connections \
                 must be above zero"
                    .into(),
            );
        }
        if self.drain_grace > MAX_DRAIN_GRACE {
            problems.push(format!(
                "limits.drain_grace = {:?} is longer than {MAX_DRAIN_GRACE:?}; a stop that waits \
                 that long is killed by its supervisor first (keep it under systemd's \
                 TimeoutStopSec)",
                self.drain_grace
            ));
        }
        if let Some(peek) = peek_bytes
            && self.max_inspected_bytes < peek
        {
            problems.push(format!(
                "limits.max_inspected_bytes = {} is less than policy.peek_bytes = {peek}: no \
                 request could be inspected; raise it to at least peek_bytes",
                self.max_inspected_bytes
            ));
        }
        Limits {
            max_connection_age: self.max_connection_age,
            drain_grace: self.drain_grace,
            handshake: self.handshake,
            max_handshakes: self.max_handshakes,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connections: self.max_connections,
            max_streams: self.max_streams,
            max_pool_connections: self.max_pool_connections,
            max_inspected_bytes: self.max_inspected_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RawLimits {
        toml::from_str(text).expect("parse")
    }

    #[test]
    fn unset_limits_are_the_defaults_and_set_ones_are_read() {
        let mut problems = Vec::new();
        let limits = parse("").validate(Some(1 << 20), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(limits.max_streams, Limits::default().max_streams);
        let limits =
            parse("drain_grace = \"2s\"\nmax_connections = 8\n").validate(None, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(limits.drain_grace, Duration::from_secs(2));
        assert_eq!(limits.max_connections, 8);
    }

    #[test]
    fn limits_that_cannot_work_are_refused_in_words() {
        let mut problems = Vec::new();
        parse("handshake = \"0s\"\nmax_streams = 0\nmax_inspected_bytes = 10\n")
            .validate(Some(1 << 20), &mut problems);
        let all = problems.join("\n");
        assert!(all.contains("limits.handshake must be above zero"), "{all}");
        assert!(
            all.contains("max_handshakes and max_pool_connections must be above zero"),
            "{all}"
        );
        assert!(all.contains("less than policy.peek_bytes"), "{all}");
    }
}
