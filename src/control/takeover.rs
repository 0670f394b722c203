//! Takeover: a new process (`splicegate run --takeover PATH`) receives the running gateway's
//! listening sockets over a Unix socket and starts accepting on them before the old process
//! stops, so an upgrade refuses no connection and resets none.
//!
//! # Protocol
//! One `SOCK_SEQPACKET` connection (message boundaries kept, so each message is one JSON
//! document with the file descriptors it carries as `SCM_RIGHTS`):
//! 1. new -> old: `{"type":"takeover","pid":N}`. (Or `{"type":"info"}`: the old one answers
//!    `about` with its pid, configuration path and pid file; `splicegate upgrade` uses it to
//!    see who serves. Or `{"type":"upgrade"}`: the old process starts the new one itself, as
//!    its child, so under systemd it runs in the service's cgroup with the same user,
//!    sandbox, environment and stderr, and may become the service's main process.)
//! 2. old -> new: `sockets` messages, each with at most [`MAX_FDS`] descriptors and their
//!    address and kind (`listen`, `metrics`, `health`; `shared` for a socket every worker
//!    accepts from, such as one systemd passed), the last with `more: false`. The old process
//!    sends duplicates: it keeps accepting on its own descriptors meanwhile.
//! 3. The new process starts its workers on them (binding what its configuration lists and
//!    the old one did not have, closing what it no longer lists), then sends `ready`.
//! 4. The old process stops accepting (closes its listener descriptors; the sockets live on in
//!    the new process, so clients queued on them are not lost), tells systemd the new
//!    `MAINPID`, answers `done` and drains its tunnels within `drain_timeout`.
//!
//! The new process waits at most `limits.takeover_timeout` for each message and the old one
//! at most that long for `ready`: a new process that dies or hangs before `ready` leaves the
//! old one serving (event 400, `reason="takeover_failed"`).
//!
//! # The socket
//! `takeover_socket` (mode 0600, only the same user or root may connect; the peer's uid is
//! checked too). A process binds it under a temporary name and renames it into place, so the
//! new process replaces the old one's path atomically; at exit the path is removed only if it
//! is still this process's socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::placed::{self, Placed};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// Descriptors per `sockets` message (the kernel allows 253 per message).
pub const MAX_FDS: usize = 64;
/// The longest message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

/// What a passed socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Listen,
    Metrics,
    Health,
}

/// One passed descriptor's description.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketMeta {
    pub addr: SocketAddr,
    pub kind: Kind,
    #[serde(default)]
    pub shared: bool,
}

/// The protocol's messages.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Takeover {
        pid: u32,
    },
    Info,
    About {
        pid: u32,
        config: Option<PathBuf>,
        pid_file: Option<PathBuf>,
    },
    Sockets {
        sockets: Vec<SocketMeta>,
        more: bool,
    },
    Ready {
        pid: u32,
    },
    Done,
    Busy,
    /// `splicegate upgrade`: start a new process (this binary's path, or `binary`) that takes
    /// over; answered with `spawned` or `failed`.
    Upgrade {
        binary: Option<PathBuf>,
    },
    Spawned {
        pid: u32,
    },
    Failed {
        error: String,
    },
}

/// What went wrong on the takeover socket.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("takeover socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("takeover socket {path}: cannot create its directory: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("takeover socket {path} is in use by a running gateway")]
    InUse { path: PathBuf },
    #[error("takeover: {0}")]
    Io(#[from] io::Error),
    #[error("takeover: the peer closed the connection")]
    Closed,
    #[error("takeover: no answer within {0:?}")]
    Timeout(Duration),
    #[error("takeover: message too large or too many descriptors")]
    Truncated,
    #[error("takeover: malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("takeover: {sent} descriptors for {described} sockets")]
    Mismatch { sent: usize, described: usize },
    #[error("takeover: unexpected message {0}")]
    Unexpected(String),
    #[error("takeover: the running gateway is already handing over to another process")]
    Busy,
    #[error("takeover: peer uid {0} is neither root nor this process's user")]
    Peer(u32),
}

/// A takeover connection, driven on the control runtime.
pub struct Channel(AsyncFd<Socket>);

impl Channel {
    fn new(s: Socket) -> io::Result<Channel> {
        s.set_nonblocking(true)?;
        Ok(Channel(watch_fd(s)?))
    }

    /// Connect to the gateway serving `path`.
    pub fn connect(path: &Path) -> Result<Channel, TakeoverError> {
        let err = |source| TakeoverError::Socket {
            path: path.to_path_buf(),
            source,
        };
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(err)?;
        s.connect(&SockAddr::unix(path).map_err(err)?)
            .map_err(err)?;
        Channel::new(s).map_err(err)
    }

    /// Send `msg` with `fds`.
    pub async fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), TakeoverError> {
        let bytes = serde_json::to_vec(msg)?;
        loop {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|s| send_now(s.get_ref(), &bytes, fds)) {
                Ok(r) => return r.map_err(TakeoverError::Io),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receive one message and its descriptors, within `limit`.
    pub async fn recv(&self, limit: Duration) -> Result<(Message, Vec<OwnedFd>), TakeoverError> {
        match tokio::time::timeout(limit, self.recv_any()).await {
            Ok(r) => r,
            Err(_) => Err(TakeoverError::Timeout(limit)),
        }
    }

    async fn recv_any(&self) -> Result<(Message, Vec<OwnedFd>), TakeoverError> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|s| recv_now(s.get_ref())) {
                Ok(r) => return r?,
                Err(_would_block) => continue,
            }
        }
    }

    /// The peer must be root or this process's user (the socket's mode already says so).
    fn check_peer(&self) -> Result<(), TakeoverError> {
        let cred =
            rustix::net::sockopt::socket_peercred(self.0.get_ref()).map_err(io::Error::from)?;
        if cred.uid.is_root() || cred.uid == rustix::process::geteuid() {
            Ok(())
        } else {
            Err(TakeoverError::Peer(cred.uid.as_raw()))
        }
    }
}

/// Register a socket with the runtime. `AsyncFd::new` is deprecated for types whose fd may be
/// closed while registered; here the `AsyncFd` owns the `Socket`, which closes its fd only when
/// the `AsyncFd` (and so the registration) is dropped. The replacement, `AsyncFd::register`, is
/// `unsafe`, which this crate keeps out of `control/`.
#[allow(deprecated)]
fn watch_fd(s: Socket) -> io::Result<AsyncFd<Socket>> {
    AsyncFd::new(s)
}

fn send_now(s: &Socket, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let n = sendmsg(s, &[IoSlice::new(bytes)], &mut cmsg, SendFlags::NOSIGNAL)?;
    if n != bytes.len() {
        return Err(io::Error::other("message sent in part"));
    }
    Ok(())
}

/// `Err(WouldBlock)` is returned as an `io::Error` (for `try_io`); protocol errors are inside.
fn recv_now(s: &Socket) -> io::Result<Result<(Message, Vec<OwnedFd>), TakeoverError>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = recvmsg(
        s,
        &mut [IoSliceMut::new(&mut buf)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Received descriptors are owned (and closed) whatever happens next.
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if r.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        return Ok(Err(TakeoverError::Truncated));
    }
    if r.bytes == 0 {
        return Ok(Err(TakeoverError::Closed));
    }
    Ok(serde_json::from_slice(&buf[..r.bytes])
        .map(|m| (m, fds))
        .map_err(TakeoverError::from))
}

/// The bound takeover socket of this process.
pub struct Listener {
    socket: AsyncFd<Socket>,
    /// The socket file, removed at exit only if it is still ours.
    file: Placed,
}

impl Listener {
    /// Bind `path` for a gateway that starts on its own. `Err(InUse)` when another live process
    /// accepts there; a stale file (nobody accepting) is replaced. Must run inside the runtime.
    pub fn bind(path: &Path) -> Result<Listener, TakeoverError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|source| TakeoverError::Directory {
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
        }
        let probe = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        let addr = SockAddr::unix(path)?;
        match probe.connect(&addr) {
            Ok(()) => {
                return Err(TakeoverError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
            Err(source) => {
                return Err(TakeoverError::Socket {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Listener::bind_replacing(path)
    }

    /// Bind `path`, replacing whatever is there (the new process of a takeover replaces the
    /// old one's socket). Must run inside the runtime.
    pub fn bind_replacing(path: &Path) -> Result<Listener, TakeoverError> {
        let err = |source| TakeoverError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if path.file_name().is_none() {
            return Err(err(io::Error::other("no file name")));
        }
        let tmp = placed::temporary(path);
        let _ = std::fs::remove_file(&tmp);
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(err)?;
        let placed = s
            .bind(&SockAddr::unix(&tmp).map_err(err)?)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
            .and_then(|()| s.listen(16))
            .and_then(|()| Placed::rename(&tmp, path));
        let file = match placed {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err(e));
            }
        };
        s.set_nonblocking(true).map_err(err)?;
        Ok(Listener {
            socket: watch_fd(s).map_err(err)?,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The next connection from an allowed peer.
    pub async fn accept(&self) -> io::Result<Channel> {
        loop {
            let mut guard = self.socket.readable().await?;
            let accepted = match guard.try_io(|s| s.get_ref().accept()) {
                Ok(r) => r,
                Err(_would_block) => continue,
            };
            match accepted {
                Ok((s, _)) => {
                    let c = Channel::new(s)?;
                    match c.check_peer() {
                        Ok(()) => return Ok(c),
                        Err(e) => {
                            tracing::warn!(
                                event_id = crate::events::NOT_ALLOWED,
                                reason = "takeover_peer",
                                error = %e,
                                "takeover socket: connection refused"
                            );
                        }
                    }
                }
                // One client's failure (it went away): the next one.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Sockets offered to a successor, described.
pub struct Offer {
    pub sockets: Vec<(SocketMeta, OwnedFd)>,
}

impl Offer {
    /// Send every socket, [`MAX_FDS`] per message.
    pub async fn send(&self, chan: &Channel) -> Result<(), TakeoverError> {
        let chunks: Vec<&[(SocketMeta, OwnedFd)]> = self.sockets.chunks(MAX_FDS).collect();
        if chunks.is_empty() {
            let msg = Message::Sockets {
                sockets: Vec::new(),
                more: false,
            };
            return chan.send(&msg, &[]).await;
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let msg = Message::Sockets {
                sockets: chunk.iter().map(|(m, _)| m.clone()).collect(),
                more: i != last,
            };
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, fd)| fd.as_fd()).collect();
            chan.send(&msg, &fds).await?;
        }
        Ok(())
    }
}

/// Ask the gateway on `chan` for its sockets; returns them, with their descriptions, once the
/// last `sockets` message arrived (`ready` is sent on the same connection later).
pub async fn receive(
    chan: &Channel,
    limit: Duration,
) -> Result<Vec<(SocketMeta, OwnedFd)>, TakeoverError> {
    chan.send(
        &Message::Takeover {
            pid: std::process::id(),
        },
        &[],
    )
    .await?;
    let mut out = Vec::new();
    loop {
        let (msg, fds) = chan.recv(limit).await?;
        match msg {
            Message::Sockets { sockets, more } => {
                if sockets.len() != fds.len() {
                    return Err(TakeoverError::Mismatch {
                        sent: fds.len(),
                        described: sockets.len(),
                    });
                }
                out.extend(sockets.into_iter().zip(fds));
                if !more {
                    return Ok(out);
                }
            }
            Message::Busy => return Err(TakeoverError::Busy),
            other => return Err(TakeoverError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Ask the gateway at `path` who it is.
pub async fn info(path: &Path, limit: Duration) -> Result<Message, TakeoverError> {
    let chan = Channel::connect(path)?;
    chan.send(&Message::Info, &[]).await?;
    let (msg, _) = chan.recv(limit).await?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn sockets_cross_with_their_descriptions_in_batches() {
        rt().block_on(async {
            let dir = std::env::temp_dir().join(format!("sg-takeover-{}", std::process::id()));
            let path = dir.join("t.sock");
            let listener = Listener::bind(&path).unwrap();
            // Mode 0600.
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            // A second bind sees it in use.
            assert!(matches!(
                Listener::bind(&path),
                Err(TakeoverError::InUse { .. })
            ));
            let n = MAX_FDS + 3;
            let tcp: Vec<std::net::TcpListener> = (0..n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            let addrs: Vec<SocketAddr> = tcp.iter().map(|l| l.local_addr().unwrap()).collect();
            let offer = Offer {
                sockets: tcp
                    .into_iter()
                    .zip(&addrs)
                    .map(|(l, a)| {
                        (
                            SocketMeta {
                                addr: *a,
                                kind: Kind::Listen,
                                shared: false,
                            },
                            OwnedFd::from(l),
                        )
                    })
                    .collect(),
            };
            let server = async {
                // The first connection is the in-use probe of the second bind above.
                for _ in 0..2 {
                    let chan = listener.accept().await.unwrap();
                    match chan.recv(Duration::from_secs(5)).await {
                        Err(TakeoverError::Closed) => continue,
                        Ok((Message::Takeover { .. }, _)) => {
                            offer.send(&chan).await.unwrap();
                            return;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                panic!("no takeover request");
            };
            let client = async {
                let chan = Channel::connect(&path).unwrap();
                receive(&chan, Duration::from_secs(5)).await.unwrap()
            };
            let ((), got) = tokio::join!(server, client);
            assert_eq!(got.len(), n);
            for ((meta, fd), addr) in got.into_iter().zip(&addrs) {
                assert_eq!(meta.addr, *addr);
                let l = std::net::TcpListener::from(fd);
                assert_eq!(l.local_addr().unwrap(), *addr, "the same socket arrived");
            }
            drop(listener);
            assert!(
                !path.exists(),
                "the socket file is removed with its listener"
            );
            let _ = std::fs::remove_dir_all(&dir);
        });
    }

    #[test]
    fn a_peer_that_closes_is_an_error_not_a_hang() {
        rt().block_on(async {
            let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
            let chan = Channel::new(a).unwrap();
            drop(b);
            assert!(matches!(
                chan.recv(Duration::from_secs(5)).await,
                Err(TakeoverError::Closed)
            ));
            let (a, _b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
            let chan = Channel::new(a).unwrap();
            assert!(matches!(
                chan.recv(Duration::from_millis(50)).await,
                Err(TakeoverError::Timeout(_))
            ));
        });
    }
}
