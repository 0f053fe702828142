//! The writer of a node's trail.
//!
//! A record is one `write(2)` of one line, under a lock that also keeps the chain (its `seq`
//! and the hash of the line before). It is in the file (the page cache) before the call's
//! answer is handed on, so `kill -9` loses none; a thread `fsync`s at most every few
//! milliseconds when something was written (group commit), so a power loss loses at most
//! that. A write that fails is undone (the file is cut back to its last whole line) and
//! counted as lost; [`Trail::available`] then says whether calls may go on.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::Signer;
use crate::record::{Event, Record};
use crate::{FILE, GENESIS, hash};

/// How often written records are flushed to the disk, at most.
const SYNC_EVERY: Duration = Duration::from_millis(5);
/// How often a trail that could not be written is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// When checkpoints are written: after so many records, or so long after the last one when
/// records were written since (`Trail::checkpoint_if_due`, called by a timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoints {
    /// Records between two checkpoints, at most.
    pub every_records: u64,
    /// Time between two checkpoints, at most (when records were written).
    pub every: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            every_records: 1000,
            every: Duration::from_secs(10),
        }
    }
}

/// What deputyd does when the trail cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Refuse calls (`audit-unavailable`) until it can be written again: nothing happens that
    /// is not recorded.
    #[default]
    Refuse,
    /// Serve on, and count the records lost (`deputy_audit_records_lost_total`, and the next
    /// `opened` record).
    Serve,
}

/// The trail cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The directory or file cannot be made, opened or read.
    #[error(
        "cannot open the audit trail in {dir}: {message}; give deputyd a directory it may \
         write ([audit] dir, by default the state directory's audit/)"
    )]
    Open {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// A record could not be written (the disk is full, the file went away).
    #[error("the audit record could not be written: {0}")]
    Write(String),
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// A failed write left a partial line that could not be cut off yet.
    cut_pending: bool,
    /// The length of the file up to its last whole line.
    len: u64,
    seq: u64,
    prev: String,
}

/// A node's audit trail, open for appending.
#[derive(Debug)]
pub struct Trail {
    writer: Mutex<Writer>,
    dir: PathBuf,
    on_failure: OnFailure,
    healthy: AtomicBool,
    lost: AtomicU64,
    dirty: Arc<AtomicBool>,
    /// Wakes the syncing thread when the first record of a batch is written.
    wake: Arc<Condvar>,
    /// The file being written, as the syncing thread flushes it and knows it (its inode):
    /// replaced when the trail rotates.
    current: Arc<Mutex<(File, u64)>>,
    /// A file that would grow past this many bytes is closed (with a signed checkpoint) and
    /// renamed `audit.SEQ.jsonl` (SEQ its last record's); the chain goes on in a new one.
    rotate_bytes: AtomicU64,
    /// Where each record is also sent, as a syslog message (RFC 5424 over UDP), if anywhere.
    export: Mutex<Option<std::net::UdpSocket>>,
    /// The file at the trail's path is no longer the one being written (removed, renamed).
    replaced: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The host's name, for exported messages.
    hostname: String,
    last_try: Mutex<Instant>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpoints: Checkpoints,
    signer: Mutex<Option<Arc<dyn Signer>>>,
    /// Told when a checkpoint is due by count, if someone signs them in the background (else
    /// the record that makes it due signs it).
    checkpoint_waker: Mutex<Option<Waker>>,
    /// Records since the last checkpoint, and when it was written.
    since_checkpoint: AtomicU64,
    last_checkpoint: Mutex<Instant>,
}

impl Trail {
    /// Opens the trail in `dir` (made, mode 0700, if need be), continuing the chain of what is
    /// there; a partial last line (a crash during a write) is cut off first.
    pub fn open(
        dir: &Path,
        on_failure: OnFailure,
        checkpoints: Checkpoints,
    ) -> Result<Arc<Self>, AuditError> {
        let fail = |message: String| AuditError::Open {
            dir: dir.to_owned(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(format!("cannot restrict the directory: {e}")))?;
        }
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            tracing::warn!(file = %path.display(), bytes = text.len() - whole,
                "the audit trail ended in a partial record (deputyd stopped during a write); cut off");
            file.set_len(whole as u64)
                .map_err(|e| fail(format!("cannot cut the partial record: {e}")))?;
        }
        // An empty file after a rotation continues the chain of the last rotated one.
        let rotated;
        let last_text = if whole == 0 {
            let files = crate::files(dir).map_err(|e| fail(e.to_string()))?;
            rotated = match files.iter().rev().find(|f| **f != path) {
                Some(last) => std::fs::read(last).map_err(|e| fail(e.to_string()))?,
                None => Vec::new(),
            };
            &rotated[..]
        } else {
            &text[..whole]
        };
        let (seq, prev) = match last_text.split(|b| *b == b'\n').rfind(|l| !l.is_empty()) {
            Some(last) => {
                let record: Record = serde_json::from_slice(last).map_err(|e| {
                    fail(format!(
                        "its last record cannot be read ({e}); check it with `deputy audit \
                         verify`, and move the file aside to start a new trail"
                    ))
                })?;
                (record.seq, hash(last))
            }
            None => (0, GENESIS.to_owned()),
        };
        file.seek(SeekFrom::End(0))
            .map_err(|e| fail(e.to_string()))?;
        // One deputyd per trail: two would interleave their chains.
        file.try_lock().map_err(|e| {
            fail(format!(
                "{} is in use by another process ({e}); run one deputyd per [audit] dir",
                path.display()
            ))
        })?;
        let current = {
            use std::os::unix::fs::MetadataExt as _;
            let syncing = file.try_clone().map_err(|e| fail(e.to_string()))?;
            let inode = syncing.metadata().map_err(|e| fail(e.to_string()))?.ino();
            Arc::new(Mutex::new((syncing, inode)))
        };
        let dirty = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Condvar::new());
        let replaced = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let syncer = {
            let watched = sync::Watched {
                current: current.clone(),
                path: path.clone(),
                dirty: dirty.clone(),
                wake: wake.clone(),
                replaced: replaced.clone(),
                stop: stop.clone(),
            };
            std::thread::Builder::new()
                .name("audit-sync".into())
                .spawn(move || watched.sync_until_stopped())
                .map_err(|e| fail(format!("cannot start its syncing thread: {e}")))?
        };
        let trail = Arc::new(Self {
            writer: Mutex::new(Writer {
                file,
                cut_pending: false,
                len: whole as u64,
                seq,
                prev,
            }),
            dir: dir.to_owned(),
            on_failure,
            healthy: AtomicBool::new(true),
            lost: AtomicU64::new(0),
            dirty,
            wake,
            current,
            rotate_bytes: AtomicU64::new(u64::MAX),
            export: Mutex::new(None),
            replaced,
            stop,
            hostname: hostname(),
            last_try: Mutex::new(Instant::now()),
            syncer: Mutex::new(Some(syncer)),
            checkpoints,
            signer: Mutex::new(None),
            checkpoint_waker: Mutex::new(None),
            since_checkpoint: AtomicU64::new(0),
            last_checkpoint: Mutex::new(Instant::now()),
        });
        trail
            .write(|_, _| trail.opened_json(), false)
            .map_err(|e| fail(e.to_string()))?;
        Ok(trail)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What deputyd does when the trail cannot be written.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Records lost since the trail was opened.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Appends `event`. A failure is counted as lost (and the file left at its last whole
    /// line). The first record written after failures is followed by an `opened` record that
    /// says how many were lost.
    pub fn append(&self, event: Event) -> Result<(), AuditError> {
        // Serialized before the lock: only the envelope (seq, time, prev) is made under it.
        let body = serde_json::to_string(&event).map_err(|e| {
            self.lost.fetch_add(1, Ordering::Relaxed);
            AuditError::Write(e.to_string())
        })?;
        self.write(|_, _| Ok(body), true)?;
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(dir = %self.dir.display(), lost = self.lost(),
                "the audit trail is written again");
            let _ = self.write(|_, _| self.opened_json(), false);
        }
        let since = self.since_checkpoint.fetch_add(1, Ordering::AcqRel) + 1;
        if since >= self.checkpoints.every_records {
            let waker = self
                .checkpoint_waker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match waker {
                Some(Waker(wake)) => wake(),
                None => self.checkpoint(),
            }
        }
        Ok(())
    }

    /// Has checkpoints due by count signed in the background: `wake` is called (it must not
    /// block) and whoever it wakes calls [`checkpoint_if_due`](Self::checkpoint_if_due), off
    /// the calling thread of the record that made one due (signing takes a while).
    pub fn checkpoint_in_background(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *self
            .checkpoint_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Waker(wake));
    }

    /// Signs checkpoints with `signer` from now on (the node's SVID, once deputyd holds it).
    pub fn set_signer(&self, signer: Arc<dyn Signer>) {
        *self.signer.lock().unwrap_or_else(|p| p.into_inner()) = Some(signer);
    }

    /// Writes a checkpoint if one is due: by count, or, when records were written since the
    /// last, by time.
    pub fn checkpoint_if_due(&self) {
        let since = self.since_checkpoint.load(Ordering::Acquire);
        let by_time = self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= self.checkpoints.every;
        if since >= self.checkpoints.every_records || (by_time && since > 0) {
            self.checkpoint();
        }
    }

    /// Writes a checkpoint now (nothing without a signer: the trail says so by having none).
    pub fn checkpoint(&self) {
        let Some(signer) = self
            .signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let iat = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(i64::MAX);
        let written = self.write(
            |seq, prev| {
                let upto = seq - 1;
                let jws = signer.sign(upto, prev, iat)?;
                serde_json::to_string(&Event::Checkpoint { upto, jws }).map_err(|e| e.to_string())
            },
            false,
        );
        match written {
            Ok(()) => {
                self.since_checkpoint.store(0, Ordering::Release);
                *self
                    .last_checkpoint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "an audit checkpoint could not be written"),
        }
    }

    fn opened_json(&self) -> Result<String, String> {
        serde_json::to_string(&Event::Opened {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            lost: self.lost(),
        })
        .map_err(|e| e.to_string())
    }

    /// Writes the event (as JSON) `make` gives for the record's `seq` and `prev`; a failure
    /// marks the trail unwritable and, with `counted`, is a record lost (a probe's failure is
    /// not).
    fn write(
        &self,
        make: impl FnOnce(u64, &str) -> Result<String, String>,
        counted: bool,
    ) -> Result<(), AuditError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Taken under the lock: times rise with seq.
        let time = now_rfc3339();
        // A failed write that could not be cut back must be, before anything follows it.
        if writer.cut_pending {
            let len = writer.len;
            writer
                .file
                .set_len(len)
                .map_err(|e| AuditError::Write(format!("cannot cut a partial record: {e}")))?;
            writer.cut_pending = false;
        }
        if self.replaced.load(Ordering::Acquire) {
            self.lost.fetch_add(u64::from(counted), Ordering::Relaxed);
            self.healthy.store(false, Ordering::Release);
            return Err(AuditError::Write(format!(
                "{} was removed or replaced while deputyd wrote it; restart deputyd to open \
                 the trail again (the records since are lost)",
                self.dir.join(FILE).display()
            )));
        }
        let body = make(writer.seq + 1, &writer.prev).map_err(AuditError::Write)?;
        // Only a record of what happened starts a new file (a checkpoint or an `opened` record
        // was made for the file as it is).
        if counted
            && writer.len > 0
            && writer.len + body.len() as u64 + 200 > self.rotate_bytes.load(Ordering::Relaxed)
        {
            self.rotate(&mut writer, &time)?;
        }
        let seq = writer.seq + 1;
        let mut line = envelope(seq, &time, &writer.prev, &body)?;
        let digest = hash(line.as_bytes());
        line.push('\n');
        if let Err(e) = writer.file.write_all(line.as_bytes()) {
            // A part may have gone in: the file is cut back to its last whole line.
            let len = writer.len;
            writer.cut_pending = writer.file.set_len(len).is_err();
            drop(writer);
            self.lost.fetch_add(u64::from(counted), Ordering::Relaxed);
            if self.healthy.swap(false, Ordering::AcqRel) {
                tracing::error!(dir = %self.dir.display(), error = %e,
                    on_failure = ?self.on_failure, "the audit trail cannot be written");
            }
            return Err(AuditError::Write(e.to_string()));
        }
        writer.len += line.len() as u64;
        writer.seq = seq;
        writer.prev = digest;
        // Sent in order (under the chain's lock), the record whole: a collector can check the
        // chain as `verify` does. A datagram lost is not a record lost: the file has it.
        if let Some(socket) = &*self.export.lock().unwrap_or_else(|p| p.into_inner()) {
            let message = format!(
                "<110>1 {time} {} deputyd - audit - {}",
                self.hostname,
                line.trim_end()
            );
            let _ = socket.send(message.as_bytes());
        }
        drop(writer);
        // The syncing thread is woken once per batch, not per record.
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Sends every record from now on to `collector` too, as an RFC 5424 syslog message over
    /// UDP (facility `log audit`, the record's JSON line as the message).
    pub fn set_export(&self, collector: std::net::SocketAddr) -> std::io::Result<()> {
        let local: std::net::SocketAddr = if collector.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = std::net::UdpSocket::bind(local)?;
        socket.connect(collector)?;
        socket.set_nonblocking(true)?;
        *self.export.lock().unwrap_or_else(|p| p.into_inner()) = Some(socket);
        Ok(())
    }

    /// Rotates the trail when a file would grow past `bytes`.
    pub fn set_rotation(&self, bytes: u64) {
        self.rotate_bytes.store(bytes.max(4096), Ordering::Relaxed);
    }

    /// Closes the current file with a signed checkpoint (if the node can sign), renames it
    /// `audit.SEQ.jsonl`, and opens a new one in which the chain goes on.
    fn rotate(&self, writer: &mut Writer, time: &str) -> Result<(), AuditError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            AuditError::Write(format!("cannot rotate the audit trail ({what}): {e}"))
        };
        let signer = self
            .signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(signer) = signer {
            let (seq, upto) = (writer.seq + 1, writer.seq);
            let iat = time::OffsetDateTime::now_utc().unix_timestamp();
            let jws = signer
                .sign(upto, &writer.prev, iat)
                .map_err(|e| failed("signing its checkpoint", &e))?;
            let body = serde_json::to_string(&Event::Checkpoint { upto, jws })
                .map_err(|e| failed("its checkpoint", &e))?;
            let mut line = envelope(seq, time, &writer.prev, &body)?;
            let digest = hash(line.as_bytes());
            line.push('\n');
            writer
                .file
                .write_all(line.as_bytes())
                .map_err(|e| failed("writing its checkpoint", &e))?;
            writer.len += line.len() as u64;
            writer.seq = seq;
            writer.prev = digest;
        }
        writer
            .file
            .sync_data()
            .map_err(|e| failed("flushing it", &e))?;
        let path = self.dir.join(FILE);
        let closed = self.dir.join(format!("audit.{:020}.jsonl", writer.seq));
        // Held from the rename until the new file is known: the syncing thread must not take
        // the rename for a removal.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::rename(&path, &closed).map_err(|e| failed("renaming it", &e))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| failed("opening a new file", &e))?;
        file.try_lock()
            .map_err(|e| failed("locking the new file", &e))?;
        use std::os::unix::fs::MetadataExt as _;
        let syncing = file.try_clone().map_err(|e| failed("the new file", &e))?;
        let inode = syncing
            .metadata()
            .map_err(|e| failed("the new file", &e))?
            .ino();
        *current = (syncing, inode);
        drop(current);
        writer.file = file;
        writer.len = 0;
        tracing::info!(closed = %closed.display(), "the audit trail rotated");
        Ok(())
    }

    /// Whether calls may go on: the trail is being written, or the operator chose to serve on
    /// without it. A trail that failed is tried again at most once a second (an `opened`
    /// record saying how many were lost).
    pub fn available(&self) -> bool {
        if self.healthy.load(Ordering::Acquire) || self.on_failure == OnFailure::Serve {
            return true;
        }
        {
            let mut last_try = self.last_try.lock().unwrap_or_else(|p| p.into_inner());
            if last_try.elapsed() < RETRY_EVERY {
                return false;
            }
            *last_try = Instant::now();
        }
        let resumed = self.write(|_, _| self.opened_json(), false).is_ok();
        if resumed {
            self.healthy.store(true, Ordering::Release);
            tracing::info!(dir = %self.dir.display(), lost = self.lost(),
                "the audit trail is written again");
        }
        resumed
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        if let Some(syncer) = self.syncer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = syncer.join();
        }
    }
}

/// The host's name (`-`, as RFC 5424 says, when it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "-".to_owned())
}

/// A record's line (without its newline): the envelope, then the event's own fields, which
/// is what a [`Record`] reads back.
/// Wakes whoever signs checkpoints in the background.
#[derive(Clone)]
struct Waker(Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

fn envelope(seq: u64, time: &str, prev: &str, body: &str) -> Result<String, AuditError> {
    let Some(fields) = body.strip_prefix('{') else {
        return Err(AuditError::Write("an event is not a JSON object".into()));
    };
    let mut line = String::with_capacity(body.len() + 160);
    line.push_str("{\"seq\":");
    line.push_str(&seq.to_string());
    line.push_str(",\"time\":\"");
    line.push_str(time);
    line.push_str("\",\"prev\":\"");
    line.push_str(prev);
    line.push_str("\",");
    line.push_str(fields);
    Ok(line)
}

/// Now, as RFC 3339 in UTC with nine fraction digits always: every record's time has the
/// same width, so their text sorts as their times do.
fn now_rfc3339() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .unwrap_or_default()
}

mod sync;

#[cfg(test)]
mod tests;
