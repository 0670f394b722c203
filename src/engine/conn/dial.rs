//! The `Connecting` phase: owns the addresses to dial and the upstream socket being connected
//! (one registration per socket: a second address dialled is a new socket with its own key).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Instant;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::engine::conn::relay::Relaying;
use crate::engine::conn::tunnel::Upstream;
use crate::engine::conn::{State, Target};
use crate::engine::driver::Side;
use crate::engine::registry::{Owner, Registered};
use crate::engine::tls_leg::TlsLeg;
use crate::engine::worker::Worker;
use crate::events::ErrorKind;
use crate::proto::response::Status;
use crate::relay::{self};

pub(in crate::engine) struct Connecting {
    pub(in crate::engine) target: Target,
    pub(in crate::engine) addrs: Vec<SocketAddr>,
    pub(in crate::engine) next: usize,
    pub(in crate::engine) upstream: Option<Registered>,
    pub(in crate::engine) addr: SocketAddr,
    pub(in crate::engine) started: Instant,
}

impl Worker {
    /// Every address is checked before any is dialled: one refused address refuses the request
    /// (a name that resolves to a mix of public and private addresses is a rebinding signal).
    pub(in crate::engine) fn connect_checked(
        &mut self,
        slot: u32,
        target: Target,
        ips: Vec<IpAddr>,
    ) {
        let policy = &self.settings.load().policy;
        for ip in &ips {
            if let Err(d) = policy.check_address(*ip) {
                self.deny(slot, d, &target.authority, Some(*ip));
                return;
            }
        }
        let port = target.authority.port;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        self.connect_to(slot, target, addrs);
    }

    /// Dial `addrs` in order within `connect_timeout` (and, through a relay, its answer).
    pub(in crate::engine) fn connect_to(
        &mut self,
        slot: u32,
        target: Target,
        addrs: Vec<SocketAddr>,
    ) {
        let Some(first) = addrs.first().copied() else {
            self.fail(
                slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "no address",
            );
            return;
        };
        let now = self.now;
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let deadline = now + conn.limits.connect_timeout;
        conn.deadline = deadline;
        conn.state = State::Connecting(Box::new(Connecting {
            target,
            addr: first,
            addrs,
            next: 0,
            upstream: None,
            started: now,
        }));
        self.deadlines.set(slot, deadline);
        self.connect_next(slot, None);
    }

    /// Dial the next address; `last` is the error of the previous attempt.
    pub(in crate::engine) fn connect_next(&mut self, slot: u32, mut last: Option<io::Error>) {
        let gen = self.gen_of(slot);
        loop {
            let Some(conn) = self
                .slots
                .get_mut(slot as usize)
                .and_then(|s| s.conn.as_mut())
            else {
                return;
            };
            let State::Connecting(c) = &mut conn.state else {
                return;
            };
            // The previous attempt's socket and its poll go together.
            drop(c.upstream.take());
            let Some(addr) = c.addrs.get(c.next).copied() else {
                let e = last.unwrap_or_else(|| io::Error::other("no address"));
                let kind = connect_error_kind(&e);
                let authority = c.target.authority.clone();
                self.fail(
                    slot,
                    Some(&authority),
                    kind,
                    Status::BadGateway,
                    &e.to_string(),
                );
                return;
            };
            c.next += 1;
            c.addr = addr;
            match dial(addr) {
                Ok(fd) => {
                    // Each socket dialled gets a key of its own.
                    let owner = Owner {
                        slot,
                        gen,
                        side: Side::Upstream,
                    };
                    match self.registry.register(&mut self.driver, fd, owner) {
                        Ok(up) => {
                            c.upstream = Some(up);
                            return;
                        }
                        Err(e) => {
                            last = Some(e);
                            continue;
                        }
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    let authority = c.target.authority.clone();
                    self.fail(
                        slot,
                        Some(&authority),
                        ErrorKind::FdExhausted,
                        Status::ServiceUnavailable,
                        "out of file descriptors",
                    );
                    return;
                }
                Err(e) => last = Some(e),
            }
        }
    }

    /// The upstream socket being dialled woke up with `readable`/`writable` (an error or hang-up
    /// reports both).
    pub(in crate::engine) fn on_connect_ready(
        &mut self,
        slot: u32,
        readable: bool,
        writable: bool,
        hup: bool,
    ) {
        if !writable {
            // Neither connected nor failed yet (an error would report writable too).
            return;
        }
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let State::Connecting(c) = &mut conn.state else {
            return;
        };
        let Some(up) = c.upstream.as_ref() else {
            return;
        };
        // Writable alone is a completed connect: `POLLOUT` is not reported while the handshake
        // is in progress, and an error comes with `POLLERR`, reported as readable too. Only that
        // ambiguous case (or data already there) costs the two checks.
        if readable {
            let sock = SockRef::from(up);
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.connect_next(slot, Some(e));
                    return;
                }
                Ok(None) => {}
            }
            if sock.peer_addr().is_err() {
                // Still in progress (a spurious wake-up).
                return;
            }
        }
        // Through an https:// relay: its TLS session is set up first. On failure the refusal
        // replaces `Connecting`, which drops with its socket and registration.
        let leg = match c.target.relay_request {
            Some(_) => match relay_leg(self.settings.load()) {
                Ok(leg) => leg,
                Err(e) => {
                    let authority = c.target.authority.clone();
                    self.relay_failed(slot, &authority, &e.to_string());
                    return;
                }
            },
            None => None,
        };
        // Connected: `Connecting` is consumed; its target, socket and address move on.
        let Some((shell, state)) = self.take_conn(slot) else {
            return;
        };
        let c = match state {
            State::Connecting(c) => c,
            other => return self.put_conn(slot, shell, other),
        };
        let Connecting {
            target,
            addrs,
            next,
            upstream,
            addr,
            started,
        } = *c;
        let Some(upstream) = upstream else {
            // (Checked above: not reached.) Still connecting, with no socket.
            let c = Connecting {
                target,
                addrs,
                next,
                upstream: None,
                addr,
                started,
            };
            return self.put_conn(slot, shell, State::Connecting(Box::new(c)));
        };
        self.shard
            .upstream_connect
            .observe(self.now.saturating_duration_since(started));
        // TCP_NODELAY was set before the connect (`dial`).
        let up = Upstream {
            target,
            upstream,
            addr,
            started,
            u_rd: readable,
            u_hup: hup,
        };
        if up.target.relay_request.is_some() {
            let relaying = Relaying::new(up, leg);
            self.put_conn(slot, shell, State::Relaying(Box::new(relaying)));
            self.relay_handshake(slot);
            return;
        }
        self.establish(slot, shell, up, Vec::new(), None);
    }
}

/// Why an `https://` relay's TLS session could not be set up.
#[derive(Debug, thiserror::Error)]
enum RelayLegError {
    #[error("TLS set-up for the relay proxy failed: {0}")]
    Setup(rustls::Error),
    #[error("no TLS configuration for the https:// relay proxy (see event 401 at start)")]
    NoConfig,
}

/// The TLS session to an `https://` relay (`None` for an `http://` one).
fn relay_leg(settings: &crate::settings::Settings) -> Result<Option<Box<TlsLeg>>, RelayLegError> {
    match &settings.relay {
        Some(r) if r.scheme == relay::Scheme::Https => match settings.relay_tls.clone() {
            Some((config, name)) => match rustls::ClientConnection::new(config, name) {
                Ok(c) => Ok(Some(Box::new(TlsLeg::new(c)))),
                Err(e) => Err(RelayLegError::Setup(e)),
            },
            None => Err(RelayLegError::NoConfig),
        },
        _ => Ok(None),
    }
}

/// Start a non-blocking connect with `TCP_NODELAY` set.
pub(in crate::engine) fn dial(addr: SocketAddr) -> io::Result<OwnedFd> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(OwnedFd::from(sock))
}

pub(in crate::engine) fn connect_error_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ErrorKind::ConnectRefused,
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => ErrorKind::ConnectUnreachable,
        Some(libc::ETIMEDOUT) => ErrorKind::ConnectTimeout,
        _ => ErrorKind::ConnectFailed,
    }
}
