//! Accepting: owns the listener side of a worker — accept loops, accept errors and their
//! back-off, the spare fd used to refuse clients when out of fds, and the birth of a `Conn`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tracing::{debug, warn};

use crate::config::DataPath;
use crate::engine::conn::{Conn, Shell, State};
use crate::engine::driver::Side;
use crate::engine::registry::Owner;
use crate::engine::sys;
use crate::engine::worker::{Slot, Worker};
use crate::events::{self, ErrorKind, Reject};
use crate::proto::response::Status;

/// Accepts per listener per turn.
pub(in crate::engine) const ACCEPT_BUDGET: usize = 128;

/// Pause after running out of fds (after the spare refused what it could).
pub(in crate::engine) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Errors that concern one client, not the listener or the process: accept(2) passes pending
/// network errors of the new connection on, and "should treat them like EAGAIN by retrying".
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Test builds only: `SPLICEGATE_TEST_ACCEPT_ERROR=<errno>` makes every accept of the process
/// fail with that error (a connection already accepted by io_uring is closed), so tests can
/// show that a persistent accept error does not spin. Compiled out of release builds.
#[cfg(debug_assertions)]
pub(in crate::engine) fn injected_accept_error() -> Option<io::Error> {
    static ERRNO: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    ERRNO
        .get_or_init(|| {
            std::env::var("SPLICEGATE_TEST_ACCEPT_ERROR")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .map(io::Error::from_raw_os_error)
}

#[cfg(not(debug_assertions))]
pub(in crate::engine) fn injected_accept_error() -> Option<io::Error> {
    None
}

impl Worker {
    pub(in crate::engine) fn accept_loop(&mut self, listener: u32) {
        for _ in 0..ACCEPT_BUDGET {
            if self.accept_paused_until.is_some() {
                return;
            }
            let Some(Some(l)) = self.listeners.get(listener as usize) else {
                return;
            };
            let accepted = match injected_accept_error() {
                Some(e) => Err(e),
                None => sys::accept(l.as_fd()),
            };
            match accepted {
                Ok(fd) => {
                    self.accepted();
                    self.on_accept(listener, fd)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if !self.on_accept_error(listener, e) {
                        return;
                    }
                }
            }
        }
        self.pending_accept.push(listener);
    }

    /// An accept succeeded: the errors in a row, and their back-off, start again from zero.
    pub(in crate::engine) fn accepted(&mut self) {
        self.accept_backoff = Duration::ZERO;
        self.accept_client_errors = 0;
    }

    /// Returns whether accepting should go on now: only after an error that concerned one
    /// client. Every other error pauses accepting, for longer each time in a row (reset by the
    /// next successful accept), so a persistent error never spins the worker. So does an error
    /// of the per-client kind once `ACCEPT_BUDGET` of them came in a row: one that repeats on
    /// every try (`EPERM` from a seccomp filter or an LSM hook on accept, which leaves the
    /// connection queued) is no client's.
    pub(in crate::engine) fn on_accept_error(&mut self, listener: u32, e: io::Error) -> bool {
        if transient(&e) && self.accept_client_errors < ACCEPT_BUDGET {
            // The client went away between SYN and accept, or a network error of its own.
            self.accept_client_errors += 1;
            debug!(worker = self.id, error = %e, "accept failed");
            return true;
        }
        let kind = match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => ErrorKind::FdExhausted,
            Some(libc::ENOBUFS) | Some(libc::ENOMEM) => ErrorKind::OutOfMemory,
            _ => ErrorKind::Accept,
        };
        if kind != ErrorKind::FdExhausted {
            // (fd exhaustion is counted per client refused with the spare)
            self.shard.error(kind);
        }
        // `limits.accept_backoff_min` doubling to `limits.accept_backoff_max` (validated
        // min <= max; `max` then `min` so that no pair of values can panic here).
        let (lo, hi) = {
            let l = &self.settings.load().limits;
            (l.accept_backoff_min, l.accept_backoff_max)
        };
        self.accept_backoff = (self.accept_backoff * 2).max(lo).min(hi);
        let now = self.now;
        if self
            .last_fd_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_fd_warning = Some(now);
            let pause_ms = match kind {
                ErrorKind::FdExhausted => self.accept_backoff.max(ACCEPT_PAUSE),
                _ => self.accept_backoff,
            }
            .as_millis() as u64;
            match kind {
                ErrorKind::FdExhausted => warn!(
                    event_id = events::INTERNAL_ERROR,
                    worker = self.id,
                    reason = kind.as_str(),
                    status = 503,
                    error = %e,
                    pause_ms,
                    "out of file descriptors: refusing new clients with 503"
                ),
                _ => warn!(
                    event_id = events::INTERNAL_ERROR,
                    worker = self.id,
                    reason = kind.as_str(),
                    error = %e,
                    pause_ms,
                    "accept failed: pausing accepts on this worker"
                ),
            }
        }
        if kind == ErrorKind::FdExhausted {
            return self.refuse_with_spare(listener);
        }
        self.accept_paused_until = Some(now + self.accept_backoff);
        false
    }

    /// Out of fds: refuse the clients already waiting (free the spare, accept one, answer 503,
    /// close it, take the spare back), then pause accepting for a moment. The pause is what keeps
    /// this from spinning: `accept4` (and io_uring's accept) fail with EMFILE before looking at
    /// the queue, so without it every retry would fail at once. Returns whether to go on
    /// accepting now (never).
    pub(in crate::engine) fn refuse_with_spare(&mut self, listener: u32) -> bool {
        for _ in 0..ACCEPT_BUDGET {
            let Some(Some(l)) = self.listeners.get(listener as usize) else {
                break;
            };
            if self.spare.take().is_none() {
                break;
            }
            let waiting = sys::accept(l.as_fd());
            if let Ok(fd) = waiting.as_ref() {
                refuse_now(fd, Status::ServiceUnavailable);
                self.shard.reject(Reject::OverCapacity);
                self.shard.error(ErrorKind::FdExhausted);
            }
            drop(waiting);
            self.spare = sys::spare_fd().ok();
            if self.spare.is_none() {
                break;
            }
        }
        self.accept_paused_until = Some(self.now + self.accept_backoff.max(ACCEPT_PAUSE));
        false
    }

    /// A new connection on listener `listener`. On a plain listener the socket's peer is the
    /// client and is checked here; on a listener with the PROXY protocol the peer must be a
    /// trusted balancer, and the client is known only once the header is read
    /// (`conn::proxy`).
    pub(in crate::engine) fn on_accept(&mut self, listener: u32, fd: OwnedFd) {
        let sock = SockRef::from(&fd);
        let peer = match sock.peer_addr().ok().and_then(|a| a.as_socket()) {
            Some(p) => p,
            None => return, // already disconnected
        };
        let proxy = self
            .listener_proxy
            .get(listener as usize)
            .is_some_and(Option::is_some);
        // A connection accepted just as the drain began (an io_uring accept that completed
        // before its cancellation) is served like any other: its client is already connected.
        let current = self.settings.load();
        let allowed = proxy || current.policy.client_allowed(peer.ip());
        let limits = current.limits.clone();
        let splice = current.data_path == DataPath::Splice;
        // One relaxed load of the state the control thread publishes (`crate::overload`).
        let overloaded = current
            .overload
            .active()
            .then(|| current.overload.engaged());
        // Shared by the workers: touched only while the limit is on.
        let counts =
            (!proxy && limits.max_connections_per_client > 0).then(|| Arc::clone(&current.clients));
        if proxy {
            let trusted = self
                .listener_proxy
                .get(listener as usize)
                .and_then(Option::as_ref)
                .is_some_and(|from| from.contains(peer.ip()));
            if !trusted {
                // Closed before a byte is read: a header from anyone else would let them
                // claim any client address.
                self.shard.reject(Reject::ProxyUntrusted);
                if self.refusal_logged(peer.ip(), Reject::ProxyUntrusted, events::NOT_ALLOWED) {
                    warn!(
                        event_id = events::NOT_ALLOWED,
                        client = %peer,
                        reason = Reject::ProxyUntrusted.as_str(),
                        "PROXY protocol listener reached from outside proxy_from: connection closed"
                    );
                }
                return;
            }
        } else if !allowed {
            // Not even HTTP for it: closed at accept.
            self.shard.reject(Reject::ClientNetwork);
            if self.refusal_logged(peer.ip(), Reject::ClientNetwork, events::NOT_ALLOWED) {
                warn!(
                    event_id = events::NOT_ALLOWED,
                    client = %peer,
                    reason = Reject::ClientNetwork.as_str(),
                    "client address not in allowed_client_networks: connection closed"
                );
            }
            return;
        }
        if self.live >= limits.max_connections.div_ceil(self.workers) {
            refuse_now(&fd, Status::ServiceUnavailable);
            self.shard.reject(Reject::OverCapacity);
            if self.refusal_logged(peer.ip(), Reject::OverCapacity, events::INTERNAL_ERROR) {
                warn!(
                    event_id = events::INTERNAL_ERROR,
                    client = %peer,
                    reason = Reject::OverCapacity.as_str(),
                    status = 503,
                    "connection limit reached"
                );
            }
            return;
        }
        // Below the hard limit but overloaded (a budget past `overload_engage_percent`): the
        // same 503, with its own reason. The hard limit is checked first, so a gateway at
        // `max_connections` still says `over_capacity`.
        if let Some(engaged) = overloaded {
            refuse_now(&fd, Status::ServiceUnavailable);
            self.shard.reject(Reject::Overload);
            if self.refusal_logged(peer.ip(), Reject::Overload, events::INTERNAL_ERROR) {
                warn!(
                    event_id = events::INTERNAL_ERROR,
                    client = %peer,
                    reason = Reject::Overload.as_str(),
                    status = 503,
                    resource = engaged.names(),
                    "overloaded: new connections refused, open tunnels carry on"
                );
            }
            return;
        }
        let mut hold = None;
        if let Some(counts) = counts {
            hold = counts.try_hold(peer.ip(), limits.max_connections_per_client);
            if hold.is_none() {
                refuse_now(&fd, Status::TooManyRequests);
                self.client_limit_refused(peer, limits.max_connections_per_client);
                return;
            }
        }
        // TCP_NODELAY comes from the listener (set in `Worker::run`): accepted sockets inherit it.
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.gen_of(slot);
        let owner = Owner {
            slot,
            gen,
            side: Side::Client,
        };
        let fd = match self.registry.register(&mut self.driver, fd, owner) {
            Ok(fd) => fd,
            Err(e) => {
                warn!(event_id = events::INTERNAL_ERROR, client = %peer, error = %e, "cannot watch client socket");
                self.shard.error(ErrorKind::Internal);
                self.free.push(slot);
                return;
            }
        };
        let now = self.now;
        let deadline = now + limits.header_timeout;
        // A plain listener's client is counted now; behind a balancer, once the header names it.
        let counted = (!proxy).then(|| peer.ip());
        let state = if proxy {
            State::Proxy {
                buf: Vec::with_capacity(256),
            }
        } else {
            // Empty: `read_head` keeps only the bytes that arrive.
            State::Head { buf: Vec::new() }
        };
        self.slots[slot as usize].conn = Some(Conn {
            shell: Shell {
                client: fd,
                peer,
                counted,
                hold,
                limits,
                splice,
                deadline,
                c_rd: false,
                c_hup: false,
                c_wr: true,
            },
            state,
        });
        self.live += 1;
        self.shard.active_connections.fetch_add(1, Relaxed);
        if let Some(ip) = counted {
            self.shard.client_opened(ip);
        }
        self.deadlines.set(slot, deadline);
    }

    /// The event of a client over `limits.max_connections_per_client` (answered 429).
    pub(in crate::engine) fn client_limit_refused(&mut self, client: SocketAddr, max: usize) {
        self.shard.reject(Reject::ClientLimit);
        if self.refusal_logged(client.ip(), Reject::ClientLimit, events::NOT_ALLOWED) {
            warn!(
                event_id = events::NOT_ALLOWED,
                client = %client,
                reason = Reject::ClientLimit.as_str(),
                status = 429,
                max_connections_per_client = max,
                "client already holds max_connections_per_client connections"
            );
        }
    }
}

/// Answer and close a client that gets no slot. What it already sent is read first, so the close
/// is a FIN rather than a reset that could destroy the answer before the client reads it.
pub(in crate::engine) fn refuse_now(fd: &OwnedFd, status: Status) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match sys::recv(fd.as_fd(), &mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = sys::send(fd.as_fd(), status.bytes(), false);
    let _ = sys::shutdown_write(fd.as_fd());
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::AsFd;

    /// `on_accept` makes no setsockopt: it relies on Linux copying TCP_NODELAY from the
    /// listening socket to each accepted one (also through io_uring's accept).
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for nodelay in [true, false] {
            let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            l.set_tcp_nodelay(nodelay).unwrap();
            l.bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
            l.listen(8).unwrap();
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            let _c = std::net::TcpStream::connect(addr).unwrap();
            let fd = super::super::sys::accept(l.as_fd()).unwrap();
            assert_eq!(SockRef::from(&fd).tcp_nodelay().unwrap(), nodelay);
        }
    }
}
