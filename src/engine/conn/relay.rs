//! The `Relaying` phase: owns the connected relay-proxy socket, our CONNECT to it, its answer
//! being read, and the TLS session to an `https://` relay.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Instant;

use crate::engine::conn::tunnel::Upstream;
use crate::engine::conn::{State, Target};
use crate::engine::registry::Registered;
use crate::engine::sys;
use crate::engine::tls_leg::TlsLeg;
use crate::engine::worker::Worker;
use crate::events::ErrorKind;
use crate::proto::connect::Authority;
use crate::proto::response::Status;
use crate::relay::{self};

/// Waiting for the relay proxy's answer to our CONNECT.
pub(in crate::engine) struct Relaying {
    pub(in crate::engine) target: Target,
    pub(in crate::engine) upstream: Registered,
    pub(in crate::engine) addr: SocketAddr,
    pub(in crate::engine) started: Instant,
    pub(in crate::engine) sent: usize,
    pub(in crate::engine) answer: Vec<u8>,
    pub(in crate::engine) u_rd: bool,
    pub(in crate::engine) u_wr: bool,
    /// The TLS session to an `https://` relay.
    pub(in crate::engine) tls: Option<Box<TlsLeg>>,
}

impl Relaying {
    /// The relay proxy is connected: our CONNECT goes out next (inside `tls` for an `https://`
    /// relay).
    pub(in crate::engine) fn new(up: Upstream, tls: Option<Box<TlsLeg>>) -> Relaying {
        let Upstream {
            target,
            upstream,
            addr,
            started,
            u_rd: _,
            u_hup: _,
        } = up;
        Relaying {
            target,
            upstream,
            addr,
            started,
            sent: 0,
            answer: Vec::new(),
            u_rd: true,
            u_wr: true,
            tls,
        }
    }
}

impl Worker {
    /// Write our CONNECT to the relay and read its answer.
    pub(in crate::engine) fn relay_handshake(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let State::Relaying(r) = &mut conn.state else {
            return;
        };
        if r.tls.is_some() {
            self.relay_handshake_tls(slot);
            return;
        }
        let req = r.target.relay_request.as_deref().unwrap_or_default();
        while r.sent < req.len() && r.u_wr {
            match sys::send(r.upstream.as_fd(), &req[r.sent..], false) {
                Ok(n) => r.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => r.u_wr = false,
                Err(e) => {
                    let a = r.target.authority.clone();
                    let detail = format!("relay proxy {}: {e}", r.addr);
                    self.relay_failed(slot, &a, &detail);
                    return;
                }
            }
        }
        let mut closed = false;
        while r.u_rd && r.answer.len() < relay::MAX_ANSWER + 1 {
            let old = r.answer.len();
            r.answer.resize(old + 4096, 0);
            match sys::recv(r.upstream.as_fd(), &mut r.answer[old..]) {
                Ok(0) => {
                    r.answer.truncate(old);
                    closed = true;
                    break;
                }
                Ok(n) => r.answer.truncate(old + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    r.answer.truncate(old);
                    r.u_rd = false;
                }
                Err(_) => {
                    r.answer.truncate(old);
                    closed = true;
                    break;
                }
            }
        }
        self.relay_answer(slot, closed);
    }

    /// The same over TLS: finish the handshake, send the CONNECT inside it, read the answer.
    pub(in crate::engine) fn relay_handshake_tls(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let State::Relaying(r) = &mut conn.state else {
            return;
        };
        let Some(tls) = r.tls.as_mut() else {
            return;
        };
        let mut step = || -> io::Result<bool> {
            tls.io(r.upstream.as_fd(), &mut r.u_rd, &mut r.u_wr)?;
            if !tls.is_handshaking() && r.sent == 0 {
                let req = r.target.relay_request.as_deref().unwrap_or_default();
                tls.send_plain(req)?;
                r.sent = req.len();
                tls.io(r.upstream.as_fd(), &mut r.u_rd, &mut r.u_wr)?;
            }
            tls.recv_plain(&mut r.answer, relay::MAX_ANSWER + 1)
        };
        match step() {
            Ok(closed) => self.relay_answer(slot, closed),
            Err(e) => {
                let a = r.target.authority.clone();
                let detail = format!("TLS with the relay proxy {} failed: {e}", r.addr);
                self.relay_failed(slot, &a, &detail);
            }
        }
    }

    /// The relay could not be used for this request: `502`, event 403, `relay_refused`.
    pub(in crate::engine) fn relay_failed(&mut self, slot: u32, target: &Authority, detail: &str) {
        let kind = ErrorKind::RelayRefused;
        self.fail(slot, Some(target), kind, Status::BadGateway, detail);
    }

    /// Act on what the relay has answered so far; `closed` means its stream ended.
    pub(in crate::engine) fn relay_answer(&mut self, slot: u32, closed: bool) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let State::Relaying(r) = &mut conn.state else {
            return;
        };
        let parsed = relay::parse_answer(&r.answer);
        let a = r.target.authority.clone();
        let at = r.addr;
        match parsed {
            Ok(None) if closed => self.relay_failed(
                slot,
                &a,
                &format!("relay proxy {at} closed the connection without answering"),
            ),
            Ok(None) => {}
            Err(why) => self.relay_failed(slot, &a, &format!("relay proxy {at}: {why}")),
            Ok(Some(ans)) if ans.status == 200 => {
                // `Relaying` is consumed: the socket, target and TLS session move on.
                let head_len = ans.head_len;
                let Some((shell, state)) = self.take_conn(slot) else {
                    return;
                };
                let r = match state {
                    State::Relaying(r) => r,
                    other => return self.put_conn(slot, shell, other),
                };
                let Relaying {
                    target,
                    upstream,
                    addr,
                    started,
                    answer,
                    tls,
                    ..
                } = *r;
                let rest = answer.get(head_len..).unwrap_or_default().to_vec();
                let up = Upstream {
                    target,
                    upstream,
                    addr,
                    started,
                    // The relay may have sent more than its answer (or the TLS leg holds it).
                    u_rd: true,
                    // Not tracked while relaying: assume it, which only turns off the
                    // short-read shortcut in `flow`.
                    u_hup: true,
                };
                match tls {
                    Some(mut leg) => {
                        // Through a TLS leg, the leg carries the 200 and what the relay sent.
                        leg.start_tunnel(Status::Established.bytes(), &rest);
                        self.establish(slot, shell, up, Vec::new(), Some(leg))
                    }
                    None => self.establish(slot, shell, up, rest, None),
                }
            }
            Ok(Some(ans)) if ans.status == 407 => self.fail(
                slot,
                Some(&a),
                ErrorKind::RelayAuth,
                Status::BadGateway,
                &format!(
                    "relay proxy rejected the credentials ({} {})",
                    ans.status, ans.reason
                ),
            ),
            Ok(Some(ans)) => self.relay_failed(
                slot,
                &a,
                &format!("relay proxy answered {} {}", ans.status, ans.reason),
            ),
        }
    }
}
