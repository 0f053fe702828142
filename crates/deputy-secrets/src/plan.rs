//! When to renew, replace or give up a token or a lease: pure arithmetic over the terms Vault
//! gave, tested on its own, so the loop that talks to Vault only acts on what this decides.

use std::time::{Duration, Instant};

/// What to do with a lease (or a token) when its time comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Ask Vault for more time.
    Renew,
    /// Get a new one: it cannot be renewed, or Vault will not extend it further (max TTL).
    Replace,
}

/// Terms of something with a lifetime: obtained (or last renewed) at `since`, for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// When Vault granted the current `ttl`.
    pub since: Instant,
    /// How long from `since` it lives.
    pub ttl: Duration,
    /// Whether Vault lets it be renewed.
    pub renewable: bool,
    /// Whether the last renewal came back shorter than asked: Vault's max TTL is near, and
    /// renewing again cannot help.
    pub capped: bool,
}

impl Terms {
    /// When it stops working.
    pub fn expires_at(&self) -> Instant {
        self.since + self.ttl
    }

    /// At about two thirds of its lifetime: renew it if Vault would extend it, else replace it,
    /// leaving a third of the lifetime for retries while it still works.
    pub fn next(&self) -> (Instant, Step) {
        let at = self.since + self.ttl.mul_f64(2.0 / 3.0);
        let step = if self.renewable && !self.capped {
            Step::Renew
        } else {
            Step::Replace
        };
        (at, step)
    }

    /// The terms after a renewal at `now` that asked for `asked` and got `granted`.
    pub fn renewed(&self, now: Instant, asked: Duration, granted: Duration) -> Self {
        Self {
            since: now,
            ttl: granted,
            renewable: self.renewable,
            capped: is_capped(asked, granted),
        }
    }
}

/// Vault granted noticeably less than asked: the max TTL is the limit now.
pub fn is_capped(asked: Duration, granted: Duration) -> bool {
    granted + Duration::from_secs(2) < asked
}

/// After a failed attempt, when to try again: after `backoff`, but (while it still works) never
/// later than shortly before it expires, so that a short outage does not outlast a credential
/// that could have been replaced.
pub fn retry_at(now: Instant, backoff: Duration, expires_at: Option<Instant>) -> Instant {
    let at = now + backoff;
    match expires_at {
        Some(end) if end > now => at
            .min(now + (end - now) / 2)
            .max(now + Duration::from_millis(100)),
        _ => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(ttl: u64, renewable: bool, capped: bool) -> (Instant, Terms) {
        let now = Instant::now();
        (
            now,
            Terms {
                since: now,
                ttl: Duration::from_secs(ttl),
                renewable,
                capped,
            },
        )
    }

    #[test]
    fn a_renewable_lease_is_renewed_at_two_thirds() {
        let (now, t) = terms(30, true, false);
        assert_eq!(t.next(), (now + Duration::from_secs(20), Step::Renew));
        assert_eq!(t.expires_at(), now + Duration::from_secs(30));
    }

    #[test]
    fn a_lease_that_cannot_be_renewed_is_replaced_at_two_thirds() {
        let (now, t) = terms(300, false, false);
        assert_eq!(t.next(), (now + Duration::from_secs(200), Step::Replace));
    }

    #[test]
    fn a_renewal_capped_by_max_ttl_leads_to_a_replacement() {
        let (now, t) = terms(20, true, false);
        let later = now + Duration::from_secs(13);
        let full = t.renewed(later, Duration::from_secs(20), Duration::from_secs(20));
        assert_eq!(full.next().1, Step::Renew);
        let capped = t.renewed(later, Duration::from_secs(20), Duration::from_secs(7));
        assert!(capped.capped);
        assert_eq!(
            capped.next(),
            (
                later + Duration::from_secs(7).mul_f64(2.0 / 3.0),
                Step::Replace
            )
        );
    }

    #[test]
    fn retries_come_before_the_credential_expires() {
        let now = Instant::now();
        let end = now + Duration::from_secs(10);
        assert_eq!(
            retry_at(now, Duration::from_secs(2), Some(end)),
            now + Duration::from_secs(2)
        );
        assert_eq!(
            retry_at(now, Duration::from_secs(60), Some(end)),
            now + Duration::from_secs(5)
        );
        assert_eq!(
            retry_at(now, Duration::from_secs(60), None),
            now + Duration::from_secs(60)
        );
        // Already expired: the backoff alone.
        assert_eq!(
            retry_at(end, Duration::from_secs(3), Some(now)),
            end + Duration::from_secs(3)
        );
    }
}
