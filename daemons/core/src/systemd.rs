//! systemd integration: readiness and status notifications, the watchdog, inherited sockets.
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`).

use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::time::Duration;

use sd_notify::NotifyState;

/// `READY=1` plus a status line.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A `STATUS=` line that `systemctl status` shows.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

pub fn notify_stopping(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn notify_watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// The interval at which to ping the watchdog (half the configured timeout), when enabled.
///
/// Follows sd_watchdog_enabled(3): `WATCHDOG_USEC` enables it; `WATCHDOG_PID`, when set, must
/// name this process (the sd-notify crate also requires it to be set, which systemd always
/// does, but the man page does not).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The listening TCP socket passed by systemd socket activation (`LISTEN_FDS`): the one named
/// `name` when names are given (`FileDescriptorName=`), else the first one.
pub fn inherited_listener(name: &str) -> std::io::Result<Option<TcpListener>> {
    let fds: Vec<(i32, String)> = match sd_notify::listen_fds_with_names(true) {
        Ok(it) => it.collect(),
        Err(_) => return Ok(None),
    };
    if fds.is_empty() {
        return Ok(None);
    }
    let fd = fds
        .iter()
        .find(|(_, n)| n == name)
        .or_else(|| fds.first())
        .map(|(fd, _)| *fd)
        .expect("non-empty");
    // SAFETY: systemd passed this descriptor to us for exclusive use; we take ownership once.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}
