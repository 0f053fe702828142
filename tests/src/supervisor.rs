//! What systemd does for `deputyd.service`, done by a test (the machines run no systemd): it
//! listens on the notify socket (READY=1, STATUS=, and FDSTORE=1 with the listening sockets
//! deputyd gives it to keep), and starts deputyd as a restart does, with the kept sockets
//! handed over (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::Process;

/// The service manager of one deputyd.
#[derive(Debug)]
pub struct Supervisor {
    socket: PathBuf,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    /// The file descriptor store, by name.
    store: Vec<(String, OwnedFd)>,
    /// Every notification, as sent.
    messages: Vec<String>,
}

impl Supervisor {
    /// Listens on a notify socket in `dir`.
    pub fn new(dir: &Path) -> Self {
        let socket = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&socket).expect("bind the notify socket");
        // Wakes up now and then to see whether the test is over.
        receiver
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Some((text, fds)) = receive(&receiver) {
                    let (lock, changed) = &*shared;
                    let mut state = lock.lock().expect("lock");
                    state.apply(&text, fds);
                    changed.notify_all();
                }
            }
        });
        Self {
            socket,
            state,
            stop,
        }
    }

    /// Starts `binary --config config` as the unit's `ExecStart=` does: with `NOTIFY_SOCKET`,
    /// and with every socket in the store handed over.
    #[allow(unsafe_code)] // Descriptors moved into place for the child: see the safety notes.
    pub fn start(&self, binary: &Path, config: &Path) -> Process {
        let (lock, _) = &*self.state;
        let state = lock.lock().expect("lock");
        // Copied above every descriptor the child is given (0 to 2, then 3 on), so that moving
        // them into place cannot overwrite one still to be moved.
        let high: Vec<OwnedFd> = state
            .store
            .iter()
            .map(|(_, fd)| {
                // SAFETY: fcntl reads an open descriptor and makes a new one.
                let raw =
                    unsafe { nix::libc::fcntl(fd.as_raw_fd(), nix::libc::F_DUPFD_CLOEXEC, 512) };
                assert!(raw >= 0, "dup: {}", std::io::Error::last_os_error());
                // SAFETY: fcntl just made this descriptor, and nothing else owns it.
                unsafe { OwnedFd::from_raw_fd(raw) }
            })
            .collect();
        let names: Vec<&str> = state.store.iter().map(|(n, _)| n.as_str()).collect();
        let mut command = Command::new("/bin/sh");
        // LISTEN_PID must be deputyd's own pid: the shell's, which exec keeps.
        command
            .arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(binary)
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &self.socket)
            // As the unit's Environment= says.
            .env("DEPUTYD_HANDOVER", "1");
        if !high.is_empty() {
            command
                .env("LISTEN_FDS", high.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        let raw: Vec<RawFd> = high.iter().map(|fd| fd.as_raw_fd()).collect();
        // SAFETY: dup2 is async-signal-safe and touches no memory of the process.
        unsafe {
            command.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    let target = 3 + RawFd::try_from(i).expect("few");
                    // dup2 leaves the copy open across exec (no FD_CLOEXEC).
                    if nix::libc::dup2(*fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        drop(state);
        Process::spawn(&mut command)
    }

    /// The names of the sockets in the store.
    pub fn stored(&self) -> Vec<String> {
        let (lock, _) = &*self.state;
        let state = lock.lock().expect("lock");
        state.store.iter().map(|(name, _)| name.clone()).collect()
    }

    /// How many notifications came so far.
    pub fn messages(&self) -> usize {
        self.state.0.lock().expect("lock").messages.len()
    }

    /// Waits for a notification after the first `since` that contains `needle`.
    pub fn wait_for(&self, needle: &str, since: usize, timeout: Duration) -> String {
        let (lock, changed) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().expect("lock");
        loop {
            if let Some(found) = state
                .messages
                .iter()
                .skip(since)
                .find(|m| m.contains(needle))
            {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification with {needle:?} within {timeout:?}: {:#?}",
                state.messages
            );
            state = changed.wait_timeout(state, left).expect("lock").0;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl State {
    /// What systemd does with one notification.
    fn apply(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_owned)
        };
        let name = field("FDNAME=").unwrap_or_else(|| "stored".to_owned());
        if field("FDSTORE=").as_deref() == Some("1") {
            for fd in fds {
                self.store.push((name.clone(), fd));
            }
        } else if field("FDSTOREREMOVE=").as_deref() == Some("1") {
            self.store.retain(|(n, _)| *n != name);
        }
        self.messages.push(text.to_owned());
    }
}

/// One notification and the descriptors it carries, or `None` on a timeout.
#[allow(unsafe_code)] // Descriptors the kernel passed: see the safety note.
fn receive(socket: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buffer = [0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let mut fds = Vec::new();
    let length = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .ok()?;
        for control in message.cmsgs().ok()? {
            if let ControlMessageOwned::ScmRights(received) = control {
                // SAFETY: the kernel just installed these descriptors for this process.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        message.bytes
    };
    Some((String::from_utf8_lossy(&buffer[..length]).into_owned(), fds))
}
