//! The admin socket (`admin_socket`): a Unix stream socket on the control runtime that
//! `splicegate sessions`, `sessions close`, `status` and `allowed-host list --usage` ask.
//!
//! # Protocol
//! One request per connection: the client sends one JSON object on one line (at most
//! [`MAX_REQUEST`] bytes, newline-terminated), the gateway answers one JSON object on one line
//! and closes. Requests (`cmd` selects):
//! - `{"cmd":"sessions"}` with optional `"id"`, `"client"` (a CIDR or an address), `"host"`
//!   (an exact name or `*.suffix`), `"user"`: `{"ok":true,"sessions":[...]}`, each session an
//!   object with `id`, `client`, `target`, `address`, `user`, `rule`, `tls_version`, `sni`,
//!   `age_s`, `idle_s`, `bytes_up`, `bytes_down`, `state`, sorted by id;
//! - `{"cmd":"close", ...}` with the same selectors, at least one: `{"ok":true,"closed":N}`;
//! - `{"cmd":"status"}`: `{"ok":true,"status":{...}}` (see [`super::status`]);
//! - `{"cmd":"rules"}`: `{"ok":true,"rules":[{"rule","tunnels","bytes_up","bytes_down",
//!   "last_used"}]}` (`last_used`: Unix seconds of the entry's last tunnel, or null).
//!
//! Any failure is `{"ok":false,"error":"..."}`. A worker that does not answer within three
//! quarters of `limits.admin_timeout` is counted in `"missing_workers"`, next to the answer of
//! the others.
//!
//! # Access
//! The socket is mode 0660, group `splicegate` when that group exists (else the process's
//! group). The file mode keeps others out; each connection is also checked with
//! `SO_PEERCRED`: root, the gateway's own user, and users whose primary or supplementary
//! groups (from `/etc/passwd` and `/etc/group`) include the socket's group are served; anyone
//! else gets an error answer and the refusal is logged (event 100).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::warn;

use super::placed::{self, Placed};
use crate::engine::conn::session::{Session, SessionFilter};
use crate::events;
use crate::policy::{normalize_host, HostPattern};
use crate::settings::Shared;

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 4096;
/// The group that may use the socket, when it exists.
pub const GROUP: &str = "splicegate";

/// A request, as sent on the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Sessions(Selector),
    Close(Selector),
    Status,
    Rules,
}

/// Which tunnels a request is about, as sent: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("client {0:?}: expected an address or a network such as 10.1.0.0/16")]
    Client(String),
    #[error("host {0:?}: expected a name or a pattern such as *.example.com")]
    Host(String),
    #[error("close needs a tunnel id, --host or --client (refusing to close every tunnel)")]
    Unbounded,
}

impl Selector {
    /// Whether nothing is selected on: every tunnel matches.
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.client.is_none() && self.host.is_none() && self.user.is_none()
    }

    /// The filter the workers apply.
    pub fn parse(&self) -> Result<SessionFilter, SelectorError> {
        let client = match &self.client {
            None => None,
            Some(c) => Some(parse_network(c).ok_or_else(|| SelectorError::Client(c.clone()))?),
        };
        let host = match &self.host {
            None => None,
            Some(h) => Some(
                normalize_pattern(h)
                    .and_then(|n| HostPattern::parse(&n).ok())
                    .ok_or_else(|| SelectorError::Host(h.clone()))?,
            ),
        };
        Ok(SessionFilter {
            id: self.id,
            client,
            host,
            user: self.user.clone(),
        })
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address (a /32 or /128).
fn parse_network(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
}

/// Lower case, without a trailing dot; a leading `*.` kept.
fn normalize_pattern(s: &str) -> Option<String> {
    match s.strip_prefix("*.") {
        Some(rest) => normalize_host(rest).map(|n| format!("*.{n}")),
        None => normalize_host(s),
    }
}

/// A request handed to the control loop, with where its answer goes.
#[derive(Debug)]
pub struct Asked {
    pub request: Request,
    pub reply: oneshot::Sender<Answer>,
}

/// An answer line, already encoded (without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer(pub Vec<u8>);

impl From<serde_json::Value> for Answer {
    fn from(v: serde_json::Value) -> Answer {
        Answer(v.to_string().into_bytes())
    }
}

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("admin socket {path}: exists and is not a socket")]
    NotASocket { path: PathBuf },
}

/// The bound socket; its file is removed on drop unless another process has replaced it.
#[derive(Debug)]
pub struct AdminSocket {
    listener: Option<StdUnixListener>,
    /// The socket file, removed when this drops while it is still ours.
    file: Placed,
    /// The group allowed in besides root.
    pub gid: u32,
    /// Whether another running process had the path (it is replaced: a hand-over).
    pub replaced_live: bool,
    /// The accept loop, stopped when the socket is dropped (a reload that moves it).
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminSocket {
    /// Bind `path` (mode 0660, group [`GROUP`] or ours). The socket is bound under a
    /// temporary name and renamed into place, so a client never finds the path missing or
    /// with the wrong mode; a socket already there (a stale one, or that of a gateway handing
    /// over) is replaced.
    pub fn bind(path: &Path) -> Result<AdminSocket, AdminSocketError> {
        let io_err = |source| AdminSocketError::Io {
            path: path.to_owned(),
            source,
        };
        let mut replaced_live = false;
        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt;
                if !m.file_type().is_socket() {
                    return Err(AdminSocketError::NotASocket {
                        path: path.to_owned(),
                    });
                }
                replaced_live = std::os::unix::net::UnixStream::connect(path).is_ok();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let tmp = placed::temporary(path);
        let _ = std::fs::remove_file(&tmp);
        let listener = StdUnixListener::bind(&tmp).map_err(io_err)?;
        let gid = group_gid(GROUP).unwrap_or_else(|| rustix::process::getegid().as_raw());
        let setup = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .and_then(|()| std::os::unix::fs::chown(&tmp, None, Some(gid)))
            .and_then(|()| listener.set_nonblocking(true))
            .and_then(|()| Placed::rename(&tmp, path));
        let file = match setup {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(e));
            }
        };
        Ok(AdminSocket {
            listener: Some(listener),
            file,
            gid,
            replaced_live,
            task: None,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Serve the socket on the current tokio runtime until it is dropped. The limits are
    /// read from `current` as they are at each connection (`limits.admin_max_connections` at
    /// once, more wait; `limits.admin_timeout` for a request and its answer), so a reload
    /// changes them. Requests go to `control`.
    pub fn serve(&mut self, current: Shared, control: mpsc::Sender<Asked>) -> io::Result<()> {
        let std = self
            .listener
            .take()
            .ok_or_else(|| io::Error::other("admin socket already served"))?;
        let listener = UnixListener::from_std(std)?;
        let gid = self.gid;
        self.task = Some(tokio::spawn(accept_loop(listener, gid, current, control)));
        Ok(())
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        // The file goes with `file` (only our own: after a hand-over the path belongs to
        // the new gateway).
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    gid: u32,
    current: Shared,
    control: mpsc::Sender<Asked>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let mut backoff = Duration::from_millis(10);
    loop {
        // Over the cap, clients wait in the listen backlog (the cap is re-read every 100 ms,
        // so a reload that raises it applies at once).
        while active.load(Relaxed) >= current.load().limits.admin_max_connections {
            let _ = tokio::time::timeout(Duration::from_millis(100), done.notified()).await;
        }
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                let (control, active, done) =
                    (control.clone(), Arc::clone(&active), Arc::clone(&done));
                let timeout = current.load().limits.admin_timeout;
                active.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, serve_one(stream, gid, control)).await;
                    active.fetch_sub(1, Relaxed);
                    done.notify_one();
                });
            }
            Err(e) => {
                warn!(event_id = events::INTERNAL_ERROR, error = %e, "admin socket: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve_one(stream: UnixStream, gid: u32, control: mpsc::Sender<Asked>) {
    let answer = match peer_allowed(&stream, gid) {
        Err(who) => {
            warn!(
                event_id = events::INFO,
                peer = %who,
                reason = "admin_denied",
                "admin socket: refused a peer that is neither root nor in the socket's group"
            );
            error_answer("permission denied: root or a member of the admin socket's group only")
                .into()
        }
        Ok(()) => {
            let mut reader = BufReader::new(stream);
            let answer = match read_request(&mut reader).await {
                Ok(request) => ask(&control, request).await,
                Err(e) => error_answer(&e).into(),
            };
            return write_answer(reader.into_inner(), &answer).await;
        }
    };
    write_answer(stream, &answer).await
}

async fn write_answer(mut stream: UnixStream, answer: &Answer) {
    let _ = stream.write_all(&answer.0).await;
    let _ = stream.write_all(b"\n").await;
    let _ = stream.shutdown().await;
}

/// One session as the protocol (and `splicegate sessions --json`) shows it.
#[derive(Serialize)]
struct SessionOut<'a> {
    id: u64,
    client: String,
    target: &'a str,
    address: String,
    user: Option<&'a str>,
    rule: &'a str,
    tls_version: Option<&'static str>,
    sni: Option<&'a str>,
    age_s: f64,
    idle_s: f64,
    bytes_up: u64,
    bytes_down: u64,
    state: &'static str,
}

#[derive(Serialize)]
struct SessionsOut<'a> {
    ok: bool,
    sessions: Vec<SessionOut<'a>>,
    missing_workers: usize,
}

/// The answer to `sessions`: encoded straight from the sessions (no intermediate JSON tree:
/// 9,000 sessions answer in milliseconds).
pub fn sessions_answer(list: &[Session], missing_workers: usize) -> Answer {
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let out = SessionsOut {
        ok: true,
        sessions: list
            .iter()
            .map(|s| SessionOut {
                id: s.id,
                client: s.client.to_string(),
                target: &s.target,
                address: s.address.to_string(),
                user: s.user.as_deref(),
                rule: &s.rule,
                tls_version: s.tls_version,
                sni: s.sni.as_deref(),
                age_s: secs(s.age),
                idle_s: secs(s.idle),
                bytes_up: s.bytes_up,
                bytes_down: s.bytes_down,
                state: s.state.as_str(),
            })
            .collect(),
        missing_workers,
    };
    match serde_json::to_vec(&out) {
        Ok(v) => Answer(v),
        Err(e) => error_answer(&format!("cannot encode the sessions: {e}")).into(),
    }
}

pub fn error_answer(message: &str) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": message})
}

/// One newline-terminated line of at most [`MAX_REQUEST`] bytes, parsed.
async fn read_request(reader: &mut BufReader<UnixStream>) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut limited = reader.take(MAX_REQUEST as u64 + 1);
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    if line.last() != Some(&b'\n') {
        return Err("incomplete request: expected one JSON object ending in a newline".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad request: {e}"))
}

async fn ask(control: &mpsc::Sender<Asked>, request: Request) -> Answer {
    let (tx, rx) = oneshot::channel();
    if control.send(Asked { request, reply: tx }).await.is_err() {
        return error_answer("the gateway is stopping").into();
    }
    rx.await
        .unwrap_or_else(|_| error_answer("the gateway dropped the request").into())
}

/// Root, our own user, or a user whose groups include `gid`; else who it was.
fn peer_allowed(stream: &UnixStream, gid: u32) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("unknown peer ({e})"))?;
    let (uid, pgid) = (cred.uid(), cred.gid());
    if uid == 0 || uid == rustix::process::geteuid().as_raw() || pgid == gid {
        return Ok(());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if user_in_group(&passwd, &group, uid, gid) {
        Ok(())
    } else {
        Err(format!("uid {uid} gid {pgid}"))
    }
}

/// The gid of group `name` in `/etc/group`.
fn group_gid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Whether user `uid` has `gid` as its primary group (`passwd`) or is listed in that group
/// (`group`), from the texts of `/etc/passwd` and `/etc/group`.
fn user_in_group(passwd: &str, group: &str, uid: u32, gid: u32) -> bool {
    let Some((name, primary)) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok()? == uid).then(|| (f[0], f[3].parse::<u32>().ok()))
    }) else {
        return false;
    };
    if primary == Some(gid) {
        return true;
    }
    group.lines().any(|l| {
        let f: Vec<&str> = l.split(':').collect();
        f.len() >= 4
            && f[2].parse::<u32>().ok() == Some(gid)
            && f[3].split(',').any(|m| m.trim() == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"cmd":"sessions","host":"*.a.test"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r,
            Request::Sessions(Selector {
                host: Some("*.a.test".into()),
                ..Selector::default()
            })
        );
        let text = serde_json::to_string(&Request::Close(Selector {
            id: Some(7),
            ..Selector::default()
        }))
        .unwrap_or_default();
        assert_eq!(text, r#"{"cmd":"close","id":7}"#);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).is_ok());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"sessions","hots":"x"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn selectors_parse_or_say_why() {
        let s = Selector {
            client: Some("10.1.2.3/8".into()),
            host: Some("*.A.Test.".into()),
            ..Selector::default()
        };
        let f = s.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.client.map(|n| n.to_string()), Some("10.0.0.0/8".into()));
        assert!(f
            .host
            .is_some_and(|h| h.matches("x.a.test") && !h.matches("a.test")));
        let one = Selector {
            client: Some("::1".into()),
            ..Selector::default()
        };
        assert_eq!(
            one.parse()
                .ok()
                .and_then(|f| f.client)
                .map(|n| n.to_string()),
            Some("::1/128".into())
        );
        let bad = Selector {
            client: Some("10.0.0.0/33".into()),
            ..Selector::default()
        };
        assert!(matches!(bad.parse(), Err(SelectorError::Client(_))));
        let bad = Selector {
            host: Some("a b".into()),
            ..Selector::default()
        };
        assert!(matches!(bad.parse(), Err(SelectorError::Host(_))));
    }

    #[test]
    fn group_membership_from_passwd_and_group() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/h:/bin/sh\nbob:x:1001:998::/h:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        let group = "root:x:0:\nsplicegate:x:998:alice,carol\nnogroup:x:65534:\n";
        assert!(user_in_group(passwd, group, 1000, 998), "listed member");
        assert!(user_in_group(passwd, group, 1001, 998), "primary group");
        assert!(!user_in_group(passwd, group, 65534, 998));
        assert!(!user_in_group(passwd, group, 4242, 998), "unknown uid");
    }
}
