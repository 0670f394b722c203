//! One direction of a tunnel, and the pump that moves its bytes.
//!
//! The default data path is readiness + `splice(2)`: bytes go socket -> pipe -> socket without
//! entering user space. A pipe is taken from the worker's pool only when the source is readable
//! and given back as soon as it is empty. A pipe is only ever filled while empty, so `EAGAIN` from
//! the socket-to-pipe splice can only mean "socket empty" (the ambiguity HAProxy and Go avoid the
//! same way). When no pipe can be had (pool cap, per-user pipe limit, fds), the chunk is copied
//! through the worker's scratch buffer instead; `data_path: copy` always copies.
//!
//! A write to `dst` that takes less than it was given (a `send`, or a splice out of the pipe asked
//! for everything the pipe holds) means the socket's send buffer is full: the flow stops there
//! and waits for the writable edge instead of making the write that is bound to fail with
//! `EAGAIN`. The kernel guarantees that edge: a TCP write that runs out of send buffer sets
//! `SOCK_NOSPACE` before returning, and the socket then wakes its pollers when space frees up
//! (`tcp_sendmsg_locked` -> `sk_stream_wait_memory`, `sk_stream_write_space`); the test
//! `a_short_write_is_followed_by_a_writable_edge` checks it on this kernel.
//!
//! A short read proves less: a splice into the (empty) pipe stops when the socket is empty, but
//! also when the pipe runs out of slots (one per socket-buffer fragment, however small), at a
//! FIN, or before urgent data. One case is provable: a read of fewer bytes than the pipe has
//! slots cannot have filled it, so unless the source has reported a hang-up (a FIN may be what
//! stopped it) the socket was empty, and any byte arriving later wakes the poller. Only then is
//! the flag cleared without the read bound to fail with `EAGAIN` — small messages such as
//! acknowledgements (below 256 bytes with 1 MiB pipes and 4 KiB pages). Urgent data
//! stops a splice too (`tcp_read_sock` stops at the urgent mark), which the splice path could not
//! get past before either; this changes nothing there.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::pipe::{Pipe, PipePool};
use super::sys;
use crate::metrics::Shard;

/// One direction: `src` -> `dst`.
#[derive(Debug, Default)]
pub struct Flow {
    /// Bytes to write from user space before anything else (the `200` answer, early client
    /// data, or the unsent rest of a copied chunk).
    pending: Vec<u8>,
    sent: usize,
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// The source has shut down its write side.
    eof: bool,
    /// The shutdown has been passed on to `dst`.
    shut: bool,
    /// This direction copies (splice unsupported for these fds).
    copy_only: bool,
    /// Leading bytes of `pending` that are the gateway's own (the `200`), not relayed data.
    own: usize,
    /// Relayed bytes delivered to `dst`.
    pub bytes: u64,
}

/// Why a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for readiness (source empty or destination full).
    Blocked,
    /// Used its byte budget with more to do: run again soon.
    Budget,
    /// The source reached EOF and the half-close has been passed on.
    Done,
}

/// A look at each chunk before it is forwarded (TLS inspection while following the handshake).
/// Returning `false` stops the pump without forwarding the chunk.
pub type Tap<'a> = &'a mut dyn FnMut(&[u8]) -> bool;

/// What a pump borrows from its worker.
pub struct Cx<'a> {
    pub pool: &'a mut PipePool,
    pub scratch: &'a mut [u8],
    pub splice: bool,
    pub shard: &'a Shard,
    /// Whether any byte moved (for the idle timer).
    pub moved: bool,
}

impl Flow {
    /// The source's end has been passed on: this direction is finished.
    pub fn is_done(&self) -> bool {
        self.shut
    }

    pub fn with_pending(bytes: Vec<u8>) -> Flow {
        Flow {
            pending: bytes,
            ..Flow::default()
        }
    }

    /// A flow that first writes the gateway's own answer (not counted as relayed bytes), then `data` already received from the source.
    pub fn with_answer(answer: &[u8], data: Vec<u8>) -> Flow {
        let mut pending = Vec::with_capacity(answer.len() + data.len());
        pending.extend_from_slice(answer);
        pending.extend_from_slice(&data);
        Flow {
            pending,
            own: answer.len(),
            ..Flow::default()
        }
    }

    /// Give back or drop this flow's pipe when the tunnel closes.
    pub fn release(&mut self, pool: &mut PipePool) {
        if let Some(p) = self.pipe.take() {
            if self.in_pipe == 0 {
                pool.give(p);
            } else {
                pool.discard(p);
            }
            self.in_pipe = 0;
        }
    }

    /// Move bytes until blocked, done, or `budget` bytes have been read from `src`.
    #[allow(clippy::too_many_arguments)]
    pub fn pump(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        src_readable: &mut bool,
        src_hup: bool,
        dst_writable: &mut bool,
        counter: &AtomicU64,
        budget: usize,
        cx: &mut Cx<'_>,
        mut tap: Option<Tap<'_>>,
    ) -> io::Result<Pumped> {
        let mut budget = budget;
        loop {
            if self.sent < self.pending.len() {
                if !*dst_writable {
                    return Ok(Pumped::Blocked);
                }
                match sys::send(dst, &self.pending[self.sent..], false) {
                    Ok(n) => {
                        self.sent += n;
                        let own = n.min(self.own);
                        self.own -= own;
                        self.delivered(n - own, counter, cx);
                        if self.sent < self.pending.len() {
                            // A short write: `dst`'s send buffer is full (see `full_after`).
                            *dst_writable = false;
                            return Ok(Pumped::Blocked);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        *dst_writable = false;
                        return Ok(Pumped::Blocked);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.sent = 0;
            }
            if self.in_pipe > 0 {
                if !*dst_writable {
                    return Ok(Pumped::Blocked);
                }
                let Some(p) = self.pipe.as_ref() else {
                    return Err(io::Error::other("pipe accounting out of step"));
                };
                match sys::splice(p.read_end(), dst, self.in_pipe, false) {
                    Ok(0) => return Err(io::Error::other("splice from a non-empty pipe wrote 0")),
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.delivered(n, counter, cx);
                        if self.in_pipe > 0 {
                            // Asked for all the pipe held, got less: `dst` is full.
                            *dst_writable = false;
                            return Ok(Pumped::Blocked);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        *dst_writable = false;
                        return Ok(Pumped::Blocked);
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(p) = self.pipe.take() {
                cx.pool.give(p);
            }
            if self.eof {
                if !self.shut {
                    // ENOTCONN here means the peer is already gone; the other direction will
                    // notice on its own.
                    let _ = sys::shutdown_write(dst);
                    self.shut = true;
                }
                return Ok(Pumped::Done);
            }
            if budget == 0 {
                return Ok(Pumped::Budget);
            }
            if !*src_readable {
                return Ok(Pumped::Blocked);
            }
            // A tapped flow copies: the tap must see every byte before it goes on.
            if cx.splice && !self.copy_only && tap.is_none() {
                if let Some(p) = cx.pool.take() {
                    match sys::splice(src, p.write_end(), p.capacity, true) {
                        Ok(0) => {
                            cx.pool.give(p);
                            self.eof = true;
                        }
                        Ok(n) => {
                            if !src_hup && n < p.slots {
                                // Fewer bytes than the pipe has slots: the pipe did not fill,
                                // so the read stopped because the socket was empty.
                                *src_readable = false;
                            }
                            self.in_pipe = n;
                            self.pipe = Some(p);
                            budget = budget.saturating_sub(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            cx.pool.give(p);
                            *src_readable = false;
                            return Ok(Pumped::Blocked);
                        }
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::EINVAL) | Some(libc::ENOSYS)
                            ) =>
                        {
                            cx.pool.give(p);
                            self.copy_only = true;
                        }
                        Err(e) => {
                            cx.pool.give(p);
                            return Err(e);
                        }
                    }
                    continue;
                }
                cx.shard.copy_fallbacks.fetch_add(1, Relaxed);
            }
            match sys::recv(src, cx.scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    if let Some(t) = tap.as_mut() {
                        if !t(&cx.scratch[..n]) {
                            return Ok(Pumped::Blocked);
                        }
                    }
                    budget = budget.saturating_sub(n);
                    let mut k = 0;
                    if *dst_writable {
                        match sys::send(dst, &cx.scratch[..n], false) {
                            Ok(w) => {
                                k = w;
                                *dst_writable = w == n;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                *dst_writable = false;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    self.delivered(k, counter, cx);
                    if k < n {
                        self.pending = cx.scratch[k..n].to_vec();
                        self.sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *src_readable = false;
                    return Ok(Pumped::Blocked);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn delivered(&mut self, n: usize, counter: &AtomicU64, cx: &mut Cx<'_>) {
        if n > 0 {
            self.bytes += n as u64;
            counter.fetch_add(n as u64, Relaxed);
            cx.moved = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// The premise of stopping at a short write: after a write that the kernel cut short (send
    /// buffer full), an edge-triggered poller is told when the socket is writable again, with no
    /// further write attempted in between.
    #[test]
    fn a_short_write_is_followed_by_a_writable_edge() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut ep = sys::Epoll::new(8).unwrap();
        ep.add(a.as_fd(), sys::Interest::ReadWrite, 7).unwrap();
        let chunk = vec![0u8; 256 * 1024];
        let mut short = false;
        for _ in 0..10_000 {
            let n = sys::send(a.as_fd(), &chunk, false).unwrap();
            if n < chunk.len() {
                short = true;
                break;
            }
        }
        assert!(short, "the send buffer never filled");
        // Let anything queued before the short write arrive, then take it out of the way.
        std::thread::sleep(Duration::from_millis(50));
        let mut ready = Vec::new();
        ep.wait(Some(Duration::ZERO), &mut ready).unwrap();
        ready.clear();
        // The peer reads; the writer does nothing but wait for the edge.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 1 << 20];
        b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut writable = false;
        while !writable && Instant::now() < deadline {
            let _ = b.read(&mut buf);
            ep.wait(Some(Duration::from_millis(1)), &mut ready).unwrap();
            writable = ready
                .iter()
                .any(|r| r.key == 7 && r.bits & libc::EPOLLOUT as u32 != 0);
        }
        assert!(writable, "no writable edge after the short write");
    }

    /// A read shorter than the pipe's slot count ends the turn without the read that would only
    /// say EAGAIN — which, had the source hung up, would have found its FIN: so with the
    /// hang-up reported the flow reads on and passes the EOF along.
    #[test]
    fn a_small_read_needs_no_probe_unless_the_source_hung_up() {
        let shard = std::sync::Arc::new(crate::metrics::Shard::default());
        let mut pool = PipePool::new(1 << 20, 8, std::sync::Arc::clone(&shard));
        let Some(p) = pool.take() else {
            eprintln!("skipped: no pipe");
            return;
        };
        if p.slots < 9 {
            eprintln!(
                "skipped: pipe of {} bytes (a 1 MiB pipe was refused)",
                p.capacity
            );
            return;
        }
        pool.give(p);
        let pair = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            b.set_nonblocking(true).unwrap();
            (a, b)
        };
        for hup in [false, true] {
            let (mut peer, src) = pair();
            let (dst, mut far) = pair();
            std::io::Write::write_all(&mut peer, b"8 bytes!").unwrap();
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            // Both the bytes and the FIN are queued on `src` (bounded wait on the kernel).
            let mut fds = [rustix::event::PollFd::new(
                &src,
                rustix::event::PollFlags::RDHUP,
            )];
            let five = rustix::event::Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            assert_eq!(rustix::event::poll(&mut fds, Some(&five)).unwrap(), 1);
            let mut scratch = vec![0u8; 4096];
            let mut cx = Cx {
                pool: &mut pool,
                scratch: &mut scratch,
                splice: true,
                shard: &shard,
                moved: false,
            };
            let (mut readable, mut writable) = (true, true);
            let counter = AtomicU64::new(0);
            let mut flow = Flow::default();
            let r = flow
                .pump(
                    src.as_fd(),
                    dst.as_fd(),
                    &mut readable,
                    hup,
                    &mut writable,
                    &counter,
                    1 << 20,
                    &mut cx,
                    None,
                )
                .unwrap();
            let mut got = [0u8; 8];
            far.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"8 bytes!");
            if hup {
                assert_eq!(
                    r,
                    Pumped::Done,
                    "with the hang-up reported, the EOF is read"
                );
            } else {
                assert_eq!(r, Pumped::Blocked, "no read after the short one");
                assert!(!readable);
            }
            flow.release(&mut pool);
        }
    }
}
