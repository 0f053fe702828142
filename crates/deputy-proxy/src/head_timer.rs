//! How long an HTTP/1.1 client may take over a request's head, and how long a kept-alive
//! connection may wait for its next request: two lengths for hyper's one header timeout.
//!
//! hyper starts its `header_read_timeout` when it begins to wait for a head. For the second and
//! later requests of a kept-alive connection that is when the previous answer went out, so the
//! timeout was also how long a connection could sit idle: at `[timeouts] connect` (5 s) deputyd
//! closed agents' kept-alive connections after 5 s, and a client that reused one at that moment
//! had its request fail (the soak met it: one call in 44,233, "client error (SendRequest)";
//! HTTP clients keep idle connections for 90 s and more). With this timer a head must be whole
//! within `head` of its first byte (bytes read while the answer before it was being written
//! count as its start), the first request's within `head` of when hyper began to wait for it,
//! and between requests a connection may wait `idle` for the next one. (Before hyper knows the
//! protocol it runs no timer at all: `serve_until_drained`'s `first_request` bounds that.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the connection's reads and writes tell its timer.
#[derive(Debug)]
struct Activity {
    base: Instant,
    /// When bytes were last read (nanoseconds after `base`, plus one; 0: never).
    last_read: AtomicU64,
    /// When bytes were last written (the same measure): some were once the connection has
    /// answered a request.
    last_write: AtomicU64,
}

impl Activity {
    fn at(&self, mark: &AtomicU64) -> Option<Instant> {
        let nanos = mark.load(Ordering::Acquire).checked_sub(1)?;
        Some(self.base + Duration::from_nanos(nanos))
    }

    fn read_after(&self, since: Instant) -> Option<Instant> {
        self.at(&self.last_read).filter(|at| *at >= since)
    }

    /// Whether bytes came in since the last write began: the next head may have begun while
    /// the answer before it was being written.
    fn read_since_last_write(&self) -> bool {
        match (self.at(&self.last_read), self.at(&self.last_write)) {
            (Some(read), Some(written)) => read >= written,
            _ => false,
        }
    }

    fn mark(&self, mark: &AtomicU64) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        mark.store(nanos.saturating_add(1), Ordering::Release);
    }
}

/// The longest idle wait between requests honoured (a bigger `[timeouts] idle` is this): no
/// deadline overflows.
const IDLE_AT_MOST: Duration = Duration::from_secs(24 * 3600);

/// One connection's header timer (give it to hyper's HTTP/1 builder with `header_read_timeout`
/// set to `head`) and the wrapper its stream must go through, so the timer sees its reads.
pub(crate) fn for_connection<T>(head: Duration, idle: Duration, io: T) -> (HeadTimer, Watched<T>) {
    let activity = Arc::new(Activity {
        base: Instant::now(),
        last_read: AtomicU64::new(0),
        last_write: AtomicU64::new(0),
    });
    let head = head.min(IDLE_AT_MOST);
    (
        HeadTimer {
            activity: activity.clone(),
            head,
            idle: idle.clamp(head, IDLE_AT_MOST),
        },
        Watched { io, activity },
    )
}

/// hyper's timer for one HTTP/1.1 connection (its header timeout is the only use hyper makes of
/// it there).
#[derive(Debug, Clone)]
pub(crate) struct HeadTimer {
    activity: Arc<Activity>,
    head: Duration,
    idle: Duration,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        // hyper asks for `head` from when it began to wait.
        let began = deadline.checked_sub(self.head).unwrap_or(deadline);
        // Bytes that came while the last answer was written may be this head's first: they
        // are taken to have come now, so they buy no idle allowance.
        let first_byte = self.activity.read_since_last_write().then_some(began);
        Box::pin(HeadSleep {
            timer: self.clone(),
            began,
            first_byte,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
        })
    }
}

struct HeadSleep {
    timer: HeadTimer,
    began: Instant,
    first_byte: Option<Instant>,
    deadline: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadSleep {
    /// The pure rule: a connection that has answered nothing yet has `head` from when hyper
    /// began to wait; one that has, `idle` from its last answer until a head's first byte, and
    /// `head` from that byte.
    fn deadline(&self, answered: bool) -> Instant {
        match self.first_byte {
            _ if !answered => self.began + self.timer.head,
            Some(first) => first + self.timer.head,
            None => self.began + self.timer.idle,
        }
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this each time the connection is polled while a head is awaited, so a
        // read is seen here the first time it wakes the connection.
        let activity = &self.timer.activity;
        let answered = activity.at(&activity.last_write).is_some();
        if self.first_byte.is_none() {
            self.first_byte = activity.read_after(self.began);
        }
        let deadline = self.deadline(answered);
        if deadline != self.deadline {
            self.deadline = deadline;
            self.sleep.as_mut().reset(deadline.into());
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}

/// A connection's stream, its reads and writes noted for its [`HeadTimer`].
#[derive(Debug)]
pub(crate) struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.mark(&self.activity.last_read);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_written(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T> Watched<T> {
    fn note_written(&self, polled: &Poll<std::io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.mark(&self.activity.last_write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep_at(began: Instant, first_byte: Option<Instant>) -> HeadSleep {
        let (timer, _) = for_connection(Duration::from_secs(5), Duration::from_secs(90), ());
        HeadSleep {
            timer,
            began,
            first_byte,
            deadline: began,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    #[tokio::test]
    async fn a_head_has_five_seconds_from_its_first_byte_and_a_kept_connection_may_idle() {
        let began = Instant::now();
        let second = Duration::from_secs(1);
        // The first request: 5 s from when hyper began to wait, however its bytes trickle.
        assert_eq!(sleep_at(began, None).deadline(false), began + 5 * second);
        let trickled = began + 4 * second;
        assert_eq!(
            sleep_at(began, Some(trickled)).deadline(false),
            began + 5 * second
        );
        // Between requests: the idle allowance, then 5 s from a head's first byte.
        assert_eq!(sleep_at(began, None).deadline(true), began + 90 * second);
        let first = began + 60 * second;
        assert_eq!(
            sleep_at(began, Some(first)).deadline(true),
            first + 5 * second
        );
    }

    #[tokio::test]
    async fn bytes_read_while_the_last_answer_was_written_start_the_next_head() {
        let (timer, _) = for_connection(Duration::from_secs(5), Duration::from_secs(90), ());
        let activity = timer.activity.clone();
        activity.mark(&activity.last_write);
        assert!(!activity.read_since_last_write());
        activity.mark(&activity.last_read);
        assert!(activity.read_since_last_write());
        let before = Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(5));
        let sleep = sleep
            .as_mut()
            .downcast_mut_pin::<HeadSleep>()
            .expect("a head sleep");
        assert!(sleep.first_byte.is_some_and(|first| first >= before));
    }

    #[tokio::test]
    async fn an_enormous_idle_allowance_is_a_day() {
        let (timer, _) = for_connection(Duration::from_secs(5), Duration::MAX, ());
        assert_eq!(timer.idle, IDLE_AT_MOST);
        let began = Instant::now();
        let sleep = HeadSleep {
            timer,
            began,
            first_byte: None,
            deadline: began,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        assert_eq!(sleep.deadline(true), began + IDLE_AT_MOST);
    }

    #[test]
    fn reads_before_the_wait_began_are_not_a_first_byte() {
        let (timer, _) = for_connection(Duration::from_secs(5), Duration::from_secs(90), ());
        let activity = &timer.activity;
        assert_eq!(activity.read_after(activity.base), None, "nothing read");
        activity.last_read.store(1_000 + 1, Ordering::Release);
        let at = activity.base + Duration::from_nanos(1_000);
        assert_eq!(activity.read_after(activity.base), Some(at));
        assert_eq!(activity.read_after(at + Duration::from_nanos(1)), None);
    }
}
