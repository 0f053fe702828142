//! How long an HTTP/1.1 client may take over a request's head, and how long a kept-alive
//! connection may wait for its next request: two lengths for hyper's one header timeout.
//!
//! hyper starts its `header_read_timeout` when it begins to wait for a head. For the second and
//! later requests of a kept-alive connection that is when the previous answer went out, so the
//! timeout was also how long a connection could sit idle: at `[timeouts] connect` (5 s) deputyd
//! closed agents' kept-alive connections after 5 s, and a client that reused one at that moment
//! had its request fail (the soak met it: one call in 44,233, "client error (SendRequest)";
//! HTTP clients keep idle connections for 90 s and more). With this timer a head must be whole
//! within `head` of its first byte (the first request's, of the connection's start: a client
//! that connects and says nothing is cut as before), and between requests a connection may wait
//! `idle` for the next one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// An answer (some bytes) was written: the connection has served a request.
    answered: AtomicBool,
}

impl Activity {
    fn read_after(&self, since: Instant) -> Option<Instant> {
        let nanos = self.last_read.load(Ordering::Acquire).checked_sub(1)?;
        let at = self.base + Duration::from_nanos(nanos);
        (at >= since).then_some(at)
    }
}

/// One connection's header timer (give it to hyper's HTTP/1 builder with `header_read_timeout`
/// set to `head`) and the wrapper its stream must go through, so the timer sees its reads.
pub(crate) fn for_connection<T>(head: Duration, idle: Duration, io: T) -> (HeadTimer, Watched<T>) {
    let activity = Arc::new(Activity {
        base: Instant::now(),
        last_read: AtomicU64::new(0),
        answered: AtomicBool::new(false),
    });
    (
        HeadTimer {
            activity: activity.clone(),
            head,
            idle: idle.max(head),
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
        Box::pin(HeadSleep {
            timer: self.clone(),
            began,
            first_byte: None,
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
    /// The pure rule: `head` from the head's first byte; before any, `head` from the start of a
    /// connection that has answered nothing yet, `idle` from the last answer of one that has.
    fn deadline(&self, answered: bool) -> Instant {
        match self.first_byte {
            Some(first) => first + self.timer.head,
            None if answered => self.began + self.timer.idle,
            None => self.began + self.timer.head,
        }
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this each time the connection is polled while a head is awaited, so a
        // read is seen here the first time it wakes the connection.
        let activity = &self.timer.activity;
        let answered = activity.answered.load(Ordering::Acquire);
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
            let nanos = u64::try_from(self.activity.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.activity
                .last_read
                .store(nanos.saturating_add(1), Ordering::Release);
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
            self.activity.answered.store(true, Ordering::Release);
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
        // The first request: nothing sent yet, 5 s from the connection's start.
        assert_eq!(sleep_at(began, None).deadline(false), began + 5 * second);
        // Between requests: the idle allowance.
        assert_eq!(sleep_at(began, None).deadline(true), began + 90 * second);
        // A head begun 60 s into the wait: 5 s from its first byte, answered before or not.
        let first = began + 60 * second;
        assert_eq!(
            sleep_at(began, Some(first)).deadline(true),
            first + 5 * second
        );
        assert_eq!(
            sleep_at(began, Some(first)).deadline(false),
            first + 5 * second
        );
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
