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

use super::sys;
pub use super::unavailable::UringUnavailable;

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
        // SAFETY: every entry we build refers only to fds (no buffers or pointers that must
        // outlive the submission): polls, multishot accepts without address, cancellations.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&e) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
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

/// Check that io_uring can be set up here and supports what the driver needs. The error says
/// why not (seccomp, `kernel.io_uring_disabled`, old kernel; see [`UringUnavailable`]).
pub fn probe_uring() -> Result<(), UringUnavailable> {
    let ring = IoUring::new(8).map_err(UringUnavailable::setup)?;
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
    Ok(())
}

/// Take ownership of the fd that a completed io_uring accept returned.
///
/// Only the completion handling above calls this, with the non-negative result of an accept
/// completion for one of our listeners: the kernel has just installed that fd for us and nothing
/// else in the process knows its number.
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
