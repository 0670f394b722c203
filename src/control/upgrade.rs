//! `splicegate upgrade`: replace the running gateway with a new process of (usually) a newly
//! installed binary, refusing no connection.
//!
//! It asks the gateway on the takeover socket who it is (`info`), then asks it to start its
//! successor (`upgrade`): the running process starts `<its binary path> run --takeover <socket>`
//! with its own configuration file, pid file and log format, as its child. Started that way,
//! the new process has the service's user, sandbox, environment (`NOTIFY_SOCKET`,
//! `JOURNAL_STREAM`) and stderr, and under systemd it runs in the service's cgroup, so systemd
//! accepts it as the new main process (`MAINPID=`, sent by the old process). This command then
//! waits until the takeover socket answers with the new process's pid: by then the old
//! process has stopped accepting and is draining. If the new process exits first, or nothing
//! changes within the timeout, the upgrade failed and the old process keeps serving (it never
//! stops before the new one confirmed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::takeover::{self, Channel, Message, TakeoverError};

/// How often the takeover socket is asked who serves it.
const POLL: Duration = Duration::from_millis(100);
/// How long one exchange on the takeover socket may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What `splicegate upgrade` was asked to do.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// The running gateway's `takeover_socket`.
    pub takeover_socket: PathBuf,
    /// The binary to start; `None`: the path the running gateway was started from.
    pub binary: Option<PathBuf>,
    /// How long to wait for the new process to take over.
    pub timeout: Duration,
}

/// Why the upgrade failed (the old process still serves).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no gateway answers on {path}: {source}")]
    NoGateway {
        path: PathBuf,
        source: TakeoverError,
    },
    #[error("the gateway (pid {old}) could not start the new process: {error}")]
    Spawn { old: u32, error: String },
    #[error("the new process (pid {pid}) exited before it took over; pid {old} keeps serving (see its log)")]
    Exited { pid: u32, old: u32 },
    #[error(
        "the new process (pid {pid}) did not take over within {timeout:?}; pid {old} serves \
         until it does (the new process gives up after limits.takeover_timeout)"
    )]
    Timeout {
        pid: u32,
        old: u32,
        timeout: Duration,
    },
    #[error(transparent)]
    Protocol(#[from] TakeoverError),
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

async fn who(path: &Path) -> Result<u32, TakeoverError> {
    match takeover::info(path, ASK_TIMEOUT).await? {
        Message::About { pid, .. } => Ok(pid),
        other => Err(TakeoverError::Unexpected(format!("{other:?}"))),
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

async fn run(o: &UpgradeOptions) -> Result<Upgraded, UpgradeError> {
    let path = &o.takeover_socket;
    let old = who(path).await.map_err(|source| UpgradeError::NoGateway {
        path: path.clone(),
        source,
    })?;
    let chan = Channel::connect(path)?;
    chan.send(
        &Message::Upgrade {
            binary: o.binary.clone(),
        },
        &[],
    )
    .await?;
    let new = match chan.recv(ASK_TIMEOUT).await?.0 {
        Message::Spawned { pid } => pid,
        Message::Failed { error } => return Err(UpgradeError::Spawn { old, error }),
        other => return Err(TakeoverError::Unexpected(format!("{other:?}")).into()),
    };
    drop(chan);
    let deadline = Instant::now() + o.timeout;
    loop {
        if let Ok(pid) = who(path).await {
            if pid == new {
                return Ok(Upgraded { old, new });
            }
        }
        if !alive(new) {
            return Err(UpgradeError::Exited { pid: new, old });
        }
        if Instant::now() >= deadline {
            // Not stopped: it may be in the middle of the hand-over, and stopping it then would
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
