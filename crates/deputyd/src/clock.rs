//! The wall clock, watched against the monotonic one.
//!
//! Delegation links (`iat`, `exp`, within `[delegation] clock_skew`), certificates and
//! revocations are judged by the wall clock, so a step of it (an operator's `date -s`, NTP
//! correcting a clock that ran off, a VM resumed) changes which calls a node refuses, and which
//! of its own links other nodes refuse. The step itself leaves no trace: the refusals that follow
//! name a link expired or issued in the future. deputyd therefore compares the two clocks every
//! second and says in its log, its metrics and `/status` when the wall clock stepped, and by how
//! much, so that an operator reading a burst of `chain-rejected` problems sees why.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// A change of the wall clock against the monotonic clock above this, between two readings a
/// second apart, is a step. NTP slews at most 500 µs per second, so a slew never reaches it.
const STEP_THRESHOLD: f64 = 1.0;

/// How often the clocks are compared.
const INTERVAL: Duration = Duration::from_secs(1);

/// Longest a sample may take (two monotonic readings around the wall clock's) to be used.
const SAMPLE_SPREAD: Duration = Duration::from_millis(50);

/// How far issuers date an SVID back (SPIRE's and `deputy issuer`'s backdate): a clock stepped
/// back further sees the certificates issued since as not valid yet, so new handshakes with
/// peers holding them, and the rotated SVIDs of this node's agents, fail.
const CERTIFICATE_BACKDATE: f64 = 10.0;

/// Counter of wall clock steps seen.
const CLOCK_STEPS: &str = "deputy_clock_steps_total";

/// What `/status` says of the clock.
#[derive(Debug, Clone, Serialize)]
pub struct ClockStatus {
    /// The node's wall clock when `/status` was read (compare it with other nodes').
    pub now: String,
    /// Steps of the wall clock seen since deputyd started.
    pub steps: u64,
    /// The latest step, if any.
    pub last_step: Option<ClockStep>,
}

/// One step of the wall clock.
#[derive(Debug, Clone, Serialize)]
pub struct ClockStep {
    /// When it was seen, by the wall clock after the step.
    pub seen_at: String,
    /// By how much the wall clock moved, beyond the time that passed: positive forward.
    pub seconds: f64,
}

#[derive(Debug, Default)]
struct Steps {
    count: u64,
    last: Option<ClockStep>,
}

static STEPS: OnceLock<Mutex<Steps>> = OnceLock::new();

fn steps() -> &'static Mutex<Steps> {
    STEPS.get_or_init(Mutex::default)
}

/// The clock as `/status` shows it.
pub fn status() -> ClockStatus {
    let steps = steps().lock().unwrap_or_else(|e| e.into_inner());
    ClockStatus {
        now: rfc3339(SystemTime::now()),
        steps: steps.count,
        last_step: steps.last.clone(),
    }
}

/// The wall clock's offset from the monotonic clock, in seconds: constant while neither steps.
fn offset(wall: SystemTime, monotonic: Instant, origin: Instant) -> f64 {
    let wall = match wall.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    };
    wall - monotonic.duration_since(origin).as_secs_f64()
}

/// The step between two offsets, if the wall clock stepped.
fn step(previous: f64, current: f64) -> Option<f64> {
    let moved = current - previous;
    (moved.abs() > STEP_THRESHOLD).then_some(moved)
}

/// Compares the clocks every second until `cancel`; reports each step.
pub async fn watch(skew: Duration, cancel: CancellationToken) {
    // Present from the start, so that a rate over it counts the first step.
    metrics::counter!(CLOCK_STEPS).increment(0);
    let origin = Instant::now();
    let mut previous = offset(SystemTime::now(), Instant::now(), origin);
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The wall clock read between two monotonic readings; a sample whose readings lie
        // far apart (the thread was preempted between them) is skipped rather than taken for
        // a step.
        let before = Instant::now();
        let now = SystemTime::now();
        let after = Instant::now();
        if after - before > SAMPLE_SPREAD {
            continue;
        }
        let current = offset(now, before, origin);
        if let Some(seconds) = step(previous, current) {
            report(now, seconds, skew);
        }
        previous = current;
    }
}

fn report(now: SystemTime, seconds: f64, skew: Duration) {
    let seen_at = rfc3339(now);
    if seconds.abs() > skew.as_secs_f64() {
        tracing::warn!(seconds = format_args!("{seconds:+.1}"), now = %seen_at,
            clock_skew = ?skew,
            "the wall clock stepped past the delegation clock skew: delegation links of nodes \
             whose clocks now differ from this one's by more than clock_skew are refused (as \
             expired or issued in the future), and theirs of this node's; check the time \
             synchronization (timedatectl, chronyc tracking) of this node and its peers");
    }
    if seconds < -CERTIFICATE_BACKDATE {
        tracing::warn!(seconds = format_args!("{seconds:+.1}"), now = %seen_at,
            "the wall clock stepped back further than issuers date certificates back: SVIDs \
             issued in the last {:.0} s are not valid yet by this clock, so new mTLS handshakes \
             with peers holding one, and this node's agents' rotated SVIDs, fail until it is \
             set right", -seconds - CERTIFICATE_BACKDATE);
    } else if seconds.abs() <= skew.as_secs_f64() {
        tracing::info!(seconds = format_args!("{seconds:+.1}"), now = %seen_at,
            "the wall clock stepped");
    }
    metrics::counter!(CLOCK_STEPS).increment(1);
    let mut steps = steps().lock().unwrap_or_else(|e| e.into_inner());
    steps.count += 1;
    steps.last = Some(ClockStep { seen_at, seconds });
}

/// RFC 3339 in UTC; a time RFC 3339 cannot write (before 1970, after 9999: a clock set very
/// wrong) as signed Unix seconds, never a panic.
fn rfc3339(t: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) if since <= LAST => humantime::format_rfc3339_seconds(t).to_string(),
        Ok(since) => format!("unix {}", since.as_secs()),
        Err(before) => format!("unix -{}", before.duration().as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_the_change_of_the_offset_beyond_the_threshold_either_way() {
        assert_eq!(step(1000.0, 1000.4), None, "drift and jitter are no step");
        assert_eq!(step(1000.0, 999.2), None);
        assert_eq!(step(1000.0, 1090.0), Some(90.0));
        assert_eq!(step(1000.0, 100.0), Some(-900.0));
    }

    #[test]
    fn any_time_is_written_without_a_panic() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "unix -5".to_owned()
        );
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far), "unix 300000000000");
    }

    #[test]
    fn the_offset_does_not_move_while_both_clocks_run() {
        let origin = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = origin + Duration::from_secs(5);
        assert_eq!(
            offset(wall, origin, origin),
            offset(wall + Duration::from_secs(5), later, origin)
        );
        // A clock before 1970 (a board without a battery) is still an offset, not a panic.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(offset(before, origin, origin), -10.0);
    }
}
