//! The `Refusing` and `Lingering` phases: own the canned answer being written and the count of
//! bytes discarded after it; also the one decision event of every refusal and its rate limit.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::engine::conn::close::Close;
use crate::engine::conn::{Conn, State};
use crate::engine::sys;
use crate::engine::worker::Worker;
use crate::events::limiter::{Cause, Key as RefusalKey, Summary};
use crate::events::{self, clip, clip_display, ErrorKind, Reject};
use crate::policy::Denial;
use crate::proto::connect::Authority;
use crate::proto::response::Status;

/// How long a refused client may keep sending before the socket is closed.
pub(in crate::engine) const LINGER: Duration = Duration::from_secs(2);

/// How much a refused client may send while lingering.
pub(in crate::engine) const LINGER_BYTES: usize = 256 * 1024;

impl Worker {
    pub(in crate::engine) fn deny(
        &mut self,
        slot: u32,
        d: Denial,
        authority: &Authority,
        ip: Option<IpAddr>,
    ) {
        let reject = match d {
            Denial::HostNotAllowed => Reject::HostNotAllowed,
            Denial::PortNotAllowed => Reject::PortNotAllowed,
            Denial::PrivateDestination(_) => Reject::PrivateDestination,
        };
        self.shard.reject(reject);
        let peer = self.conn_at(slot).map(|c| c.peer);
        let logged = peer.filter(|p| self.refusal_logged(p.ip(), reject, events::NOT_ALLOWED));
        if let Some(peer) = logged {
            let authority = clip_display(authority);
            match (d, ip) {
                (Denial::PrivateDestination(class), Some(ip)) => warn!(
                    event_id = events::NOT_ALLOWED,
                    client = %peer,
                    target = %authority,
                    reason = d.reason(),
                    address = %ip,
                    class = class.as_str(),
                    status = 403,
                    "destination address not allowed"
                ),
                _ => warn!(
                    event_id = events::NOT_ALLOWED,
                    client = %peer,
                    target = %authority,
                    reason = d.reason(),
                    status = 403,
                    "destination not allowed"
                ),
            }
        }
        self.start_refusal(slot, Status::Forbidden);
    }

    /// A client request refused before any upstream contact (event 104).
    pub(in crate::engine) fn refuse(
        &mut self,
        slot: u32,
        status: Status,
        reject: Reject,
        detail: &str,
        target: Option<&Authority>,
    ) {
        self.shard.reject(reject);
        let peer = self.conn_at(slot).map(|c| c.peer);
        if peer.is_some_and(|p| self.refusal_logged(p.ip(), reject, events::NOT_CONNECT)) {
            let why = (events::NOT_CONNECT, reject.as_str(), "request refused");
            self.log_and_answer(slot, why, detail, target, status);
        } else {
            self.start_refusal(slot, status);
        }
    }

    /// A network failure on the way to the upstream (event 403).
    pub(in crate::engine) fn fail(
        &mut self,
        slot: u32,
        target: Option<&Authority>,
        kind: ErrorKind,
        status: Status,
        detail: &str,
    ) {
        self.shard.error(kind);
        let peer = self.conn_at(slot).map(|c| c.peer);
        if peer.is_some_and(|p| self.refusal_logged(p.ip(), kind, events::NETWORK_ERROR)) {
            let why = (events::NETWORK_ERROR, kind.as_str(), "upstream not reached");
            self.log_and_answer(slot, why, detail, target, status);
        } else {
            self.start_refusal(slot, status);
        }
    }

    /// The one decision event of a refused request — `(event_id, reason label, message)` —
    /// then the answer.
    pub(in crate::engine) fn log_and_answer(
        &mut self,
        slot: u32,
        (event_id, reason, message): (u16, &str, &str),
        detail: &str,
        target: Option<&Authority>,
        status: Status,
    ) {
        if let Some(conn) = self.conn_at(slot) {
            let peer = conn.peer;
            let target = target.map(clip_display).unwrap_or_default();
            warn!(
                event_id = event_id,
                client = %peer,
                target = %target,
                reason = reason,
                // As `&str`, quoted and escaped by the text format (a relay's answer has spaces).
                detail = &*clip(detail),
                status = status.code(),
                "{message}"
            );
        }
        self.start_refusal(slot, status);
    }

    pub(in crate::engine) fn start_refusal(&mut self, slot: u32, status: Status) {
        self.start_refusal_bytes(slot, std::borrow::Cow::Borrowed(status.bytes()));
    }

    pub(in crate::engine) fn start_refusal_bytes(
        &mut self,
        slot: u32,
        bytes: std::borrow::Cow<'static, [u8]>,
    ) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        // Any half-made upstream socket closes with its registration as the old state drops.
        conn.state = State::Refusing { bytes, sent: 0 };
        let deadline = self.now + LINGER;
        if let Some(conn) = self.conn_at(slot) {
            conn.deadline = deadline;
        }
        self.deadlines.set(slot, deadline);
        self.write_refusal(slot);
    }

    pub(in crate::engine) fn write_refusal(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let Conn { shell: conn, state } = conn;
        let State::Refusing { bytes, sent } = state else {
            return;
        };
        while *sent < bytes.len() && conn.c_wr {
            match sys::send(conn.client.as_fd(), &bytes[*sent..], false) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.c_wr = false,
                Err(_) => {
                    self.close(slot, Close::Quiet);
                    return;
                }
            }
        }
        if *sent == bytes.len() {
            let _ = sys::shutdown_write(conn.client.as_fd());
            *state = State::Lingering { discarded: 0 };
            conn.c_rd = true;
            self.linger(slot);
        }
    }

    pub(in crate::engine) fn linger(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let Conn { shell: conn, state } = conn;
        let State::Lingering { discarded } = state else {
            return;
        };
        let mut sink = [0u8; 4096];
        while conn.c_rd {
            match sys::recv(conn.client.as_fd(), &mut sink) {
                Ok(0) => {
                    self.close(slot, Close::Quiet);
                    return;
                }
                Ok(n) => {
                    *discarded += n;
                    if *discarded > LINGER_BYTES {
                        self.close(slot, Close::Quiet);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.c_rd = false,
                Err(_) => {
                    self.close(slot, Close::Quiet);
                    return;
                }
            }
        }
    }

    /// Whether the event of a refusal of `client` for `reason` may be logged (the limit of
    /// [`events::limiter`]); the summaries of windows that ended meanwhile are logged first.
    /// The caller has counted the refusal already: counters see every one.
    pub(in crate::engine) fn refusal_logged(
        &mut self,
        client: IpAddr,
        reason: impl Into<Cause>,
        event_id: u16,
    ) -> bool {
        let budget = self.settings.load().refusals;
        let key = RefusalKey {
            client,
            reason: reason.into(),
        };
        let now = self.now;
        let log = self
            .refusal_log
            .admit(now, key, event_id, &budget, &mut self.suppressed);
        log_suppressed(&mut self.suppressed, budget.window);
        log
    }

    /// Logs the summary of every window that has ended, whether or not its client came back.
    pub(in crate::engine) fn sweep_refusal_log(&mut self, now: Instant) {
        if self.refusal_log.next_deadline().is_none_or(|t| t > now) {
            return;
        }
        let budget = self.settings.load().refusals;
        self.refusal_log.sweep(now, &budget, &mut self.suppressed);
        log_suppressed(&mut self.suppressed, budget.window);
    }

    /// On exit: the summaries of the windows still open.
    pub(in crate::engine) fn flush_refusal_log(&mut self) {
        let window = self.settings.load().refusals.window;
        self.refusal_log.flush(&mut self.suppressed);
        log_suppressed(&mut self.suppressed, window);
    }
}

/// One event per window that suppressed refusal events: same event ID, client and reason as
/// the events it stands for, with `suppressed=N`.
pub(in crate::engine) fn log_suppressed(ended: &mut Vec<Summary>, window: Duration) {
    for s in ended.drain(..) {
        warn!(
            event_id = s.event_id,
            client = %s.key.client,
            reason = s.key.reason.as_str(),
            suppressed = s.suppressed,
            window_s = window.as_secs(),
            table_full = s.evicted,
            "{} more refusal events for this client and reason were not logged",
            s.suppressed
        );
    }
}
