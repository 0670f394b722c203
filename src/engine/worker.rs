//! One worker: owns a thread's driver, poll table, listeners, connection table, deadlines, pipe
//! pool and metric shard, and runs the loop that waits on the driver and dispatches what it
//! reports to the connections' phases (`super::conn`) and to accepting (`super::accept`).
//! Nothing here blocks: every syscall is non-blocking and the worker waits only in its driver.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use arc_swap::Cache;
use tracing::info;

use super::conn::auth::AuthCache;
use super::conn::session::{Session, SessionFilter};
use super::conn::{Conn, State};
use super::driver::{Driver, Event, Side};
use super::pipe::PipePool;
use super::registry::{Owner, Registry};
use super::sys;
use super::timers::Deadlines;
use super::ProxyListeners;
use crate::auth::{Checked, Verifier};
use crate::events::limiter::{RefusalLimiter, Summary};
use crate::events::{self};
use crate::metrics::Shard;
use crate::proto::proxy::ProxySources;
use crate::resolve::{Answer, ReplyTo, Resolver};
use crate::settings::{Settings, Shared};

/// Messages from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting; let connections finish until `deadline`, then close them and exit.
    Drain { deadline: Instant },
    /// Close everything and exit now.
    Stop,
    /// A reload published new settings: re-check the open tunnels (`revoke_on_reload`).
    Recheck,
    /// Try every listener now (see [`super::Engine::poke`]).
    Poke,
    /// `splicegate sessions`: answer with the open tunnels `filter` selects.
    Sessions {
        filter: Arc<SessionFilter>,
        reply: tokio::sync::mpsc::UnboundedSender<Vec<Session>>,
    },
    /// `splicegate sessions close`: close the tunnels `filter` selects, answer how many.
    CloseSessions {
        filter: Arc<SessionFilter>,
        reply: tokio::sync::mpsc::UnboundedSender<usize>,
    },
}

/// Everything a worker needs, built by [`super::Engine::start`].
pub struct WorkerSetup {
    pub id: usize,
    pub driver: Driver,
    pub listeners: Vec<OwnedFd>,
    pub settings: Shared,
    pub resolver: Resolver,
    pub reply: ReplyTo,
    pub answers: mpsc::Receiver<Answer>,
    pub commands: mpsc::Receiver<Command>,
    pub shard: Arc<Shard>,
    /// How many workers share `limits.max_connections`.
    pub workers: usize,
    /// Checks client passwords off the worker.
    pub verifier: Verifier,
    /// The listeners with the PROXY protocol, by bound address.
    pub proxy: Arc<ProxyListeners>,
}

/// Deadlines handled per turn. A burst of timeouts (9,000 slowloris heads falling due within a
/// second or two, each answered 408 and logged) is expired a batch per turn, with the driver
/// polled in between, so the other connections' events wait for one batch, not for the burst.
pub(super) const TIMER_BUDGET: usize = 128;

pub struct Worker {
    pub(super) id: usize,
    pub(super) driver: Driver,
    /// Which connection socket each driver key belongs to; its guards deregister on drop.
    pub(super) registry: Registry,
    /// Listener fds by index; `None` once closed for a drain.
    pub(super) listeners: Vec<Option<OwnedFd>>,
    /// By listener index: whom a listener with the PROXY protocol accepts the header from
    /// (`None` for a plain listener). Found once, at start, by each socket's own address.
    pub(super) listener_proxy: Vec<Option<Arc<ProxySources>>>,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u32>,
    pub(super) live: usize,
    /// One deadline per open connection, by slot.
    pub(super) deadlines: Deadlines,
    pub(super) runnable: VecDeque<(u32, u32)>,
    pub(super) pending_accept: Vec<u32>,
    pub(super) pool: PipePool,
    pub(super) scratch: Box<[u8]>,
    pub(super) settings: Cache<Shared, Arc<Settings>>,
    pub(super) resolver: Resolver,
    pub(super) reply: ReplyTo,
    pub(super) answers: mpsc::Receiver<Answer>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) shard: Arc<Shard>,
    pub(super) workers: usize,
    pub(super) verifier: Verifier,
    pub(super) checked_tx: mpsc::Sender<Checked>,
    pub(super) checked_rx: mpsc::Receiver<Checked>,
    /// Logins this worker has seen accepted (see `conn::auth`).
    pub(super) auth_cache: AuthCache,
    /// A spare fd, closed to accept-and-refuse one client when the process is out of fds.
    pub(super) spare: Option<OwnedFd>,
    pub(super) accept_paused_until: Option<Instant>,
    /// The current pause after a persistent accept error (zero after a successful accept).
    pub(super) accept_backoff: Duration,
    /// Per-client accept errors in a row since the last successful accept (see
    /// `Worker::on_accept_error`); written by accepting only.
    pub(super) accept_client_errors: usize,
    pub(super) last_fd_warning: Option<Instant>,
    pub(super) drain_deadline: Option<Instant>,
    /// The worker's clock: read once per loop turn, right after the driver's wait, and the
    /// only time every phase computes its deadlines and durations from. Written only by
    /// [`Worker::run`] (the real monotonic clock) and, under the fake driver, by the unit tests
    /// (a virtual clock they set by hand).
    pub(super) now: Instant,
    pub(super) events: Vec<Event>,
    /// The rate limit on this worker's refusal events (`logging:`).
    pub(super) refusal_log: RefusalLimiter,
    /// Summaries of suppressed refusal events waiting to be logged (a reused buffer).
    pub(super) suppressed: Vec<Summary>,
}

pub(super) struct Slot {
    pub(super) gen: u32,
    pub(super) conn: Option<Conn>,
}

impl Worker {
    pub fn new(s: WorkerSetup) -> Worker {
        let (checked_tx, checked_rx) = mpsc::channel();
        let mut settings = Cache::new(s.settings);
        let limits = settings.load().limits.clone();
        let workers = s.workers.max(1);
        let pipes = if limits.max_pipes == 0 {
            (limits.max_connections.div_ceil(workers).saturating_mul(2)).clamp(64, 4096)
        } else {
            limits.max_pipes
        };
        let scratch = vec![0u8; limits.pipe_size.clamp(16 * 1024, 1 << 20)].into_boxed_slice();
        // getsockname(2) on a listening socket this process owns cannot fail short of a bad
        // fd; the address is the one the engine bound (or was handed) it under.
        let listener_proxy = s
            .listeners
            .iter()
            .map(|fd| {
                let local = socket2::SockRef::from(fd).local_addr().ok()?.as_socket()?;
                s.proxy.get(&local).cloned()
            })
            .collect();
        Worker {
            id: s.id,
            driver: s.driver,
            registry: Registry::new(),
            listeners: s.listeners.into_iter().map(Some).collect(),
            listener_proxy,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            deadlines: Deadlines::new(),
            runnable: VecDeque::new(),
            pending_accept: Vec::new(),
            pool: PipePool::new(limits.pipe_size, pipes, Arc::clone(&s.shard)),
            scratch,
            settings,
            resolver: s.resolver,
            reply: s.reply,
            answers: s.answers,
            commands: s.commands,
            shard: s.shard,
            workers,
            verifier: s.verifier,
            checked_tx,
            checked_rx,
            auth_cache: AuthCache::default(),
            spare: sys::spare_fd().ok(),
            accept_paused_until: None,
            accept_backoff: Duration::ZERO,
            accept_client_errors: 0,
            last_fd_warning: None,
            drain_deadline: None,
            now: Instant::now(),
            events: Vec::with_capacity(1024),
            refusal_log: RefusalLimiter::new(),
            suppressed: Vec::new(),
        }
    }

    /// Serve until drained or stopped.
    pub fn run(mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(fd) = l {
                // Accepted sockets inherit TCP_NODELAY from their listener, which saves a
                // setsockopt per connection; set here so that inherited listeners (hand-over,
                // socket activation) carry it too. Failing only costs latency, not correctness.
                let _ = socket2::SockRef::from(fd).set_tcp_nodelay(true);
                self.driver.add_listener(i as u32, fd.as_fd())?;
            }
        }
        if forced_exit(self.id) {
            return Err(io::Error::other(
                "forced to exit by SPLICEGATE_TEST_WORKER_EXIT (test build)",
            ));
        }
        loop {
            let timeout = self.next_timeout();
            self.registry.flush(&mut self.driver);
            let mut events = std::mem::take(&mut self.events);
            self.driver.wait(timeout, &mut events)?;
            self.now = Instant::now();
            for ev in events.drain(..) {
                self.on_event(ev);
            }
            self.events = events;
            while let Ok(a) = self.answers.try_recv() {
                self.on_answer(a);
            }
            while let Ok(c) = self.checked_rx.try_recv() {
                self.on_checked(c);
            }
            while let Ok(c) = self.commands.try_recv() {
                match c {
                    Command::Drain { deadline } => self.start_drain(deadline),
                    Command::Recheck => self.revoke_disallowed(),
                    Command::Poke => {
                        for (i, l) in self.listeners.iter().enumerate() {
                            if l.is_some() && self.accept_paused_until.is_none() {
                                self.driver.rearm_listener(i as u32);
                                self.pending_accept.push(i as u32);
                            }
                        }
                    }
                    // A gone asker (timed out) is no error.
                    Command::Sessions { filter, reply } => {
                        let _ = reply.send(self.sessions(&filter));
                    }
                    Command::CloseSessions { filter, reply } => {
                        let _ = reply.send(self.close_sessions(&filter));
                    }
                    Command::Stop => {
                        self.close_all();
                        self.flush_refusal_log();
                        return Ok(());
                    }
                }
            }
            for _ in 0..self.runnable.len() {
                if let Some((slot, gen)) = self.runnable.pop_front() {
                    if self.is_current(slot, gen) {
                        self.drive(slot);
                    }
                }
            }
            for l in std::mem::take(&mut self.pending_accept) {
                self.accept_loop(l);
            }
            let now = self.now;
            self.fire_timers(now);
            self.shard.timer_entries.store(
                self.deadlines.len() as i64,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.sweep_refusal_log(now);
            if let Some(until) = self.accept_paused_until {
                if now >= until {
                    self.accept_paused_until = None;
                    for i in 0..self.listeners.len() as u32 {
                        self.driver.rearm_listener(i);
                        self.pending_accept.push(i);
                    }
                }
            }
            if let Some(deadline) = self.drain_deadline {
                if self.live == 0 {
                    self.flush_refusal_log();
                    return Ok(());
                }
                if now >= deadline {
                    info!(
                        event_id = events::INFO,
                        worker = self.id,
                        open = self.live,
                        "drain timeout reached, closing remaining connections"
                    );
                    self.close_all();
                    self.flush_refusal_log();
                    return Ok(());
                }
            }
        }
    }

    pub(super) fn next_timeout(&self) -> Option<Duration> {
        if !self.runnable.is_empty() || !self.pending_accept.is_empty() {
            return Some(Duration::ZERO);
        }
        // The turn's clock: a deadline that fell due while the turn ran is waited for no
        // longer than that turn took.
        let now = self.now;
        let mut next = self.deadlines.next();
        for t in [
            self.accept_paused_until,
            self.drain_deadline,
            self.refusal_log.next_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    pub(super) fn is_current(&self, slot: u32, gen: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.gen == gen && s.conn.is_some())
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { listener, result } => {
                // Test builds: an injected error replaces the connection (which closes).
                let result = match super::accept::injected_accept_error() {
                    Some(e) => Err(e),
                    None => result,
                };
                match result {
                    Ok(fd) => {
                        self.accepted();
                        self.on_accept(listener, fd)
                    }
                    Err(e) => {
                        if self.on_accept_error(listener, e) {
                            // More clients may be queued behind the one refused.
                            self.pending_accept.push(listener);
                        }
                    }
                }
                if self.accept_paused_until.is_none() {
                    self.driver.rearm_listener(listener);
                }
            }
            Event::ListenerReady { listener } => self.accept_loop(listener),
            Event::Ready {
                slot,
                gen,
                readable,
                writable,
                hup,
            } => {
                let Some(Owner { slot, gen, side }) = self.registry.owner(slot, gen) else {
                    return;
                };
                let Some(conn) = self.conn_mut(slot, gen) else {
                    return;
                };
                match side {
                    Side::Client => {
                        conn.c_rd |= readable;
                        conn.c_wr |= writable;
                        conn.c_hup |= hup;
                    }
                    Side::Upstream => match &mut conn.state {
                        State::Tunnel(t) => {
                            t.u_rd |= readable;
                            t.u_wr |= writable;
                            t.u_hup |= hup;
                        }
                        State::Relaying(r) => {
                            r.u_rd |= readable;
                            r.u_wr |= writable;
                        }
                        State::Connecting(_) => {}
                        _ => return,
                    },
                }
                if side == Side::Upstream {
                    if let Some(State::Connecting(_)) = self.conn_mut(slot, gen).map(|c| &c.state) {
                        self.on_connect_ready(slot, readable, writable, hup);
                        return;
                    }
                }
                self.drive(slot);
            }
            Event::Wake => {}
        }
    }

    pub(super) fn conn_mut(&mut self, slot: u32, gen: u32) -> Option<&mut Conn> {
        let s = self.slots.get_mut(slot as usize)?;
        if s.gen != gen {
            return None;
        }
        s.conn.as_mut()
    }

    pub(super) fn conn_at(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize)?.conn.as_mut()
    }

    pub(super) fn gen_of(&self, slot: u32) -> u32 {
        self.slots.get(slot as usize).map_or(0, |s| s.gen)
    }

    // ---- accepting -------------------------------------------------------------------------

    // ---- the state machine ------------------------------------------------------------------

    // ---- refusals ---------------------------------------------------------------------------

    // ---- timers, drain, close ---------------------------------------------------------------

    /// Handle the deadlines due at `now`, at most [`TIMER_BUDGET`] of them: the rest stay due,
    /// so the next turn's wait does not block and they go in the turns that follow.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        for _ in 0..TIMER_BUDGET {
            let Some(slot) = self.deadlines.pop_due(now) else {
                return;
            };
            let Some(conn) = self.conn_at(slot) else {
                continue;
            };
            let due = match &conn.state {
                State::Tunnel(t) => {
                    let idle = t.last_activity + conn.limits.idle_timeout;
                    t.inspect.as_ref().map_or(idle, |i| idle.min(i.deadline))
                }
                _ => conn.deadline,
            };
            if due > now {
                self.deadlines.set(slot, due);
                continue;
            }
            self.expire(slot);
        }
    }

    pub(super) fn start_drain(&mut self, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(fd) = l.take() {
                self.driver.remove_listener(i as u32, fd.as_fd());
            }
        }
        self.pending_accept.clear();
    }
}

impl Worker {
    // ---- the refusal-event rate limit -------------------------------------------------------
}

/// Test builds only: `SPLICEGATE_TEST_WORKER_EXIT=<worker id>` makes that worker stop on an
/// error as soon as it first runs (once per process: its restart runs normally), so tests can
/// show what a dead worker leaves behind. Compiled out of release builds.
#[cfg(debug_assertions)]
fn forced_exit(id: usize) -> bool {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    std::env::var("SPLICEGATE_TEST_WORKER_EXIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(id)
        && !DONE.swap(true, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(debug_assertions))]
fn forced_exit(_id: usize) -> bool {
    false
}
