//! `splicegate upgrade`: replace the running gateway with a new process of (usually) a newly
//! installed binary, refusing no connection.
//!
//! It asks the gateway on the takeover socket who it is (`info`: pid, configuration file, pid
//! file), starts `<binary> run --takeover <socket> --config <its file> [--pid-file <its file>]`
//! in a process group of its own (so it outlives this command), and waits until the takeover
//! socket answers with the new process's pid: by then the old process has stopped accepting and
//! is draining. If the new process exits first, or nothing changes within the timeout, the
//! upgrade failed and the old process keeps serving (it never stops before the new one
//! confirmed).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::takeover::{self, Message, TakeoverError};

/// How often the takeover socket is asked who serves it.
const POLL: Duration = Duration::from_millis(100);
/// How long one `info` exchange may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// What `splicegate upgrade` was asked to do.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// The running gateway's `takeover_socket`.
    pub takeover_socket: PathBuf,
    /// The binary to start.
    pub binary: PathBuf,
    /// How long to wait for the new process to take over.
    pub timeout: Duration,
    /// `--log-format` for the new process, if given.
    pub log_format: Option<String>,
}

/// Why the upgrade failed (the old process still serves).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no gateway answers on {path}: {source}")]
    NoGateway {
        path: PathBuf,
        source: TakeoverError,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process (pid {pid}) exited with {status} before it took over; pid {old} keeps serving")]
    Exited {
        pid: u32,
        old: u32,
        status: ExitStatus,
    },
    #[error(
        "the new process (pid {pid}) did not take over within {timeout:?}; pid {old} serves \
         until it does (the new process gives up after limits.takeover_timeout)"
    )]
    Timeout {
        pid: u32,
        old: u32,
        timeout: Duration,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The outcome of a successful upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Upgraded {
    pub old: u32,
    pub new: u32,
}

/// Run the upgrade.
pub fn upgrade(o: &UpgradeOptions) -> Result<Upgraded, UpgradeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UpgradeError::Runtime)?;
    rt.block_on(run(o))
}

async fn who(path: &Path) -> Result<(u32, Option<PathBuf>, Option<PathBuf>), TakeoverError> {
    match takeover::info(path, INFO_TIMEOUT).await? {
        Message::About {
            pid,
            config,
            pid_file,
        } => Ok((pid, config, pid_file)),
        other => Err(TakeoverError::Unexpected(format!("{other:?}"))),
    }
}

// The new process outlives this command on purpose; it is waited for only while it may fail.
#[allow(clippy::zombie_processes)]
async fn run(o: &UpgradeOptions) -> Result<Upgraded, UpgradeError> {
    let path = &o.takeover_socket;
    let (old, config, pid_file) = who(path).await.map_err(|source| UpgradeError::NoGateway {
        path: path.clone(),
        source,
    })?;
    let mut cmd = Command::new(&o.binary);
    cmd.arg("run").arg("--takeover").arg(path);
    if let Some(c) = &config {
        cmd.arg("--config").arg(c);
    }
    if let Some(p) = &pid_file {
        cmd.arg("--pid-file").arg(p);
    }
    if let Some(f) = &o.log_format {
        cmd.arg("--log-format").arg(f);
    }
    cmd.stdin(Stdio::null()).process_group(0);
    let mut child = cmd.spawn().map_err(|source| UpgradeError::Spawn {
        binary: o.binary.clone(),
        source,
    })?;
    let new = child.id();
    let deadline = Instant::now() + o.timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::Exited {
                pid: new,
                old,
                status,
            });
        }
        if let Ok((pid, _, _)) = who(path).await {
            if pid == new {
                return Ok(Upgraded { old, new });
            }
        }
        if Instant::now() >= deadline {
            // Not killed: it may be in the middle of the hand-over, and killing it then would
            // leave nobody accepting. On its own it gives up after `limits.takeover_timeout`.
            return Err(UpgradeError::Timeout {
                pid: new,
                old,
                timeout: o.timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
