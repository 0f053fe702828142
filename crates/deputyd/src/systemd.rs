//! systemd integration: `Type=notify` readiness, status lines and watchdog pings.
//!
//! Every call is a no-op when deputyd does not run under systemd (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd deputyd is ready, with a one-line status.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line `systemctl status deputyd` shows.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tells systemd deputyd is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// How often to ping the watchdog, if systemd asked for one (`WatchdogSec=`): at half the
/// timeout, so one late ping does not get the daemon killed.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Pings the watchdog.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
