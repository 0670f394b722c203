//! One worker: a thread with its own driver, listeners, connection table, timers and pipe pool.
//!
//! A connection goes `Head` (read and parse the CONNECT head) -> `Resolving` (only for names
//! without a static override) -> `Connecting` -> `Tunnel`; any refusal goes to `Refusing` (write
//! the canned answer) -> `Lingering` (half-closed, discard what the client still sends, so the
//! answer is not lost to a reset) -> closed. Nothing here blocks: every syscall is non-blocking
//! and the worker waits only in its driver.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use arc_swap::Cache;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{debug, info, warn};

use super::driver::{Driver, Event, Key, Side};
use super::flow::{Cx, Flow, Pumped, Tap};
use super::pipe::PipePool;
use super::sys;
use super::tls_leg::TlsLeg;
use crate::auth::{self, Checked, Verifier};
use crate::config::{DataPath, Limits};
use crate::events::{self, ErrorKind, Reject};
use crate::metrics::Shard;
use crate::metrics::TLS_VERSIONS;
use crate::policy::Denial;
use crate::proto::connect::{parse_head, Authority, HeadError, Host};
use crate::proto::response::Status;
use crate::proto::tls::{CertCheck, Inspector, Reason as TlsReason, Verdict};
use crate::relay::{self, RelayHost};
use crate::resolve::{Answer, ReplyTo, ResolveError, Resolved, Resolver, Source};
use crate::settings::{Settings, Shared};

/// Messages from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting; let connections finish until `deadline`, then close them and exit.
    Drain { deadline: Instant },
    /// Close everything and exit now.
    Stop,
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
}

/// Accepted credentials a worker remembers (each entry is one header value).
const AUTH_CACHE: usize = 16 * 1024;

/// Bytes one direction may read per turn before other connections get theirs.
const TURN_BUDGET: usize = 1 << 20;
/// Accepts per listener per turn.
const ACCEPT_BUDGET: usize = 128;
/// How long a refused client may keep sending before the socket is closed.
const LINGER: Duration = Duration::from_secs(2);
/// How much a refused client may send while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// Extra room past `max_header_bytes` for early tunnel data read with the head.
const EARLY_DATA_ROOM: usize = 16 * 1024;
/// Pause after running out of fds with no spare to refuse with.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub struct Worker {
    id: usize,
    driver: Driver,
    /// Listener fds by index; `None` once closed for a drain.
    listeners: Vec<Option<OwnedFd>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    runnable: VecDeque<(u32, u32)>,
    pending_accept: Vec<u32>,
    pool: PipePool,
    scratch: Box<[u8]>,
    settings: Cache<Shared, Arc<Settings>>,
    resolver: Resolver,
    reply: ReplyTo,
    answers: mpsc::Receiver<Answer>,
    commands: mpsc::Receiver<Command>,
    shard: Arc<Shard>,
    workers: usize,
    verifier: Verifier,
    checked_tx: mpsc::Sender<Checked>,
    checked_rx: mpsc::Receiver<Checked>,
    /// `Proxy-Authorization` value -> (user, the users table it was checked against).
    auth_cache: HashMap<Vec<u8>, (String, usize)>,
    /// A spare fd, closed to accept-and-refuse one client when the process is out of fds.
    spare: Option<OwnedFd>,
    accept_paused_until: Option<Instant>,
    last_fd_warning: Option<Instant>,
    drain_deadline: Option<Instant>,
    events: Vec<Event>,
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

struct Conn {
    client: OwnedFd,
    peer: SocketAddr,
    /// The limits in force when the connection was accepted (a reload does not change them).
    limits: Limits,
    /// Relay with `splice(2)` (else copy through user space).
    splice: bool,
    /// Deadline of the current phase (not used by `Tunnel`, which runs on its idle timer).
    deadline: Instant,
    c_rd: bool,
    c_wr: bool,
    state: State,
}

enum State {
    Head {
        buf: Vec<u8>,
    },
    Resolving(Target),
    /// Waiting for the verifier to check the client's password.
    Authenticating(Target),
    Connecting(Box<Connecting>),
    Relaying(Box<Relaying>),
    Tunnel(Box<Tunnel>),
    Refusing {
        bytes: std::borrow::Cow<'static, [u8]>,
        sent: usize,
    },
    Lingering {
        discarded: usize,
    },
}

impl Target {
    fn new(authority: Authority, early: Vec<u8>, proxy_auth: Option<Vec<u8>>) -> Target {
        Target {
            authority,
            early,
            relay_request: None,
            proxy_auth,
            user: None,
        }
    }
}

impl Conn {
    /// Move the state out to transform it, leaving a placeholder the caller replaces.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Lingering { discarded: 0 })
    }
}

/// An allowed CONNECT on its way to a tunnel.
struct Target {
    authority: Authority,
    /// Client bytes that followed the head (an early ClientHello): sent upstream first.
    early: Vec<u8>,
    /// With a relay proxy: the CONNECT request for the relay (the addresses dialled are the
    /// relay's, and the private-destination guard does not apply to them).
    relay_request: Option<Vec<u8>>,
    /// The `Proxy-Authorization` header value, when client authentication is on.
    proxy_auth: Option<Vec<u8>>,
    /// The authenticated user.
    user: Option<String>,
}

/// Waiting for the relay proxy's answer to our CONNECT.
struct Relaying {
    target: Target,
    upstream: OwnedFd,
    addr: SocketAddr,
    started: Instant,
    sent: usize,
    answer: Vec<u8>,
    u_rd: bool,
    u_wr: bool,
    /// The TLS session to an `https://` relay.
    tls: Option<Box<TlsLeg>>,
}

struct Connecting {
    target: Target,
    addrs: Vec<SocketAddr>,
    next: usize,
    upstream: Option<OwnedFd>,
    addr: SocketAddr,
    started: Instant,
}

struct Tunnel {
    upstream: OwnedFd,
    target: String,
    addr: SocketAddr,
    u_rd: bool,
    u_wr: bool,
    up: Flow,
    down: Flow,
    /// Through an `https://` relay the relay leg is TLS and both directions copy through it
    /// (the `Flow`s are unused).
    tls: Option<Box<TlsLeg>>,
    /// TLS inspection until its verdict (`tls.inspect`).
    inspect: Option<Box<Inspection>>,
    started: Instant,
    last_activity: Instant,
}

/// A tunnel's TLS handshake under inspection (see [`crate::proto::tls`] for the contract).
struct Inspection {
    inspector: Inspector,
    started: Instant,
    deadline: Instant,
    /// Client bytes read but not forwarded: everything up to the end of the ClientHello.
    held: Vec<u8>,
    /// The ClientHello passed; both directions copy through the inspector until its verdict.
    following: bool,
}

/// The outcome of a turn of the hello phase.
enum Hello {
    /// Keep waiting for the client's bytes.
    Wait,
    /// The tunnel was closed.
    Closed,
    /// Go on relaying (allowed, or following the handshake).
    Relay,
}

/// How a connection leaves the table.
enum Close {
    /// Quietly: client went away before a decision, or a lingering refusal ended.
    Quiet,
    /// A tunnel ended; the reason is logged with its byte counts.
    Tunnel(&'static str),
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
        Worker {
            id: s.id,
            driver: s.driver,
            listeners: s.listeners.into_iter().map(Some).collect(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
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
            auth_cache: HashMap::new(),
            spare: sys::spare_fd().ok(),
            accept_paused_until: None,
            last_fd_warning: None,
            drain_deadline: None,
            events: Vec::with_capacity(1024),
        }
    }

    /// Serve until drained or stopped.
    pub fn run(mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(fd) = l {
                self.driver.add_listener(i as u32, fd.as_raw_fd())?;
            }
        }
        loop {
            let timeout = self.next_timeout();
            let mut events = std::mem::take(&mut self.events);
            self.driver.wait(timeout, &mut events)?;
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
                    Command::Stop => {
                        self.close_all();
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
            let now = Instant::now();
            self.fire_timers(now);
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
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.runnable.is_empty() || !self.pending_accept.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = self.timers.peek().map(|Reverse((t, _, _))| *t);
        for t in [self.accept_paused_until, self.drain_deadline]
            .into_iter()
            .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    fn is_current(&self, slot: u32, gen: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.gen == gen && s.conn.is_some())
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { listener, result } => {
                match result {
                    Ok(fd) => self.on_accept(fd),
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
                side,
                readable,
                writable,
            } => {
                let Some(conn) = self.conn_mut(slot, gen) else {
                    return;
                };
                match side {
                    Side::Client => {
                        conn.c_rd |= readable;
                        conn.c_wr |= writable;
                    }
                    Side::Upstream => match &mut conn.state {
                        State::Tunnel(t) => {
                            t.u_rd |= readable;
                            t.u_wr |= writable;
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
                        self.on_connect_ready(slot);
                        return;
                    }
                }
                self.drive(slot);
            }
            Event::Wake => {}
        }
    }

    fn conn_mut(&mut self, slot: u32, gen: u32) -> Option<&mut Conn> {
        let s = self.slots.get_mut(slot as usize)?;
        if s.gen != gen {
            return None;
        }
        s.conn.as_mut()
    }

    fn conn_at(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize)?.conn.as_mut()
    }

    fn gen_of(&self, slot: u32) -> u32 {
        self.slots.get(slot as usize).map_or(0, |s| s.gen)
    }

    // ---- accepting -------------------------------------------------------------------------

    fn accept_loop(&mut self, listener: u32) {
        for _ in 0..ACCEPT_BUDGET {
            if self.accept_paused_until.is_some() {
                return;
            }
            let Some(Some(l)) = self.listeners.get(listener as usize) else {
                return;
            };
            match sys::accept(l.as_fd()) {
                Ok(fd) => self.on_accept(fd),
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

    /// Returns whether accepting should go on now (a client was refused and more may wait).
    fn on_accept_error(&mut self, listener: u32, e: io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
                let now = Instant::now();
                if self
                    .last_fd_warning
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_fd_warning = Some(now);
                    warn!(
                        event_id = events::INTERNAL_ERROR,
                        worker = self.id,
                        reason = "fd_exhausted",
                        status = 503,
                        error = %e,
                        "out of file descriptors: refusing new clients with 503"
                    );
                }
                self.refuse_with_spare(listener)
            }
            // The client went away between SYN and accept, or a transient error.
            _ => {
                debug!(worker = self.id, error = %e, "accept failed");
                true
            }
        }
    }

    /// Out of fds: refuse the clients already waiting (free the spare, accept one, answer 503,
    /// close it, take the spare back), then pause accepting for a moment. The pause is what keeps
    /// this from spinning: `accept4` (and io_uring's accept) fail with EMFILE before looking at
    /// the queue, so without it every retry would fail at once. Returns whether to go on
    /// accepting now (never).
    fn refuse_with_spare(&mut self, listener: u32) -> bool {
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
        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        false
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        let sock = SockRef::from(&fd);
        let peer = match sock.peer_addr().ok().and_then(|a| a.as_socket()) {
            Some(p) => p,
            None => return, // already disconnected
        };
        // A connection accepted just as the drain began (an io_uring accept that completed
        // before its cancellation) is served like any other: its client is already connected.
        let current = self.settings.load();
        if !current.policy.client_allowed(peer.ip()) {
            // Not even HTTP for it: closed at accept.
            self.shard.reject(Reject::ClientNetwork);
            warn!(
                event_id = events::NOT_ALLOWED,
                client = %peer,
                reason = Reject::ClientNetwork.as_str(),
                "client address not in allowed_client_networks: connection closed"
            );
            return;
        }
        let limits = current.limits.clone();
        let splice = current.data_path == DataPath::Splice;
        if self.live >= limits.max_connections.div_ceil(self.workers) {
            refuse_now(&fd, Status::ServiceUnavailable);
            self.shard.reject(Reject::OverCapacity);
            warn!(
                event_id = events::INTERNAL_ERROR,
                client = %peer,
                reason = Reject::OverCapacity.as_str(),
                status = 503,
                "connection limit reached"
            );
            return;
        }
        let _ = sock.set_tcp_nodelay(true);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.gen_of(slot);
        let key = Key::Conn {
            slot,
            gen,
            side: Side::Client,
        };
        if let Err(e) = self.driver.register(fd.as_raw_fd(), key) {
            warn!(event_id = events::INTERNAL_ERROR, client = %peer, error = %e, "cannot watch client socket");
            self.shard.error(ErrorKind::Internal);
            self.free.push(slot);
            return;
        }
        let now = Instant::now();
        let deadline = now + limits.header_timeout;
        self.slots[slot as usize].conn = Some(Conn {
            client: fd,
            peer,
            limits,
            splice,
            deadline,
            c_rd: false,
            c_wr: true,
            state: State::Head {
                buf: Vec::with_capacity(1024),
            },
        });
        self.live += 1;
        self.shard.active_connections.fetch_add(1, Relaxed);
        self.shard.client_opened(peer.ip());
        self.timers.push(Reverse((deadline, slot, gen)));
    }

    // ---- the state machine ------------------------------------------------------------------

    fn drive(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        match conn.state {
            State::Head { .. } => self.read_head(slot),
            State::Tunnel(_) => self.pump(slot),
            State::Refusing { .. } => self.write_refusal(slot),
            State::Lingering { .. } => self.linger(slot),
            State::Relaying(_) => self.relay_handshake(slot),
            State::Resolving(_) | State::Authenticating(_) | State::Connecting(_) => {}
        }
    }

    fn read_head(&mut self, slot: u32) {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let max = conn.limits.max_header_bytes;
        let State::Head { buf } = &mut conn.state else {
            return;
        };
        let limit = max + EARLY_DATA_ROOM;
        let mut eof = false;
        while conn.c_rd && buf.len() < limit {
            let old = buf.len();
            let want = (limit - old).min(8192);
            buf.resize(old + want, 0);
            match sys::recv(conn.client.as_fd(), &mut buf[old..]) {
                Ok(0) => {
                    buf.truncate(old);
                    eof = true;
                    break;
                }
                Ok(n) => buf.truncate(old + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(old);
                    conn.c_rd = false;
                }
                Err(_) => {
                    buf.truncate(old);
                    eof = true;
                    break;
                }
            }
        }
        let parsed = parse_head(buf, max);
        match parsed {
            Ok(None) if eof => self.close(slot, Close::Quiet),
            Ok(None) => {
                if buf.len() >= limit {
                    self.refuse(
                        slot,
                        Status::HeaderTooLarge,
                        Reject::HeaderTooLarge,
                        "header block too large",
                        None,
                    );
                }
            }
            Ok(Some(head)) => {
                let proxy_auth = crate::proto::connect::header(buf, &head, "proxy-authorization")
                    .map(<[u8]>::to_vec);
                let early = buf.split_off(head.head_len.min(buf.len()));
                self.shard.connect_requests.fetch_add(1, Relaxed);
                let peer = conn.peer;
                debug!(
                    event_id = events::CONNECT_RECEIVED,
                    client = %peer,
                    target = %head.authority,
                    "CONNECT received"
                );
                self.decide(slot, Target::new(head.authority, early, proxy_auth));
            }
            Err(HeadError::NotConnect) => self.refuse(
                slot,
                Status::MethodNotAllowed,
                Reject::NotConnect,
                "not an HTTP CONNECT request",
                None,
            ),
            Err(HeadError::Malformed(m)) => self.refuse(
                slot,
                Status::BadRequest,
                Reject::Malformed,
                m.as_str(),
                None,
            ),
            Err(HeadError::TooLarge) => self.refuse(
                slot,
                Status::HeaderTooLarge,
                Reject::HeaderTooLarge,
                "header block too large",
                None,
            ),
        }
    }

    /// Policy on the authority, then on addresses known without DNS.
    fn decide(&mut self, slot: u32, mut target: Target) {
        if target.user.is_none() && self.settings.load().auth.is_some() {
            match self.authenticate(slot, &mut target) {
                Some(user) => target.user = Some(user),
                // Refused, or waiting for the verifier.
                None => return,
            }
        }
        let current = self.settings.load();
        let policy = &current.policy;
        let host = target.authority.host.as_policy_str();
        if let Err(d) =
            policy.check_target_for(&host, target.authority.port, target.user.as_deref())
        {
            self.deny(slot, d, &target.authority, None);
            return;
        }
        let literal = match &target.authority.host {
            Host::V4(ip) => Some(IpAddr::V4(*ip)),
            Host::V6(ip) => Some(IpAddr::V6(*ip)),
            Host::Name(_) => None,
        };
        if let Some(relay) = &current.relay {
            // The relay resolves names itself; an IP literal can still be checked here.
            if let Some(ip) = literal {
                if let Err(d) = policy.check_address(ip) {
                    self.deny(slot, d, &target.authority, Some(ip));
                    return;
                }
            }
            target.relay_request = Some(relay.connect_request(&target.authority));
            match &relay.host {
                RelayHost::Ip(ip) => {
                    let addrs = vec![SocketAddr::new(*ip, relay.port)];
                    self.connect_to(slot, target, addrs);
                }
                RelayHost::Name(name) => {
                    let name = name.clone();
                    self.resolve(slot, target, &name);
                }
            }
            return;
        }
        let known: Option<Vec<IpAddr>> = match (&target.authority.host, literal) {
            (_, Some(ip)) => Some(vec![ip]),
            (Host::Name(n), None) => policy.host_override(n).map(|a| a.to_vec()),
            _ => None,
        };
        match known {
            Some(ips) => self.connect_checked(slot, target, ips),
            None => self.resolve(slot, target, &host),
        }
    }

    /// Client authentication: `Some(user)` when the credentials are known good (cached); `None`
    /// when the request was refused or handed to the verifier (the connection waits in
    /// `Authenticating`).
    fn authenticate(&mut self, slot: u32, target: &mut Target) -> Option<String> {
        let auth = Arc::clone(self.settings.load().auth.as_ref()?);
        let peer = self.conn_at(slot)?.peer;
        let now = Instant::now();
        let Some(header) = target.proxy_auth.take() else {
            // The normal first step of a client that waits to be asked: no event, no count.
            debug!(client = %peer, target = %target.authority, "proxy authentication required");
            self.start_refusal_bytes(slot, std::borrow::Cow::Owned(auth::challenge(&auth.realm)));
            return None;
        };
        let table = Arc::as_ptr(&auth) as usize;
        if let Some((user, at)) = self.auth_cache.get(&header) {
            if *at == table {
                return Some(user.clone());
            }
        }
        if auth.locked_out(peer.ip(), now) {
            self.auth_refusal(
                slot,
                &target.authority,
                Status::TooManyRequests,
                None,
                "too many failed logins from this address",
            );
            return None;
        }
        let Some((user, password)) = auth::parse_basic(&header) else {
            auth.failed(peer.ip(), now);
            self.auth_refusal(
                slot,
                &target.authority,
                Status::ProxyAuthRequired,
                None,
                "malformed Proxy-Authorization",
            );
            return None;
        };
        let gen = self.gen_of(slot);
        let queued = self.verifier.check(
            Arc::clone(&auth),
            user,
            password,
            slot,
            gen,
            &self.checked_tx,
            &self.reply,
        );
        if !queued {
            self.auth_refusal(
                slot,
                &target.authority,
                Status::ServiceUnavailable,
                None,
                "login queue full",
            );
            return None;
        }
        target.proxy_auth = Some(header);
        let timeout = self.conn_at(slot)?.limits.resolve_timeout;
        let placeholder = Target::new(target.authority.clone(), Vec::new(), None);
        let taken = std::mem::replace(target, placeholder);
        let conn = self.conn_at(slot)?;
        conn.deadline = now + timeout;
        conn.state = State::Authenticating(taken);
        self.timers.push(Reverse((now + timeout, slot, gen)));
        None
    }

    /// The verifier's answer for a connection in `Authenticating`.
    fn on_checked(&mut self, c: Checked) {
        let Some(conn) = self.conn_mut(c.slot, c.gen) else {
            return;
        };
        if !matches!(conn.state, State::Authenticating(_)) {
            return;
        }
        let peer = conn.peer;
        let State::Authenticating(mut target) = conn.take_state() else {
            return;
        };
        let Some(auth) = self.settings.load().auth.clone() else {
            // Authentication was switched off by a reload meanwhile.
            self.decide(c.slot, target);
            return;
        };
        if c.ok {
            if let Some(header) = target.proxy_auth.take() {
                if self.auth_cache.len() >= AUTH_CACHE {
                    self.auth_cache.clear();
                }
                let table = Arc::as_ptr(&auth) as usize;
                self.auth_cache.insert(header, (c.user.clone(), table));
            }
            auth.succeeded(peer.ip());
            target.user = Some(c.user);
            self.decide(c.slot, target);
        } else {
            auth.failed(peer.ip(), Instant::now());
            let detail = format!("wrong user name or password for user {}", c.user);
            self.auth_refusal(
                c.slot,
                &target.authority,
                Status::ProxyAuthRequired,
                Some(&c.user),
                &detail,
            );
        }
    }

    /// A failed or refused login: event 105, `rejections_total{reason="client_auth"}`, and the
    /// answer (a fresh 407 challenge, or 429/503).
    fn auth_refusal(
        &mut self,
        slot: u32,
        target: &Authority,
        status: Status,
        user: Option<&str>,
        detail: &str,
    ) {
        self.shard.reject(Reject::ClientAuth);
        if let Some(conn) = self.conn_at(slot) {
            let peer = conn.peer;
            warn!(
                event_id = events::NOT_ALLOWED,
                client = %peer,
                target = %target,
                reason = Reject::ClientAuth.as_str(),
                user = user.unwrap_or(""),
                detail = detail,
                status = status.code(),
                "client authentication failed"
            );
        }
        match (status, self.settings.load().auth.as_ref()) {
            (Status::ProxyAuthRequired, Some(a)) => {
                let challenge = auth::challenge(&a.realm);
                self.start_refusal_bytes(slot, std::borrow::Cow::Owned(challenge));
            }
            _ => self.start_refusal(slot, status),
        }
    }

    /// Hand `name` to the resolver; the answer comes back through [`Worker::on_answer`].
    fn resolve(&mut self, slot: u32, target: Target, name: &str) {
        let gen = self.gen_of(slot);
        let now = Instant::now();
        let Some(timeout) = self.conn_at(slot).map(|c| c.limits.resolve_timeout) else {
            return;
        };
        let deadline = now + timeout;
        if !self.resolver.lookup(name, slot, gen, &self.reply) {
            self.fail(
                slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "resolver unavailable",
            );
            return;
        }
        if let Some(conn) = self.conn_at(slot) {
            conn.deadline = deadline;
            conn.state = State::Resolving(target);
        }
        self.timers.push(Reverse((deadline, slot, gen)));
    }

    fn on_answer(&mut self, a: Answer) {
        let Some(conn) = self.conn_mut(a.slot, a.gen) else {
            return;
        };
        if !matches!(conn.state, State::Resolving(_)) {
            return;
        }
        let State::Resolving(target) = conn.take_state() else {
            return;
        };
        match a.result {
            Ok(r) if target.relay_request.is_some() => {
                let port = self.settings.load().relay.as_ref().map_or(0, |r| r.port);
                let addrs = r
                    .ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                self.connect_to(a.slot, target, addrs);
            }
            Ok(r) => {
                if let Some(ip) = self.private_link_refusal(&r) {
                    let d = Denial::PrivateDestination(crate::policy::classify(ip));
                    self.deny(a.slot, d, &target.authority, Some(ip));
                    return;
                }
                self.connect_checked(a.slot, target, r.ips)
            }
            Err(ResolveError::NotFound) => self.fail(
                a.slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "name not found",
            ),
            Err(ResolveError::Failed) => self.fail(
                a.slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "name resolution failed",
            ),
            Err(ResolveError::Timeout) => self.fail(
                a.slot,
                Some(&target.authority),
                ErrorKind::ResolveTimeout,
                Status::GatewayTimeout,
                "resolver did not answer in time",
            ),
        }
    }

    /// With `resolver.private_link`, a private (non-public) address from DNS is allowed only
    /// through a `privatelink.` CNAME chain; the hosts file is the operator's own pin and is
    /// checked by the private-destination guard alone. Returns the address to refuse.
    fn private_link_refusal(&self, r: &Resolved) -> Option<IpAddr> {
        if !self.resolver.private_link()
            || r.source
                != (Source::Dns {
                    private_link: false,
                })
        {
            return None;
        }
        r.ips
            .iter()
            .copied()
            .find(|ip| !crate::policy::classify(*ip).is_public())
    }

    /// Every address is checked before any is dialled: one refused address refuses the request
    /// (a name that resolves to a mix of public and private addresses is a rebinding signal).
    fn connect_checked(&mut self, slot: u32, target: Target, ips: Vec<IpAddr>) {
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
    fn connect_to(&mut self, slot: u32, target: Target, addrs: Vec<SocketAddr>) {
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
        let now = Instant::now();
        let gen = self.gen_of(slot);
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
        self.timers.push(Reverse((deadline, slot, gen)));
        self.connect_next(slot, None);
    }

    /// Dial the next address; `last` is the error of the previous attempt.
    fn connect_next(&mut self, slot: u32, mut last: Option<io::Error>) {
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
            if let Some(old) = c.upstream.take() {
                self.driver.deregister(
                    old.as_raw_fd(),
                    Key::Conn {
                        slot,
                        gen,
                        side: Side::Upstream,
                    },
                );
            }
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
                    let raw = fd.as_raw_fd();
                    c.upstream = Some(fd);
                    let key = Key::Conn {
                        slot,
                        gen,
                        side: Side::Upstream,
                    };
                    if let Err(e) = self.driver.register(raw, key) {
                        last = Some(e);
                        continue;
                    }
                    return;
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

    fn on_connect_ready(&mut self, slot: u32) {
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
        let State::Connecting(c) = conn.take_state() else {
            return;
        };
        let Connecting {
            target,
            upstream,
            addr,
            started,
            ..
        } = *c;
        let Some(upstream) = upstream else {
            return;
        };
        let now = Instant::now();
        self.shard
            .upstream_connect
            .observe(now.duration_since(started));
        let _ = SockRef::from(&upstream).set_tcp_nodelay(true);
        if target.relay_request.is_some() {
            let tls = match &self.settings.load().relay {
                Some(r) if r.scheme == relay::Scheme::Https => {
                    match self.settings.load().relay_tls.clone() {
                        Some((config, name)) => match rustls::ClientConnection::new(config, name) {
                            Ok(c) => Some(Box::new(TlsLeg::new(c))),
                            Err(e) => {
                                let a = target.authority.clone();
                                let detail = format!("TLS set-up for the relay proxy failed: {e}");
                                self.relay_failed(slot, &a, &detail);
                                return;
                            }
                        },
                        None => {
                            let a = target.authority.clone();
                            self.relay_failed(slot, &a, "no TLS configuration for the https:// relay proxy (see event 401 at start)");
                            return;
                        }
                    }
                }
                _ => None,
            };
            let Some(conn) = self.conn_at(slot) else {
                return;
            };
            conn.state = State::Relaying(Box::new(Relaying {
                target,
                upstream,
                addr,
                started,
                sent: 0,
                answer: Vec::new(),
                u_rd: true,
                u_wr: true,
                tls,
            }));
            self.relay_handshake(slot);
            return;
        }
        self.establish(slot, target, upstream, addr, started, Vec::new(), None);
    }

    /// Write our CONNECT to the relay and read its answer.
    fn relay_handshake(&mut self, slot: u32) {
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
    fn relay_handshake_tls(&mut self, slot: u32) {
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
    fn relay_failed(&mut self, slot: u32, target: &Authority, detail: &str) {
        let kind = ErrorKind::RelayRefused;
        self.fail(slot, Some(target), kind, Status::BadGateway, detail);
    }

    /// Act on what the relay has answered so far; `closed` means its stream ended.
    fn relay_answer(&mut self, slot: u32, closed: bool) {
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
                let State::Relaying(r) = conn.take_state() else {
                    return;
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
                let rest = answer.get(ans.head_len..).unwrap_or_default().to_vec();
                match tls {
                    Some(leg) => {
                        self.establish_tls(slot, target, upstream, addr, started, leg, rest)
                    }
                    None => self.establish(slot, target, upstream, addr, started, rest, None),
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

    /// The upstream (or the relay's tunnel) is up: answer `200` and start relaying. `from_up` is
    /// data the upstream already sent (after a relay's answer), delivered after the `200`.
    #[allow(clippy::too_many_arguments)]
    fn establish(
        &mut self,
        slot: u32,
        mut target: Target,
        upstream: OwnedFd,
        addr: SocketAddr,
        started: Instant,
        from_up: Vec<u8>,
        tls: Option<Box<TlsLeg>>,
    ) {
        if self.conn_at(slot).is_none() {
            return;
        }
        let now = Instant::now();
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
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        // Through a TLS leg, the leg carries the 200 and the early data; the flows stay empty.
        let mut tls = tls;
        let (up, down) = match tls.as_mut() {
            Some(leg) => {
                if leg.forward_up(&early, &self.shard.bytes_upstream).is_err() {
                    self.close(slot, Close::Quiet);
                    return;
                }
                (Flow::default(), Flow::default())
            }
            None => (
                Flow::with_pending(early),
                Flow::with_answer(Status::Established.bytes(), from_up),
            ),
        };
        let peer = conn.peer;
        let target_s = target.authority.to_string();
        let via = if target.relay_request.is_some() {
            "relay"
        } else {
            "direct"
        };
        info!(
            event_id = events::INFO,
            client = %peer,
            target = %target_s,
            address = %addr,
            via = via,
            connect_ms = now.duration_since(started).as_secs_f64() * 1e3,
            "tunnel established"
        );
        conn.state = State::Tunnel(Box::new(Tunnel {
            upstream,
            target: target_s,
            addr,
            u_rd: true,
            u_wr: true,
            up,
            down,
            tls,
            inspect,
            started: now,
            last_activity: now,
        }));
        // The client may have sent more while we connected.
        conn.c_rd = true;
        let idle = conn.limits.idle_timeout;
        self.shard.tunnels_active.fetch_add(1, Relaxed);
        let gen = self.gen_of(slot);
        self.timers
            .push(Reverse((now + idle.min(hello_timeout), slot, gen)));
        self.pump(slot);
    }

    /// Through an `https://` relay: the tunnel copies through the TLS leg.
    #[allow(clippy::too_many_arguments)]
    fn establish_tls(
        &mut self,
        slot: u32,
        target: Target,
        upstream: OwnedFd,
        addr: SocketAddr,
        started: Instant,
        mut leg: Box<TlsLeg>,
        from_relay: Vec<u8>,
    ) {
        leg.start_tunnel(Status::Established.bytes(), &from_relay);
        self.establish(slot, target, upstream, addr, started, Vec::new(), Some(leg));
    }

    fn pump(&mut self, slot: u32) {
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
        let State::Tunnel(t) = &mut conn.state else {
            return;
        };
        let Tunnel {
            upstream,
            u_rd,
            u_wr,
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
                    *last_activity = Instant::now();
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
                    &mut conn.c_wr,
                    &self.shard.bytes_downstream,
                    TURN_BUDGET,
                    &mut cx,
                    following.then_some(&mut tap_down as Tap<'_>),
                ),
                Err(_) => Ok(Pumped::Blocked),
            };
            if cx.moved {
                *last_activity = Instant::now();
            }
            match (a, b) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(a), Ok(b)) => Ok((
                    a == Pumped::Done && b == Pumped::Done,
                    a == Pumped::Budget || b == Pumped::Budget,
                )),
            }
        };
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

    /// The hello phase: deliver the `200`, read the client's bytes into the inspection buffer and
    /// feed them to the inspector; forward nothing until the ClientHello is judged.
    fn inspect_hello(&mut self, slot: u32) -> Hello {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return Hello::Closed;
        };
        let State::Tunnel(t) = &mut conn.state else {
            return Hello::Closed;
        };
        let Tunnel {
            upstream,
            up,
            down,
            tls,
            inspect,
            ..
        } = &mut **t;
        let Some(ins) = inspect.as_mut() else {
            return Hello::Relay;
        };
        // The 200 goes out; nothing is read from the upstream yet.
        let flushed = match tls.as_mut() {
            Some(leg) => leg.flush_down(
                conn.client.as_fd(),
                &mut conn.c_wr,
                &self.shard.bytes_downstream,
            ),
            None => {
                let mut cx = Cx {
                    pool: &mut self.pool,
                    scratch: &mut self.scratch,
                    splice: false,
                    shard: &self.shard,
                    moved: false,
                };
                let mut never = false;
                down.pump(
                    upstream.as_fd(),
                    conn.client.as_fd(),
                    &mut never,
                    &mut conn.c_wr,
                    &self.shard.bytes_downstream,
                    0,
                    &mut cx,
                    None,
                )
                .map(drop)
            }
        };
        let mut closed = flushed.is_err();
        let mut verdict = ins.inspector.verdict();
        while !closed && verdict == Verdict::NeedMore && conn.c_rd {
            match sys::recv(conn.client.as_fd(), &mut self.scratch) {
                Ok(0) => closed = true,
                Ok(n) => {
                    ins.held.extend_from_slice(&self.scratch[..n]);
                    verdict = ins.inspector.client_bytes(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.c_rd = false,
                Err(_) => closed = true,
            }
        }
        match verdict {
            Verdict::NeedMore if closed => {
                self.close(slot, Close::Tunnel("client closed before its TLS hello"));
                Hello::Closed
            }
            Verdict::NeedMore => Hello::Wait,
            Verdict::Deny(_) => {
                let _ = self.inspection_verdict(slot);
                Hello::Closed
            }
            Verdict::Allow { .. } | Verdict::Following => {
                // The held bytes go upstream unchanged, before anything else.
                let held = std::mem::take(&mut ins.held);
                ins.following = true;
                let forwarded = match tls.as_mut() {
                    Some(leg) => leg.forward_up(&held, &self.shard.bytes_upstream),
                    None => {
                        *up = Flow::with_pending(held);
                        Ok(())
                    }
                };
                if forwarded.is_err() {
                    self.shard.error(ErrorKind::TunnelIo);
                    self.close(slot, Close::Tunnel("reset"));
                    return Hello::Closed;
                }
                if self.inspection_verdict(slot) {
                    return Hello::Closed;
                }
                Hello::Relay
            }
        }
    }

    /// Act on a final verdict: log and count an allowed session and end the inspection, or
    /// refuse the tunnel. Returns true if the tunnel was closed.
    fn inspection_verdict(&mut self, slot: u32) -> bool {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return true;
        };
        let peer = conn.peer;
        let State::Tunnel(t) = &mut conn.state else {
            return true;
        };
        let Some(ins) = t.inspect.as_ref() else {
            return false;
        };
        match ins.inspector.verdict() {
            Verdict::NeedMore | Verdict::Following => false,
            Verdict::Allow { version, sni, cert } => {
                let took = ins.started.elapsed();
                t.inspect = None;
                if let Some(i) = TLS_VERSIONS.iter().position(|v| *v == version.as_str()) {
                    self.shard.tls_verified[i].fetch_add(1, Relaxed);
                }
                self.shard.tls_inspect.observe(took);
                let cert = match cert {
                    CertCheck::NotRequired => "not required".to_owned(),
                    CertCheck::Subject(s) => s,
                    CertCheck::Tls13Policy => {
                        "TLS 1.3: allowed by tls13_client_certificate".to_owned()
                    }
                };
                info!(
                    event_id = events::TLS_VERIFIED,
                    client = %peer,
                    target = %t.target,
                    version = version.as_str(),
                    sni = sni.as_deref().unwrap_or(""),
                    client_certificate = %cert,
                    inspect_ms = took.as_secs_f64() * 1e3,
                    "TLS session verified"
                );
                false
            }
            Verdict::Deny(reason) => {
                let took = ins.started.elapsed();
                self.shard.tls_inspect.observe(took);
                self.shard.reject(tls_reject(&reason));
                let version = match &reason {
                    TlsReason::TlsVersion(v) => v.as_str(),
                    _ => "",
                };
                let policy = matches!(reason, TlsReason::ClientCertTls13)
                    .then_some("tls13_client_certificate: deny")
                    .unwrap_or("");
                warn!(
                    event_id = reason.event_id(),
                    client = %peer,
                    target = %t.target,
                    reason = reason.label(),
                    version = version,
                    policy = policy,
                    "{reason}"
                );
                self.close(slot, Close::Tunnel(reason.label()));
                true
            }
        }
    }

    // ---- refusals ---------------------------------------------------------------------------

    fn deny(&mut self, slot: u32, d: Denial, authority: &Authority, ip: Option<IpAddr>) {
        let reject = match d {
            Denial::HostNotAllowed => Reject::HostNotAllowed,
            Denial::PortNotAllowed => Reject::PortNotAllowed,
            Denial::PrivateDestination(_) => Reject::PrivateDestination,
        };
        self.shard.reject(reject);
        if let Some(conn) = self.conn_at(slot) {
            let peer = conn.peer;
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
    fn refuse(
        &mut self,
        slot: u32,
        status: Status,
        reject: Reject,
        detail: &str,
        target: Option<&Authority>,
    ) {
        self.shard.reject(reject);
        let why = (events::NOT_CONNECT, reject.as_str(), "request refused");
        self.log_and_answer(slot, why, detail, target, status);
    }

    /// A network failure on the way to the upstream (event 403).
    fn fail(
        &mut self,
        slot: u32,
        target: Option<&Authority>,
        kind: ErrorKind,
        status: Status,
        detail: &str,
    ) {
        self.shard.error(kind);
        let why = (events::NETWORK_ERROR, kind.as_str(), "upstream not reached");
        self.log_and_answer(slot, why, detail, target, status);
    }

    /// The one decision event of a refused request — `(event_id, reason label, message)` —
    /// then the answer.
    fn log_and_answer(
        &mut self,
        slot: u32,
        (event_id, reason, message): (u16, &str, &str),
        detail: &str,
        target: Option<&Authority>,
        status: Status,
    ) {
        if let Some(conn) = self.conn_at(slot) {
            let peer = conn.peer;
            let target = target.map(|t| t.to_string()).unwrap_or_default();
            warn!(
                event_id = event_id,
                client = %peer,
                target = %target,
                reason = reason,
                detail = detail,
                status = status.code(),
                "{message}"
            );
        }
        self.start_refusal(slot, status);
    }

    fn start_refusal(&mut self, slot: u32, status: Status) {
        self.start_refusal_bytes(slot, std::borrow::Cow::Borrowed(status.bytes()));
    }

    fn start_refusal_bytes(&mut self, slot: u32, bytes: std::borrow::Cow<'static, [u8]>) {
        let gen = self.gen_of(slot);
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        // Drop any half-made upstream socket first.
        let old = std::mem::replace(&mut conn.state, State::Refusing { bytes, sent: 0 });
        self.drop_upstream(slot, gen, old);
        let deadline = Instant::now() + LINGER;
        if let Some(conn) = self.conn_at(slot) {
            conn.deadline = deadline;
        }
        self.timers.push(Reverse((deadline, slot, gen)));
        self.write_refusal(slot);
    }

    fn write_refusal(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let State::Refusing { bytes, sent } = &mut conn.state else {
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
            conn.state = State::Lingering { discarded: 0 };
            conn.c_rd = true;
            self.linger(slot);
        }
    }

    fn linger(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        let State::Lingering { discarded } = &mut conn.state else {
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

    // ---- timers, drain, close ---------------------------------------------------------------

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, slot, gen))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conn_mut(slot, gen) else {
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
                self.timers.push(Reverse((due, slot, gen)));
                continue;
            }
            self.expire(slot);
        }
    }

    fn expire(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        match &conn.state {
            State::Head { .. } => self.refuse(
                slot,
                Status::RequestTimeout,
                Reject::HeaderTimeout,
                "header not complete within header_timeout",
                None,
            ),
            State::Authenticating(t) => {
                let a = t.authority.clone();
                self.auth_refusal(
                    slot,
                    &a,
                    Status::ServiceUnavailable,
                    None,
                    "password check timed out",
                )
            }
            State::Resolving(t) => {
                let a = t.authority.clone();
                self.fail(
                    slot,
                    Some(&a),
                    ErrorKind::ResolveTimeout,
                    Status::GatewayTimeout,
                    "resolver did not answer in time",
                )
            }
            State::Relaying(r) => {
                let a = r.target.authority.clone();
                let detail = format!("relay proxy {} did not answer in time", r.addr);
                self.fail(
                    slot,
                    Some(&a),
                    ErrorKind::ConnectTimeout,
                    Status::GatewayTimeout,
                    &detail,
                )
            }
            State::Connecting(c) => {
                let a = c.target.authority.clone();
                let addr = c.addr.to_string();
                self.fail(
                    slot,
                    Some(&a),
                    ErrorKind::ConnectTimeout,
                    Status::GatewayTimeout,
                    &addr,
                )
            }
            State::Tunnel(t) => match t.inspect.as_ref() {
                Some(ins) if Instant::now() >= ins.deadline => {
                    let (peer, target) = (conn.peer, t.target.clone());
                    let stage = if ins.following {
                        "handshake"
                    } else {
                        "ClientHello"
                    };
                    self.shard.reject(Reject::TlsParse);
                    warn!(
                        event_id = events::TLS_PARSE,
                        client = %peer,
                        target = %target,
                        reason = "tls_parse",
                        detail = "hello_timeout",
                        "TLS {stage} not complete within tls.hello_timeout"
                    );
                    self.close(slot, Close::Tunnel("hello_timeout"));
                }
                _ => self.close(slot, Close::Tunnel("idle_timeout")),
            },
            State::Refusing { .. } | State::Lingering { .. } => self.close(slot, Close::Quiet),
        }
    }

    fn start_drain(&mut self, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(fd) = l.take() {
                self.driver.remove_listener(i as u32, fd.as_raw_fd());
            }
        }
        self.pending_accept.clear();
    }

    fn close_all(&mut self) {
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].conn.is_some() {
                self.close(slot, Close::Tunnel("shutdown"));
            }
        }
    }

    fn close(&mut self, slot: u32, how: Close) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(conn) = s.conn.take() else {
            return;
        };
        let gen = s.gen;
        s.gen = Key::wrap_gen(s.gen.wrapping_add(1));
        self.free.push(slot);
        self.live -= 1;
        self.driver.deregister(
            conn.client.as_raw_fd(),
            Key::Conn {
                slot,
                gen,
                side: Side::Client,
            },
        );
        self.shard.active_connections.fetch_sub(1, Relaxed);
        self.shard.client_closed(conn.peer.ip());
        match conn.state {
            State::Tunnel(mut t) => {
                self.driver.deregister(
                    t.upstream.as_raw_fd(),
                    Key::Conn {
                        slot,
                        gen,
                        side: Side::Upstream,
                    },
                );
                t.up.release(&mut self.pool);
                t.down.release(&mut self.pool);
                self.shard.tunnels_active.fetch_sub(1, Relaxed);
                let lived = t.started.elapsed();
                self.shard.tunnel_duration.observe(lived);
                let reason = match how {
                    Close::Tunnel(r) => r,
                    Close::Quiet => "closed",
                };
                info!(
                    event_id = events::INFO,
                    client = %conn.peer,
                    target = %t.target,
                    address = %t.addr,
                    reason = reason,
                    bytes_up = t.tls.as_ref().map_or(t.up.bytes, |l| l.bytes_up),
                    bytes_down = t.tls.as_ref().map_or(t.down.bytes, |l| l.bytes_down),
                    duration_ms = lived.as_millis() as u64,
                    "tunnel closed"
                );
            }
            other => self.drop_upstream(slot, gen, other),
        }
    }
}

fn tls_reject(reason: &TlsReason) -> Reject {
    match reason {
        TlsReason::TlsVersion(_) => Reject::TlsVersion,
        TlsReason::Parse(_) => Reject::TlsParse,
        TlsReason::SniMissing => Reject::SniMissing,
        TlsReason::SniMismatch { .. } => Reject::SniMismatch,
        TlsReason::ClientCert { .. }
        | TlsReason::ClientCertMissing
        | TlsReason::ClientCertTls13 => Reject::ClientCert,
    }
}

impl Worker {
    /// Stop watching the upstream socket of a connection that never became a tunnel; the fd
    /// closes when `state` drops.
    fn drop_upstream(&mut self, slot: u32, gen: u32, state: State) {
        let fd = match &state {
            State::Connecting(c) => c.upstream.as_ref().map(|u| u.as_raw_fd()),
            State::Relaying(r) => Some(r.upstream.as_raw_fd()),
            _ => None,
        };
        if let Some(fd) = fd {
            let key = Key::Conn {
                slot,
                gen,
                side: Side::Upstream,
            };
            self.driver.deregister(fd, key);
        }
    }
}

/// Answer and close a client that gets no slot. What it already sent is read first, so the close
/// is a FIN rather than a reset that could destroy the answer before the client reads it.
fn refuse_now(fd: &OwnedFd, status: Status) {
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

/// Start a non-blocking connect with `TCP_NODELAY` set.
fn dial(addr: SocketAddr) -> io::Result<OwnedFd> {
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

fn connect_error_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ErrorKind::ConnectRefused,
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => ErrorKind::ConnectUnreachable,
        Some(libc::ETIMEDOUT) => ErrorKind::ConnectTimeout,
        _ => ErrorKind::ConnectFailed,
    }
}
