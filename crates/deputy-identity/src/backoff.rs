//! Exponential backoff with jitter, one per identity, so that a flapping source does not make
//! every identity retry in lock-step.

use std::time::Duration;

use rand::Rng as _;

/// Retry delays that double from `min` up to `max`, each scaled by a random factor in
/// `[0.5, 1.0]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        exp.min(self.max)
            .mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_millis(500), "{capped:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
