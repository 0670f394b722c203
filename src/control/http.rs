//! The loopback HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`. Read-only, off the data
//! path, on the control runtime. The probe port (`health_listen`) is the same server with
//! [`Routes::Probe`]: only `/healthz` and `/readyz`, so it can face a load balancer while
//! `/metrics` stays on loopback. Both share `limits.metrics_max_connections` (each listener
//! counts its own connections) and the request timeout.
//!
//! Three fixed GET routes with `Connection: close` do not need an HTTP library: a bounded read of
//! the request line, a canned answer, and a timeout so a silent client cannot hold a task.
//!
//! # Limits
//! At most `limits.metrics_max_connections` connections are served at once; one more is answered
//! `503` at once (a non-blocking write of a canned response) and closed, so a flood of scrapes or
//! of silent connections costs a bounded number of fds and tasks. The endpoint also keeps one
//! spare fd (`/dev/null`) of its own: when `accept` fails because the process is out of fds (the
//! workers hold them all), the spare is closed, the waiting client accepted into its slot and
//! answered, and the spare taken back, so `/metrics` and `/readyz` still answer exactly when an
//! operator needs them. That one connection is served before the next accept (with the usual
//! request timeout): out of fds, the endpoint answers one client at a time.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::engine::sys::spare_fd;
use crate::events;
use crate::metrics::Metrics;
use crate::relay::RelayHost;
use crate::settings::Shared;

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const RELAY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after an accept error the spare fd could not get past, so a full fd table or a
/// persistent error does not spin the control thread.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// Attempts to take the spare fd back after it was used, [`RESPARE_PAUSE`] apart: a slot lost
/// to a worker's own spare-fd refusal comes back within moments.
const RESPARE_TRIES: usize = 20;
const RESPARE_PAUSE: Duration = Duration::from_millis(1);
/// At most one warning per this interval for refused (over the cap) connections and for fd
/// exhaustion, so a flood cannot flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The answer to a connection over `limits.metrics_max_connections`.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
    Content-Length: 21\r\nConnection: close\r\nRetry-After: 1\r\nCache-Control: no-store\r\n\r\n\
    too many connections\n";

/// Which paths a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `metrics_listen`: `/metrics`, `/healthz` (`/live`), `/readyz` (`/ready`).
    All,
    /// `health_listen`: `/healthz` and `/readyz` only; anything else is 404.
    Probe,
}

/// Serve until the task is aborted (a reload that moves or disables `metrics_listen` or
/// `health_listen`).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, current: Shared, routes: Routes) {
    let active = Arc::new(AtomicUsize::new(0));
    // The spare fd: closed to make room for one accept when the process is out of fds.
    let mut spare: Option<OwnedFd> = spare_fd().ok();
    // When each kind of warning was last logged.
    let (mut warned_fds, mut warned_cap): (Option<Instant>, Option<Instant>) = (None, None);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if out_of_fds(&e) => {
                if warn_due(&mut warned_fds) {
                    warn!(
                        event_id = events::INTERNAL_ERROR,
                        reason = "fd_exhausted",
                        spare = spare.is_some(),
                        error = %e,
                        "metrics endpoint: out of file descriptors; answering with the spare fd"
                    );
                }
                if spare.take().is_some() {
                    // The spare's slot is free now: accept into it at once (one poll, which
                    // calls accept4 without yielding, so no worker gets the slot first) and
                    // answer right here, then take the slot back before accepting anything
                    // else. With the slot free, an empty queue answers EAGAIN and clears the
                    // readiness that EMFILE left standing (accept4 reports EMFILE before it
                    // looks at the queue), so the loop cannot spin on it.
                    let once = std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx)));
                    if let Poll::Ready(Ok((stream, _))) = once.await {
                        let m = Arc::clone(&metrics);
                        let c = Arc::clone(&current);
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, m, c, routes))
                            .await;
                    }
                }
                for _ in 0..RESPARE_TRIES {
                    spare = spare_fd().ok();
                    if spare.is_some() {
                        break;
                    }
                    tokio::time::sleep(RESPARE_PAUSE).await;
                }
                if spare.is_none() {
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                // Let the tasks of connections already accepted run.
                tokio::task::yield_now().await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        if spare.is_none() {
            spare = spare_fd().ok();
        }
        let cap = current.load().limits.metrics_max_connections;
        if active.load(Ordering::Acquire) >= cap {
            // Never waits: a client that does not read gets a partial answer or none.
            let _ = stream.try_write(OVER_CAP);
            if warn_due(&mut warned_cap) {
                warn!(
                    event_id = events::INTERNAL_ERROR,
                    reason = "metrics_over_capacity",
                    max_connections = cap,
                    "metrics endpoint: limits.metrics_max_connections reached; answering 503"
                );
            }
            continue;
        }
        let slot = Slot::take(&active);
        let m = Arc::clone(&metrics);
        let c = Arc::clone(&current);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, m, c, routes)).await;
            drop(slot);
        });
    }
}

/// One of the `limits.metrics_max_connections` places, given back on drop (also when the task is
/// aborted).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Slot {
        active.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(active))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Whether a rate-limited warning may be logged now.
fn warn_due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

async fn handle(
    mut stream: TcpStream,
    metrics: Arc<Metrics>,
    current: Shared,
    routes: Routes,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", b"request too large\n").await;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"only GET\n").await;
    }
    let path = match (routes, path) {
        (Routes::All, p) => p,
        (Routes::Probe, p @ ("/healthz" | "/readyz")) => p,
        (Routes::Probe, _) => "",
    };
    match path {
        "/metrics" => match metrics.render() {
            Ok(text) => {
                respond(
                    &mut stream,
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text.as_bytes(),
                )
                .await
            }
            Err(_) => respond(&mut stream, 500, "text/plain", b"encoding failed\n").await,
        },
        "/healthz" | "/live" => respond(&mut stream, 200, "text/plain", b"ok\n").await,
        "/readyz" | "/ready" => {
            let s = &metrics.status;
            let (alive, configured) = metrics.workers();
            if s.draining.load(Relaxed) {
                respond(&mut stream, 503, "text/plain", b"draining\n").await
            } else if !s.listening.load(Relaxed) {
                respond(&mut stream, 503, "text/plain", b"starting\n").await
            } else if s.overload.active() {
                // New clients get 503 here: the balancer should send them to another gateway.
                let why = format!("overloaded: {}\n", s.overload.engaged().names());
                respond(&mut stream, 503, "text/plain", why.as_bytes()).await
            } else if alive < configured {
                // A worker died: its share of clients is served by the others, at reduced capacity.
                let why = format!("{alive} of {configured} workers alive\n");
                respond(&mut stream, 503, "text/plain", why.as_bytes()).await
            } else if let Err(why) = relay_reachable(&current).await {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    format!("{why}\n").as_bytes(),
                )
                .await
            } else {
                respond(&mut stream, 200, "text/plain", b"ready\n").await
            }
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n").await,
    }
}

/// Why `/readyz` says the relay proxy is not reachable.
#[derive(Debug, thiserror::Error)]
enum RelayDown {
    #[error("relay proxy {address} unreachable: {source}")]
    Refused {
        address: String,
        source: std::io::Error,
    },
    #[error("relay proxy {address} did not accept within {RELAY_CHECK_TIMEOUT:?}")]
    Silent { address: String },
}

/// With `relay_proxy.health_check`, readiness also means the relay accepts a TCP connection
/// (within [`RELAY_CHECK_TIMEOUT`]): a gateway whose relay is down tells its load balancer.
async fn relay_reachable(current: &Shared) -> Result<(), RelayDown> {
    let settings = current.load_full();
    let Some(relay) = settings.relay.as_ref().filter(|r| r.health_check) else {
        return Ok(());
    };
    let target = match &relay.host {
        RelayHost::Ip(ip) => std::net::SocketAddr::new(*ip, relay.port).to_string(),
        RelayHost::Name(n) => format!("{n}:{}", relay.port),
    };
    match tokio::time::timeout(RELAY_CHECK_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(RelayDown::Refused {
            address: relay.address(),
            source: e,
        }),
        Err(_) => Err(RelayDown::Silent {
            address: relay.address(),
        }),
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
