//! Whether a connection may go on carrying calls: the pure decision, apart from the registry
//! that applies it.
//!
//! A connection is admitted once, at its handshake, on two SVIDs and the trust bundle of that
//! moment. Everything it carries afterwards rides on that admission, so a connection must not
//! outlive it: when either SVID expires, when the peer's chain no longer verifies against the
//! bundle (its CA removed or rotated away), when its agent is removed, or when it reaches the
//! configured maximum age, it is drained.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Why a connection is being drained.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainReason {
    /// The SVID this node presented on the connection expired.
    LocalSvidExpired,
    /// The SVID the peer presented expired.
    PeerSvidExpired,
    /// The peer's chain no longer verifies against the current trust bundle.
    PeerNoLongerTrusted(String),
    /// The connection's agent was removed from the configuration.
    AgentRemoved,
    /// The connection reached the configured maximum age.
    MaxAge(Duration),
    /// deputyd is stopping.
    ShuttingDown,
    /// An agent at either end was revoked (what the revocation says).
    Revoked(String),
}

impl DrainReason {
    /// Whether a drain for this reason lingers (answers say `Connection: close` for a moment
    /// before idle connections are closed): only where serving a few more requests is harmless
    /// (a stop, a connection's age); a revoked, expired, distrusted or removed peer gets no
    /// more.
    pub fn lingers(&self) -> bool {
        matches!(self, Self::ShuttingDown | Self::MaxAge(_))
    }

    /// A short stable name, for metrics and the `/connections` document.
    pub fn name(&self) -> &'static str {
        match self {
            Self::LocalSvidExpired => "local_svid_expired",
            Self::PeerSvidExpired => "peer_svid_expired",
            Self::PeerNoLongerTrusted(_) => "peer_no_longer_trusted",
            Self::AgentRemoved => "agent_removed",
            Self::MaxAge(_) => "max_age",
            Self::ShuttingDown => "shutting_down",
            Self::Revoked(_) => "revoked",
        }
    }
}

impl fmt::Display for DrainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LocalSvidExpired => f.write_str("the SVID this node presented expired"),
            Self::PeerSvidExpired => f.write_str("the peer's SVID expired"),
            Self::PeerNoLongerTrusted(why) => write!(
                f,
                "the peer's certificate no longer verifies against the trust bundle ({why})"
            ),
            Self::AgentRemoved => f.write_str("its agent was removed from the configuration"),
            Self::MaxAge(age) => write!(
                f,
                "it reached its maximum age of {age:?} ([limits] max_connection_age, less up to a \
                 tenth so that connections opened together are not renewed together)"
            ),
            Self::ShuttingDown => f.write_str("deputyd is stopping"),
            Self::Revoked(why) => write!(f, "{why}"),
        }
    }
}

/// What is known of one connection at a moment.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    /// Now.
    pub now: SystemTime,
    /// How long ago the connection was admitted (a monotonic clock: a step of the wall clock
    /// neither ages nor rejuvenates it).
    pub age: Duration,
    /// When the SVID this node presented expires (`None`: it presented none, as on an agent's
    /// plaintext connection to its outbound listener).
    pub local_expires: Option<SystemTime>,
    /// When the peer's certificate chain expires (its earliest `notAfter`).
    pub peer_expires: Option<SystemTime>,
    /// The peer's chain verified again, when the trust bundle changed since it last was.
    pub peer_verified: Option<Result<(), &'a str>>,
    /// The configured maximum age.
    pub max_age: Duration,
}

/// Whether the connection must be drained, and why. A certificate is drained at its `notAfter`
/// second, not after it: the conservative end of the second it is still valid in.
pub fn reason_to_drain(facts: &ConnectionFacts<'_>) -> Option<DrainReason> {
    if facts.local_expires.is_some_and(|t| t <= facts.now) {
        return Some(DrainReason::LocalSvidExpired);
    }
    if facts.peer_expires.is_some_and(|t| t <= facts.now) {
        return Some(DrainReason::PeerSvidExpired);
    }
    if let Some(Err(why)) = facts.peer_verified {
        return Some(DrainReason::PeerNoLongerTrusted(why.to_owned()));
    }
    (facts.age >= facts.max_age).then_some(DrainReason::MaxAge(facts.max_age))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn facts(now: SystemTime) -> ConnectionFacts<'static> {
        ConnectionFacts {
            now,
            age: MINUTE,
            local_expires: Some(now + MINUTE),
            peer_expires: Some(now + MINUTE),
            peer_verified: None,
            max_age: 10 * MINUTE,
        }
    }

    #[test]
    fn a_connection_within_its_admission_goes_on() {
        let now = SystemTime::now();
        assert_eq!(reason_to_drain(&facts(now)), None);
        let plaintext = ConnectionFacts {
            local_expires: None,
            peer_expires: None,
            ..facts(now)
        };
        assert_eq!(reason_to_drain(&plaintext), None);
        let verified = ConnectionFacts {
            peer_verified: Some(Ok(())),
            ..facts(now)
        };
        assert_eq!(reason_to_drain(&verified), None);
    }

    #[test]
    fn each_lapse_of_the_admission_drains_with_its_reason() {
        let now = SystemTime::now();
        let local = ConnectionFacts {
            local_expires: Some(now),
            ..facts(now)
        };
        assert_eq!(reason_to_drain(&local), Some(DrainReason::LocalSvidExpired));
        let peer = ConnectionFacts {
            peer_expires: Some(now - Duration::from_secs(1)),
            ..facts(now)
        };
        assert_eq!(reason_to_drain(&peer), Some(DrainReason::PeerSvidExpired));
        let untrusted = ConnectionFacts {
            peer_verified: Some(Err("unknown CA")),
            ..facts(now)
        };
        assert_eq!(
            reason_to_drain(&untrusted),
            Some(DrainReason::PeerNoLongerTrusted("unknown CA".into()))
        );
        let old = ConnectionFacts {
            age: 10 * MINUTE,
            ..facts(now)
        };
        assert_eq!(
            reason_to_drain(&old),
            Some(DrainReason::MaxAge(10 * MINUTE))
        );
    }

    #[test]
    fn an_expired_svid_is_named_before_a_bundle_change_or_the_age() {
        let now = SystemTime::now();
        let all = ConnectionFacts {
            age: 20 * MINUTE,
            peer_expires: Some(now),
            peer_verified: Some(Err("unknown CA")),
            ..facts(now)
        };
        assert_eq!(reason_to_drain(&all), Some(DrainReason::PeerSvidExpired));
    }

    #[test]
    fn reasons_say_what_to_change() {
        assert!(
            DrainReason::MaxAge(MINUTE)
                .to_string()
                .contains("[limits] max_connection_age")
        );
        assert_eq!(DrainReason::ShuttingDown.name(), "shutting_down");
    }
}
