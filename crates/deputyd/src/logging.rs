//! Logs off the request path: events are formatted on the calling thread and queued (bounded)
//! to a writer thread, so a slow stderr (a stalled journal, a full pipe) never holds a call.
//! When the queue is full a line is dropped, counted (`deputy_log_lines_dropped_total`, and
//! `/status` `log.dropped_lines`), never silently.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines queued for the writer at most; past it, lines are dropped and counted.
pub const LOG_QUEUE_LINES: usize = 64 * 1024;

/// Counter: log lines dropped because the writer fell behind.
pub const LOG_LINES_DROPPED: &str = "deputy_log_lines_dropped_total";

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The writer that keeps the log off the request path, and the guard that flushes it on drop.
pub fn queued<W: std::io::Write + Send + 'static>(
    sink: W,
    lines: usize,
) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(lines)
        .thread_name("deputyd-log")
        .finish(sink)
}

/// Logs to stderr, text or JSON lines, filtered by `RUST_LOG` (default `info`), through the
/// queue. Keep the guard until the process ends: dropping it flushes what is queued.
pub fn init_logging(json: bool) -> Option<WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The Vault client's own request spans log each failed request at ERROR without
        // saying what failed; deputyd says it (with Vault's reason) in its own lines.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustify=off,vaultrs=off"));
    let (writer, guard) = queued(std::io::stderr(), LOG_QUEUE_LINES);
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    // A second call (tests, or `deputy dev` in one process) keeps the first subscriber.
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if installed.is_err() {
        return None;
    }
    let _ = DROPPED.set(counter);
    Some(guard)
}

/// Log lines dropped so far because the writer fell behind (0 before logging starts).
pub fn dropped_lines() -> u64 {
    let dropped = DROPPED.get().map_or(0, ErrorCounter::dropped_lines) as u64;
    metrics::counter!(LOG_LINES_DROPPED).absolute(dropped);
    dropped
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::mpsc;

    use super::*;

    /// A sink that blocks every write until the test lets it go: a stalled journal.
    struct Stalled(mpsc::Receiver<()>);

    impl std::io::Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_writer_never_blocks_the_caller_and_every_drop_is_counted() {
        let (release, stalled) = mpsc::channel();
        let (mut writer, guard) = queued(Stalled(stalled), 4);
        // A writer that blocked would hang here: every write returns at once.
        for n in 0..100 {
            writer
                .write_all(format!("line {n}\n").as_bytes())
                .expect("queued or dropped");
        }
        let dropped = writer.error_counter().dropped_lines();
        // The writer thread holds one line, the queue four: the rest were dropped and counted.
        assert!((90..=96).contains(&dropped), "{dropped} dropped");
        drop(release);
        drop(guard);
    }
}
