//! The interface between a worker and its I/O driver, and the two drivers behind it.
//!
//! Both drivers report edge-triggered readiness: a socket is registered once for
//! read, write and hang-up; the driver reports each wake-up, and the worker keeps its own
//! "readable"/"writable" flags, clearing them on `EAGAIN`. All I/O syscalls (`splice`, `recv`,
//! `send`, `connect`) are made by the worker, non-blocking; the driver only waits.
//!
//! - [`UringDriver`]: one io_uring per worker; multishot accept on each listener, multishot poll
//!   on each socket and on the wake eventfd. It never issues `IORING_OP_SPLICE`, so no io-wq
//!   kernel thread is ever parked on a tunnel.
//! - [`EpollDriver`]: the same on epoll (`EPOLLET`), for hosts where io_uring is blocked
//!   (container seccomp profiles, `kernel.io_uring_disabled`).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, SockAddr, Socket};

use super::sys;
pub use super::unavailable::UringUnavailable;
use super::unavailable::{Multishot, MultishotOp};

/// Which end of a connection an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// What a registration or completion refers to, packed into 64 bits of user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Listener(u32),
    Conn {
        slot: u32,
        gen: u32,
        side: Side,
    },
    Wake,
    /// Completions nobody waits for (cancellations).
    Ignore,
}

const KIND_SHIFT: u32 = 60;
const SIDE_BIT: u64 = 1 << 59;
const GEN_MASK: u64 = (1 << 27) - 1;

impl Key {
    pub fn encode(self) -> u64 {
        match self {
            Key::Listener(i) => (1 << KIND_SHIFT) | u64::from(i),
            Key::Conn { slot, gen, side } => {
                let s = if side == Side::Upstream { SIDE_BIT } else { 0 };
                (2 << KIND_SHIFT) | s | ((u64::from(gen) & GEN_MASK) << 32) | u64::from(slot)
            }
            Key::Wake => 3 << KIND_SHIFT,
            Key::Ignore => 4 << KIND_SHIFT,
        }
    }

    pub fn decode(v: u64) -> Key {
        match v >> KIND_SHIFT {
            1 => Key::Listener(v as u32),
            2 => Key::Conn {
                slot: v as u32,
                gen: ((v >> 32) & GEN_MASK) as u32,
                side: if v & SIDE_BIT != 0 {
                    Side::Upstream
                } else {
                    Side::Client
                },
            },
            3 => Key::Wake,
            _ => Key::Ignore,
        }
    }

    /// Generations wrap within the bits the key carries.
    pub fn wrap_gen(gen: u32) -> u32 {
        (u64::from(gen) & GEN_MASK) as u32
    }
}

/// What a driver reports to its worker.
#[derive(Debug)]
pub enum Event {
    /// A connection accepted by a multishot accept (io_uring).
    Accepted {
        listener: u32,
        result: io::Result<OwnedFd>,
    },
    /// A listener has connections waiting (epoll): the worker calls `accept4` until `EAGAIN`.
    ListenerReady { listener: u32 },
    /// A socket woke up. Errors and hang-ups are reported as both readable and writable, so
    /// that the next syscall surfaces them.
    Ready {
        /// The poll-table slot and generation of the registration (see `registry`).
        slot: u32,
        gen: u32,
        readable: bool,
        writable: bool,
        /// The peer has shut down its side (`RDHUP`), or `HUP`/`ERR`: a read may stop at the
        /// FIN, so a short read does not prove the socket empty (see `flow`).
        hup: bool,
    },
    /// Another thread signalled the worker's eventfd.
    Wake,
}

/// The driver a worker runs on; an enum rather than a trait object, so calls are static.
pub enum Driver {
    Uring(Box<UringDriver>),
    Epoll(EpollDriver),
    /// Unit tests: records registrations and replays queued events (see [`FakeDriver`]).
    #[cfg(test)]
    Fake(FakeDriver),
}

/// A driver for unit tests of the connection states: it waits for nothing, reports the events
/// a test queued, and records what the worker registered and removed.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeDriver {
    pub watched: Vec<Key>,
    pub removed: Vec<Key>,
    pub queued: Vec<Event>,
}

impl Driver {
    pub fn kind(&self) -> &'static str {
        match self {
            Driver::Uring(_) => "uring",
            Driver::Epoll(_) => "epoll",
            #[cfg(test)]
            Driver::Fake(_) => "fake",
        }
    }

    pub fn add_listener(&mut self, idx: u32, fd: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.add_listener(idx, fd.as_raw_fd()),
            Driver::Epoll(d) => d.add(fd, Key::Listener(idx)),
            #[cfg(test)]
            Driver::Fake(_) => Ok(()),
        }
    }

    /// Stop accepting on a listener. The caller may close the fd right after.
    pub fn remove_listener(&mut self, idx: u32, fd: BorrowedFd<'_>) {
        match self {
            Driver::Uring(d) => d.cancel(Key::Listener(idx)),
            Driver::Epoll(d) => d.del(fd),
            #[cfg(test)]
            Driver::Fake(_) => {}
        }
    }

    /// After an accept error the multishot accept may have ended: arm it again.
    pub fn rearm_listener(&mut self, idx: u32) {
        if let Driver::Uring(d) = self {
            d.rearm_listener(idx);
        }
    }

    pub fn register(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.register(fd.as_raw_fd(), key),
            Driver::Epoll(d) => d.add(fd, key),
            #[cfg(test)]
            Driver::Fake(d) => {
                d.watched.push(key);
                Ok(())
            }
        }
    }

    /// Forget a socket's key; its fd may be closed already. Events already queued for the key
    /// may still arrive: the worker's poll table drops them by generation.
    ///
    /// On epoll there is nothing to do: connection sockets are never duplicated, so closing the
    /// fd removed it from the interest list (epoll(7)). On io_uring the multishot poll is removed
    /// by key (and removed again if a completion shows it survived, see [`UringDriver::wait`]).
    pub fn deregister(&mut self, key: Key) {
        match self {
            Driver::Uring(d) => d.deregister(key),
            Driver::Epoll(_) => {}
            #[cfg(test)]
            Driver::Fake(d) => d.removed.push(key),
        }
    }

    /// Submit pending work and wait for events (up to `timeout`; `None` waits indefinitely).
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.wait(timeout, out),
            Driver::Epoll(d) => d.wait(timeout, out),
            #[cfg(test)]
            Driver::Fake(d) => {
                let _ = timeout;
                out.append(&mut d.queued);
                Ok(())
            }
        }
    }
}

const POLL_MASK: u32 =
    (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;

/// The io_uring driver.
pub struct UringDriver {
    ring: IoUring,
    /// Live poll registrations by poll-table slot: the slot's generation and fd, so a multishot
    /// poll that ends (rare: CQ overflow) is re-armed, and a completion for a removed key is
    /// recognised without hashing.
    polls: Vec<Option<(u32, RawFd)>>,
    /// Listener fds by index, and whether their multishot accept is armed.
    listeners: HashMap<u32, (RawFd, bool)>,
    wake: OwnedFd,
}

impl UringDriver {
    /// Set up a ring on the calling thread (the worker thread that will use it).
    pub fn new(entries: u32, wake: OwnedFd) -> io::Result<UringDriver> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks EXT_ARG or NODROP (kernel too old)",
            ));
        }
        let mut d = UringDriver {
            ring,
            polls: Vec::new(),
            listeners: HashMap::new(),
            wake,
        };
        let wfd = d.wake.as_raw_fd();
        d.push(poll_entry(wfd, Key::Wake))?;
        Ok(d)
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        push(&mut self.ring, &e)
    }

    fn add_listener(&mut self, idx: u32, fd: RawFd) -> io::Result<()> {
        self.listeners.insert(idx, (fd, true));
        self.push(accept_entry(fd, idx))
    }

    fn rearm_listener(&mut self, idx: u32) {
        if let Some((fd, armed)) = self.listeners.get(&idx).copied() {
            if !armed && self.push(accept_entry(fd, idx)).is_ok() {
                self.listeners.insert(idx, (fd, true));
            }
        }
    }

    fn register(&mut self, fd: RawFd, key: Key) -> io::Result<()> {
        let Key::Conn { slot, gen, .. } = key else {
            return Err(io::Error::other("only connection sockets are polled"));
        };
        let i = slot as usize;
        if self.polls.len() <= i {
            self.polls.resize(i + 1, None);
        }
        self.polls[i] = Some((gen, fd));
        self.push(poll_entry(fd, key))
    }

    fn polled(&self, key: Key) -> Option<RawFd> {
        polled(&self.polls, key)
    }

    fn deregister(&mut self, key: Key) {
        if self.polled(key).is_some() {
            if let Key::Conn { slot, .. } = key {
                self.polls[slot as usize] = None;
            }
            let _ = self.push(
                opcode::PollRemove::new(key.encode())
                    .build()
                    .user_data(Key::Ignore.encode()),
            );
        }
    }

    fn cancel(&mut self, key: Key) {
        if let Key::Listener(i) = key {
            self.listeners.remove(&i);
        }
        let _ = self.push(
            opcode::AsyncCancel::new(key.encode())
                .build()
                .user_data(Key::Ignore.encode()),
        );
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<()> {
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        if let Err(e) = res {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        let mut rearm = Vec::new();
        let mut retry = Vec::new();
        for cqe in self.ring.completion() {
            let res = cqe.result();
            let more = cqueue::more(cqe.flags());
            match Key::decode(cqe.user_data()) {
                Key::Listener(i) => {
                    if !more {
                        if let Some(l) = self.listeners.get_mut(&i) {
                            l.1 = false;
                        }
                    }
                    if res == -libc::ECANCELED {
                        continue;
                    }
                    if !self.listeners.contains_key(&i) {
                        // Removed, but the cancel raced with a completion in progress
                        // (-EALREADY): cancel again; a connection it accepted is dropped.
                        if more {
                            retry.push(Key::Listener(i));
                        }
                        if res >= 0 {
                            drop(adopt_accepted(res));
                        }
                        continue;
                    }
                    let result = if res >= 0 {
                        Ok(adopt_accepted(res))
                    } else {
                        Err(io::Error::from_raw_os_error(-res))
                    };
                    out.push(Event::Accepted {
                        listener: i,
                        result,
                    });
                }
                key @ Key::Conn { slot, gen, .. } => {
                    if res == -libc::ECANCELED {
                        continue;
                    }
                    if polled(&self.polls, key).is_none() {
                        // Deregistered, but the POLL_REMOVE found the poll mid-completion
                        // (-EALREADY) and the multishot poll went on: remove it again, or it
                        // would keep the closed socket's file alive.
                        if more {
                            retry.push(key);
                        }
                        continue;
                    }
                    if !more {
                        rearm.push(key);
                    }
                    let mask = if res >= 0 { res as u32 } else { POLL_MASK };
                    out.push(ready(slot, gen, mask));
                }
                Key::Wake => {
                    sys::eventfd_drain(self.wake.as_fd());
                    if !more {
                        rearm.push(Key::Wake);
                    }
                    out.push(Event::Wake);
                }
                Key::Ignore => {}
            }
        }
        for key in retry {
            let remove = match key {
                Key::Listener(_) => opcode::AsyncCancel::new(key.encode()).build(),
                _ => opcode::PollRemove::new(key.encode()).build(),
            };
            self.push(remove.user_data(Key::Ignore.encode()))?;
        }
        for key in rearm {
            let fd = match key {
                Key::Wake => Some(self.wake.as_raw_fd()),
                k => self.polled(k),
            };
            if let Some(fd) = fd {
                self.push(poll_entry(fd, key))?;
            }
        }
        Ok(())
    }
}

/// Queue `e` on `ring`, submitting what is queued first if the queue is full.
fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every entry we build refers only to fds (no buffers or pointers that must
    // outlive the submission): polls, multishot accepts without address, cancellations.
    if unsafe { ring.submission().push(e) }.is_err() {
        ring.submit()?;
        // SAFETY: as above.
        unsafe { ring.submission().push(e) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    }
    Ok(())
}

/// The fd of a live registration in a slot-indexed poll table (`None` for a stale key).
fn polled(polls: &[Option<(u32, RawFd)>], key: Key) -> Option<RawFd> {
    let Key::Conn { slot, gen, .. } = key else {
        return None;
    };
    match polls.get(slot as usize) {
        Some(Some((g, fd))) if *g == gen => Some(*fd),
        _ => None,
    }
}

/// A readiness event from a poll(2)-style mask (`EPOLL*` and `POLL*` bits have the same values).
fn ready(slot: u32, gen: u32, mask: u32) -> Event {
    let bad = mask & (libc::POLLERR | libc::POLLHUP) as u32 != 0;
    Event::Ready {
        slot,
        gen,
        readable: bad || mask & (libc::POLLIN | libc::POLLRDHUP) as u32 != 0,
        writable: bad || mask & libc::POLLOUT as u32 != 0,
        hup: bad || mask & libc::POLLRDHUP as u32 != 0,
    }
}

fn poll_entry(fd: RawFd, key: Key) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), POLL_MASK)
        .multi(true)
        .build()
        .user_data(key.encode())
}

fn accept_entry(fd: RawFd, idx: u32) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        .build()
        .user_data(Key::Listener(idx).encode())
}

/// Check that io_uring can be set up here and supports what the driver needs: the opcodes,
/// `EXT_ARG`, and the multishot accept and poll it submits, tried for real (see
/// [`probe_multishot`]). The error says why not (seccomp, `kernel.io_uring_disabled`, old
/// kernel; see [`UringUnavailable`]).
pub fn probe_uring() -> Result<(), UringUnavailable> {
    let mut ring = IoUring::new(8).map_err(UringUnavailable::setup)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringUnavailable::probe)?;
    for (code, name) in [
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::PollRemove::CODE, "POLL_REMOVE"),
    ] {
        if !probe.is_supported(code) {
            return Err(UringUnavailable::Opcode(name));
        }
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(UringUnavailable::NoExtArg);
    }
    probe_multishot(&mut ring)
}

/// The longest the probe waits for the completions of its multishot test, in all. A kernel
/// that supports the requests answers both within microseconds (the client is already queued
/// and its socket is writable); the bound only keeps a kernel that never answers from holding
/// the start.
const PROBE_WAIT: Duration = Duration::from_millis(500);

/// The opcode list cannot tell a kernel that knows the multishot flags from one that does not
/// (`ACCEPT` is listed since 5.5, its multishot flag came in 5.19): submit the driver's own
/// multishot accept ([`accept_entry`]) on a listener with a client queued, and its multishot
/// poll ([`poll_entry`]) on that client, then cancel both as the driver does and wait, bounded,
/// for each one's last completion. [`Multishot::of`] reads what the kernel answered.
fn probe_multishot(ring: &mut IoUring) -> Result<(), UringUnavailable> {
    let test = UringUnavailable::MultishotTest;
    let (listener, client) = probe_sockets().map_err(test)?;
    let accept_key = Key::Listener(0);
    let poll_key = Key::Wake;
    let mut seen = Seen::default();
    // One submission each: a kernel that fails a request at submission stops the batch there.
    for e in [
        refused_in_test(accept_entry(listener.as_raw_fd(), 0), MultishotOp::Accept),
        refused_in_test(
            poll_entry(client.as_raw_fd(), poll_key),
            MultishotOp::PollAdd,
        ),
    ] {
        push(ring, &e).map_err(test)?;
        ring.submit().map_err(test)?;
    }
    let deadline = std::time::Instant::now() + PROBE_WAIT;
    reap(ring, deadline, &mut seen, |s| {
        !s.accept.is_empty() && !s.poll.is_empty()
    })
    .map_err(test)?;
    let mut cancels = 0;
    if !ended(&seen.accept) {
        let cancel = opcode::AsyncCancel::new(accept_key.encode()).build();
        push(ring, &cancel.user_data(Key::Ignore.encode())).map_err(test)?;
        cancels += 1;
    }
    if !ended(&seen.poll) {
        let cancel = opcode::PollRemove::new(poll_key.encode()).build();
        push(ring, &cancel.user_data(Key::Ignore.encode())).map_err(test)?;
        cancels += 1;
    }
    if cancels > 0 {
        ring.submit().map_err(test)?;
        reap(ring, deadline, &mut seen, |s| {
            ended(&s.accept) && ended(&s.poll)
        })
        .map_err(test)?;
    }
    for (op, cqes) in [
        (MultishotOp::Accept, &seen.accept),
        (MultishotOp::PollAdd, &seen.poll),
    ] {
        match Multishot::of(cqes) {
            Multishot::Armed => {}
            outcome => return Err(UringUnavailable::Multishot { op, outcome }),
        }
    }
    Ok(())
}

/// The completions of the probe's two requests, as `(result, flags)`.
#[derive(Default)]
struct Seen {
    accept: Vec<(i32, u32)>,
    poll: Vec<(i32, u32)>,
}

/// A request's last completion has come (one without `IORING_CQE_F_MORE`).
fn ended(cqes: &[(i32, u32)]) -> bool {
    cqes.last().is_some_and(|&(_, flags)| !cqueue::more(flags))
}

/// Collect the probe's completions until `done` or `deadline`, in waits bounded by the
/// deadline (`EXT_ARG`, checked before) and in number. A connection the accept returns is
/// closed at once.
fn reap(
    ring: &mut IoUring,
    deadline: std::time::Instant,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) -> io::Result<()> {
    for _ in 0..16 {
        for cqe in ring.completion() {
            let c = (cqe.result(), cqe.flags());
            match Key::decode(cqe.user_data()) {
                Key::Listener(_) => {
                    if c.0 >= 0 {
                        drop(adopt_accepted(c.0));
                    }
                    seen.accept.push(c);
                }
                Key::Wake => seen.poll.push(c),
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done(seen) || left.is_zero() {
            break;
        }
        let ts = types::Timespec::new()
            .sec(left.as_secs())
            .nsec(left.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        if let Err(e) = ring.submitter().submit_with_args(1, &args) {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
    }
    Ok(())
}

/// A listener with a client queued on it, for the probe: AF_UNIX on an autobound abstract
/// address (no file, no port, nothing on the network), non-blocking like the gateway's
/// sockets. Multishot accept is the same request for any socket family.
fn probe_sockets() -> io::Result<(Socket, Socket)> {
    let ty = socket2::Type::STREAM.nonblocking();
    let listener = Socket::new(Domain::UNIX, ty, None)?;
    // An empty path binds to a fresh abstract address (unix(7), "autobind").
    listener.bind(&SockAddr::unix("")?)?;
    listener.listen(1)?;
    let client = Socket::new(Domain::UNIX, ty, None)?;
    client.connect(&listener.local_addr()?)?;
    Ok((listener, client))
}

/// Test builds only: `SPLICEGATE_TEST_MULTISHOT_REFUSED=accept` (or `poll`) gives that request
/// of the probe a personality that was never registered, so the kernel refuses it with `EINVAL`
/// at submission, as a kernel older than 5.19 (5.13) refuses the multishot flag. Compiled out of
/// release builds.
#[cfg(debug_assertions)]
fn refused_in_test(e: squeue::Entry, op: MultishotOp) -> squeue::Entry {
    let word = match op {
        MultishotOp::Accept => "accept",
        MultishotOp::PollAdd => "poll",
    };
    if std::env::var("SPLICEGATE_TEST_MULTISHOT_REFUSED").is_ok_and(|v| v == word) {
        e.personality(u16::MAX)
    } else {
        e
    }
}

#[cfg(not(debug_assertions))]
fn refused_in_test(e: squeue::Entry, _op: MultishotOp) -> squeue::Entry {
    e
}

/// Take ownership of the fd that a completed io_uring accept returned.
///
/// Only the completion handling above (and the probe's, for its own listener) calls this, with
/// the non-negative result of an accept completion for one of our listeners: the kernel has just
/// installed that fd for us and nothing else in the process knows its number.
fn adopt_accepted(fd: i32) -> OwnedFd {
    // SAFETY: `fd` is the result of a successful accept completion (checked `res >= 0` by the
    // caller): a new open fd that nobody else owns, and this is the only place it is adopted.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The epoll driver.
pub struct EpollDriver {
    ep: sys::Epoll,
    wake: OwnedFd,
    ready: Vec<sys::Ready>,
}

impl EpollDriver {
    pub fn new(wake: OwnedFd) -> io::Result<EpollDriver> {
        let d = EpollDriver {
            ep: sys::Epoll::new(1024)?,
            wake,
            ready: Vec::with_capacity(1024),
        };
        d.ep.add(d.wake.as_fd(), sys::Interest::Read, Key::Wake.encode())?;
        Ok(d)
    }

    fn add(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()> {
        let interest = match key {
            Key::Listener(_) => sys::Interest::Read,
            _ => sys::Interest::ReadWrite,
        };
        self.ep.add(fd, interest, key.encode())
    }

    fn del(&mut self, fd: BorrowedFd<'_>) {
        let _ = self.ep.delete(fd);
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<()> {
        self.ready.clear();
        self.ep.wait(timeout, &mut self.ready)?;
        for r in &self.ready {
            match Key::decode(r.key) {
                Key::Listener(i) => out.push(Event::ListenerReady { listener: i }),
                Key::Conn { slot, gen, .. } => out.push(ready(slot, gen, r.bits)),
                Key::Wake => {
                    sys::eventfd_drain(self.wake.as_fd());
                    out.push(Event::Wake);
                }
                Key::Ignore => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_and_poll_bits_agree() {
        assert_eq!(libc::EPOLLIN, i32::from(libc::POLLIN));
        assert_eq!(libc::EPOLLOUT, i32::from(libc::POLLOUT));
        assert_eq!(libc::EPOLLERR, i32::from(libc::POLLERR));
        assert_eq!(libc::EPOLLHUP, i32::from(libc::POLLHUP));
        assert_eq!(libc::EPOLLRDHUP, i32::from(libc::POLLRDHUP));
    }

    /// The probe passes on a kernel that has multishot accept and poll (5.19+), leaves no fd
    /// behind, and is cheap: its time is printed (`--nocapture`) as a figure.
    #[test]
    fn the_probe_passes_here_and_closes_what_it_opened() {
        if let Err(e) = IoUring::new(8) {
            eprintln!("SKIP: io_uring cannot be set up here: {e}");
            return;
        }
        let fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        let _ = probe_uring(); // warm up (first socket and ring of the process)
        let before = fds();
        let (mut full, mut ring_only) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let t0 = std::time::Instant::now();
            let r = probe_uring();
            full.push(t0.elapsed());
            assert!(r.is_ok(), "probe on this kernel: {r:?}");
            // What the probe did before the multishot test: a ring and its opcode list.
            let t0 = std::time::Instant::now();
            let ring = IoUring::new(8).expect("a ring, as just above");
            let mut p = io_uring::Probe::new();
            assert!(ring.submitter().register_probe(&mut p).is_ok());
            drop(ring);
            ring_only.push(t0.elapsed());
        }
        full.sort();
        ring_only.sort();
        // Other tests of this binary run in parallel threads and may open fds: allow for them,
        // but not for 20 leaked connections, listeners or rings.
        assert!(fds() < before + 20, "fds before {before}, after {}", fds());
        eprintln!(
            "figure: probe_uring median {:?} (max {:?}); ring + opcode list alone median {:?} \
             (max {:?}); 20 runs each",
            full[10], full[19], ring_only[10], ring_only[19]
        );
    }

    #[test]
    fn keys_round_trip() {
        for k in [
            Key::Listener(0),
            Key::Listener(7),
            Key::Conn {
                slot: 0,
                gen: 0,
                side: Side::Client,
            },
            Key::Conn {
                slot: u32::MAX,
                gen: Key::wrap_gen(u32::MAX),
                side: Side::Upstream,
            },
            Key::Conn {
                slot: 12345,
                gen: 99,
                side: Side::Client,
            },
            Key::Wake,
            Key::Ignore,
        ] {
            assert_eq!(Key::decode(k.encode()), k);
        }
    }
}
