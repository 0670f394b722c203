//! Telling a running gateway to reload after an edit: SIGHUP to the pid in its pid file, or
//! `systemctl reload` when systemd runs the unit. The gateway also watches its file with
//! inotify, so this is belt and braces — but it makes the CLI's report exact.

use std::path::Path;
use std::process::{Command, Stdio};

/// The systemd unit the package installs.
pub const UNIT: &str = "splicegate";

/// What was done to get the change applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// SIGHUP sent to this pid, read from the pid file.
    Signalled { pid: u32 },
    /// `systemctl reload splicegate` succeeded.
    Systemd,
    /// No running gateway found.
    NotRunning,
    /// A gateway was found but could not be told.
    Failed(String),
    /// `--no-reload`.
    Skipped,
}

impl Reload {
    /// `"sighup"`, `"systemd"`, `"not-running"`, `"failed"`, `"skipped"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Reload::Signalled { .. } => "sighup",
            Reload::Systemd => "systemd",
            Reload::NotRunning => "not-running",
            Reload::Failed(_) => "failed",
            Reload::Skipped => "skipped",
        }
    }

    pub fn describe(&self, pid_file: &Path) -> String {
        match self {
            Reload::Signalled { pid } => format!(
                "reload: sent SIGHUP to splicegate (pid {pid}, from {})",
                pid_file.display()
            ),
            Reload::Systemd => format!("reload: systemctl reload {UNIT}"),
            Reload::NotRunning => {
                "reload: no running splicegate found; the change applies at its next start".into()
            }
            Reload::Failed(e) => format!("reload: could not signal the running gateway: {e}"),
            Reload::Skipped => "reload: skipped (--no-reload)".into(),
        }
    }
}

/// Signal the gateway named by `pid_file`, else reload the systemd unit if it is active.
pub fn reload(pid_file: &Path) -> Reload {
    if let Some(pid) = running_pid(pid_file) {
        return match signal_hup(pid) {
            Ok(()) => Reload::Signalled { pid },
            Err(e) => Reload::Failed(format!("kill -HUP {pid}: {e}")),
        };
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return Reload::NotRunning;
    }
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", UNIT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !active {
        return Reload::NotRunning;
    }
    match Command::new("systemctl")
        .args(["reload", UNIT])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Reload::Systemd,
        Ok(o) => Reload::Failed(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Reload::Failed(format!("cannot run systemctl: {e}")),
    }
}

/// Send SIGHUP to `pid` directly (no `kill` binary to find or fork).
fn signal_hup(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("not a process id"))?;
    Ok(rustix::process::kill_process(
        pid,
        rustix::process::Signal::HUP,
    )?)
}

/// The pid in `pid_file`, if that process exists and is a splicegate (a stale file after a
/// crash, its pid reused by something else, is ignored).
fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "splicegate").then_some(pid)
}
