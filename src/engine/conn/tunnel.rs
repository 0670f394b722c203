//! The `Tunnel` phase: owns the upstream socket, the two [`Flow`]s (or the TLS leg through an
//! `https://` relay), and the optional inspection; establishes the tunnel and pumps its bytes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use crate::engine::conn::close::Close;
use crate::engine::conn::inspect::{Hello, Inspection};
use crate::engine::conn::{Conn, Shell, State, Target};
use crate::engine::flow::{Cx, Flow, Pumped, Tap};
use crate::engine::registry::Registered;
use crate::engine::tls_leg::TlsLeg;
use crate::engine::worker::Worker;
use crate::events::{self, clip_display, ErrorKind};
use crate::metrics::RuleRef;
use crate::proto::connect::Authority;
use crate::proto::response::Status;
use crate::proto::tls::{Inspector, Verdict};

/// Bytes one direction may read per turn before other connections get theirs.
pub(in crate::engine) const TURN_BUDGET: usize = 1 << 20;

pub(in crate::engine) struct Tunnel {
    pub(in crate::engine) upstream: Registered,
    pub(in crate::engine) target: String,
    pub(in crate::engine) addr: SocketAddr,
    pub(in crate::engine) u_rd: bool,
    pub(in crate::engine) u_wr: bool,
    /// The upstream socket has reported a hang-up (sticky; see `Event::Ready::hup`).
    pub(in crate::engine) u_hup: bool,
    pub(in crate::engine) up: Flow,
    pub(in crate::engine) down: Flow,
    /// Through an `https://` relay the relay leg is TLS and both directions copy through it
    /// (the `Flow`s are unused).
    pub(in crate::engine) tls: Option<Box<TlsLeg>>,
    /// TLS inspection until its verdict (`tls.inspect`).
    pub(in crate::engine) inspect: Option<Box<Inspection>>,
    pub(in crate::engine) started: Instant,
    pub(in crate::engine) last_activity: Instant,
    /// What the tunnel was allowed on, for the re-check after a reload (`conn::revoke`): the
    /// requested authority, the authenticated user, and the client certificate's subject once
    /// inspection saw one.
    pub(in crate::engine) authority: Authority,
    pub(in crate::engine) user: Option<String>,
    pub(in crate::engine) cert_subject: Option<String>,
    /// The tunnel's id in `splicegate sessions`: unique in the process, for the tunnel's life.
    pub(in crate::engine) id: u64,
    /// The allowlist entry that allowed it, whose usage counters it adds to.
    pub(in crate::engine) rule: Option<RuleRef>,
    /// What inspection saw once it allowed the session (`None` without inspection).
    pub(in crate::engine) tls_version: Option<&'static str>,
    pub(in crate::engine) sni: Option<String>,
    /// The bytes already added to the entry's counters (see [`Tunnel::count_rule_bytes`]).
    pub(in crate::engine) counted: (u64, u64),
}

/// The next tunnel id (see [`Tunnel::id`]); one atomic add per tunnel established.
static NEXT_TUNNEL_ID: AtomicU64 = AtomicU64::new(1);

impl Tunnel {
    /// Relayed bytes so far: (client to upstream, upstream to client).
    pub(in crate::engine) fn bytes(&self) -> (u64, u64) {
        match &self.tls {
            Some(l) => (l.bytes_up, l.bytes_down),
            None => (self.up.bytes, self.down.bytes),
        }
    }

    /// Add the bytes relayed since the last call to the entry's counters (on `worker`'s
    /// stripe): two adds when bytes moved, nothing otherwise. Called after each pump and at
    /// the close, so bytes moved outside the pump (early data, the inspected hello) count too.
    pub(in crate::engine) fn count_rule_bytes(&mut self, worker: usize) {
        let now = self.bytes();
        if now == self.counted {
            return;
        }
        if let Some(r) = &self.rule {
            r.usage.bytes(
                worker,
                r.rule,
                now.0.saturating_sub(self.counted.0),
                now.1.saturating_sub(self.counted.1),
            );
        }
        self.counted = now;
    }
}

/// A connected upstream (or relay) on its way into a [`Tunnel`]: what `Connecting` or
/// `Relaying` hands over by value.
pub(in crate::engine) struct Upstream {
    pub(in crate::engine) target: Target,
    pub(in crate::engine) upstream: Registered,
    pub(in crate::engine) addr: SocketAddr,
    /// When dialling began (for `connect_ms`).
    pub(in crate::engine) started: Instant,
    /// The upstream may have bytes to read already (its readiness so far).
    pub(in crate::engine) u_rd: bool,
    /// The upstream has reported a hang-up already.
    pub(in crate::engine) u_hup: bool,
}

impl Worker {
    /// The upstream (or the relay's tunnel) is up: answer `200` and start relaying. `shell` is
    /// the connection taken out of its slot by the transition ([`Worker::take_conn`]); it goes
    /// back as a `Tunnel`. `from_up` is data the upstream already sent (after a relay's
    /// answer), delivered after the `200`; with a TLS leg (`tls`), the leg carries both.
    pub(in crate::engine) fn establish(
        &mut self,
        slot: u32,
        shell: Shell,
        up: Upstream,
        from_up: Vec<u8>,
        tls: Option<Box<TlsLeg>>,
    ) {
        let Upstream {
            mut target,
            upstream,
            addr,
            started,
            u_rd,
            u_hup,
        } = up;
        let now = self.now;
        let early = std::mem::take(&mut target.early);
        let tls_settings = Arc::clone(&self.settings.load().tls);
        let hello_timeout = tls_settings.hello_timeout;
        let mut inspect = Inspector::new(tls_settings, &target.authority.host).map(|inspector| {
            Box::new(Inspection {
                inspector,
                started: now,
                deadline: now + hello_timeout,
                held: Vec::new(),
                following: false,
            })
        });
        // Early client bytes are held for the inspector, or go first to the upstream.
        let early = match inspect.as_mut() {
            Some(ins) => {
                if !early.is_empty() {
                    ins.inspector.client_bytes(&early);
                    ins.held = early;
                }
                Vec::new()
            }
            None => early,
        };
        // Through a TLS leg, the leg carries the 200 and the early data; the flows stay empty.
        let mut tls = tls;
        let (up, down) = match tls.as_mut() {
            Some(leg) => {
                if leg.forward_up(&early, &self.shard.bytes_upstream).is_err() {
                    // Never a tunnel: the upstream socket and the leg drop here.
                    self.retire(slot, shell);
                    return;
                }
                (Flow::default(), Flow::default())
            }
            None => (
                Flow::with_pending(early),
                Flow::with_answer(Status::Established.bytes(), from_up),
            ),
        };
        // Only logged: bounded like any peer-supplied string in an event.
        let target_s = clip_display(&target.authority);
        let via = if target.relay_request.is_some() {
            "relay"
        } else {
            "direct"
        };
        info!(
            event_id = events::INFO,
            client = %shell.peer,
            target = %target_s,
            address = %addr,
            via = via,
            connect_ms = now.saturating_duration_since(started).as_secs_f64() * 1e3,
            "tunnel established"
        );
        if let Some(r) = &target.rule {
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            r.usage.established(self.id, r.rule, unix_now);
        }
        let tunnel = Tunnel {
            id: NEXT_TUNNEL_ID.fetch_add(1, Relaxed),
            rule: target.rule,
            tls_version: None,
            sni: None,
            counted: (0, 0),
            upstream,
            target: target_s,
            addr,
            // The readiness seen so far: a read that is bound to fail with EAGAIN is not made.
            u_rd,
            u_wr: true,
            u_hup,
            up,
            down,
            tls,
            inspect,
            started: now,
            last_activity: now,
            authority: target.authority,
            user: target.user,
            cert_subject: None,
        };
        // `shell.c_rd` stays as it is: the head was read until EAGAIN (or its limit), and any
        // wake-up since (while resolving or connecting) has set it again.
        let idle = shell.limits.idle_timeout;
        self.put_conn(slot, shell, State::Tunnel(Box::new(tunnel)));
        self.shard.tunnels_active.fetch_add(1, Relaxed);
        self.shard.tunnels_established.fetch_add(1, Relaxed);
        self.deadlines.set(slot, now + idle.min(hello_timeout));
        self.pump(slot);
    }

    pub(in crate::engine) fn pump(&mut self, slot: u32) {
        let gen = self.gen_of(slot);
        let inspecting_hello = match self.conn_at(slot).map(|c| &c.state) {
            Some(State::Tunnel(t)) => t.inspect.as_ref().is_some_and(|i| !i.following),
            _ => return,
        };
        if inspecting_hello {
            match self.inspect_hello(slot) {
                Hello::Relay => {}
                Hello::Wait | Hello::Closed => return,
            }
        }
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let Conn { shell: conn, state } = conn;
        let State::Tunnel(t) = state else {
            return;
        };
        let Tunnel {
            upstream,
            u_rd,
            u_wr,
            u_hup,
            up,
            down,
            tls,
            inspect,
            last_activity,
            ..
        } = &mut **t;
        // While the handshake is followed, every chunk passes the inspector first. Both taps
        // share the inspector through a RefCell: they are called one after the other, never
        // at once.
        let cell = inspect
            .as_mut()
            .map(|ins| std::cell::RefCell::new(&mut ins.inspector));
        let mut tap_up = |b: &[u8]| {
            cell.as_ref()
                .is_none_or(|c| !matches!(c.borrow_mut().client_bytes(b), Verdict::Deny(_)))
        };
        let mut tap_down = |b: &[u8]| {
            cell.as_ref()
                .is_none_or(|c| !matches!(c.borrow_mut().server_bytes(b), Verdict::Deny(_)))
        };
        let following = cell.is_some();
        // (done, more) or an I/O error.
        let result: io::Result<(bool, bool)> = if let Some(leg) = tls.as_mut() {
            let turn = leg.pump(
                conn.client.as_fd(),
                upstream.as_fd(),
                &mut conn.c_rd,
                &mut conn.c_wr,
                u_rd,
                u_wr,
                &mut self.scratch,
                &self.shard.bytes_upstream,
                &self.shard.bytes_downstream,
                following.then_some(&mut tap_up as Tap<'_>),
                following.then_some(&mut tap_down as Tap<'_>),
            );
            turn.map(|turn| {
                if turn.moved {
                    *last_activity = self.now;
                }
                (turn.done, turn.more)
            })
        } else {
            let mut cx = Cx {
                pool: &mut self.pool,
                scratch: &mut self.scratch,
                splice: conn.splice,
                shard: &self.shard,
                moved: false,
            };
            let a = up.pump(
                conn.client.as_fd(),
                upstream.as_fd(),
                &mut conn.c_rd,
                conn.c_hup,
                u_wr,
                &self.shard.bytes_upstream,
                TURN_BUDGET,
                &mut cx,
                following.then_some(&mut tap_up as Tap<'_>),
            );
            let b = match a {
                Ok(_) => down.pump(
                    upstream.as_fd(),
                    conn.client.as_fd(),
                    u_rd,
                    *u_hup,
                    &mut conn.c_wr,
                    &self.shard.bytes_downstream,
                    TURN_BUDGET,
                    &mut cx,
                    following.then_some(&mut tap_down as Tap<'_>),
                ),
                Err(_) => Ok(Pumped::Blocked),
            };
            if cx.moved {
                *last_activity = self.now;
            }
            match (a, b) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(a), Ok(b)) => Ok((
                    a == Pumped::Done && b == Pumped::Done,
                    a == Pumped::Budget || b == Pumped::Budget,
                )),
            }
        };
        t.count_rule_bytes(self.id);
        if following && self.inspection_verdict(slot) {
            return;
        }
        match result {
            Err(_) => {
                self.shard.error(ErrorKind::TunnelIo);
                self.close(slot, Close::Tunnel("reset"));
            }
            Ok((true, _)) => self.close(slot, Close::Tunnel("closed")),
            Ok((false, true)) => self.runnable.push_back((slot, gen)),
            Ok((false, false)) => {}
        }
    }
}
