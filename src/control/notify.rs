//! systemd notifications (`Type=notify`): READY, RELOADING (with MONOTONIC_USEC), STOPPING,
//! STATUS lines and the watchdog.
//!
//! Everything is a no-op unless `NOTIFY_SOCKET` is set, so the same binary runs under systemd, in
//! a container or from a shell. A failed send is logged once at debug level and otherwise
//! ignored: the service manager being unreachable must never stop the gateway.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use sd_notify::NotifyState;

/// The link to the service manager.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    warned: AtomicBool,
}

impl Notifier {
    /// Enabled when the service manager passed a notification socket.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            warned: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the watchdog is on for this
    /// process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    }

    /// Start-up is complete (after event 101).
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins; [`Notifier::ready`] must follow when it is done (applied or refused).
    pub fn reloading(&self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// The drain begins.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A takeover: `pid` is the service's main process from now on (with `NotifyAccess=main`
    /// only the main process may say so; the shipped unit sets `NotifyAccess=all` so the new
    /// process's own notifications are accepted too).
    pub fn main_pid(&self, pid: u32, status: &str) {
        self.send(&[NotifyState::MainPid(pid), NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            if !self.warned.swap(true, Relaxed) {
                tracing::debug!(error = %e, "sd_notify failed");
            }
        }
    }
}
