//! `floor-relay`: the floor for issue 17 — the least a CONNECT relay on splicegate's driver
//! approach can cost, so that the benchmarks can say how much of splicegate's CPU is its own and
//! how much is the kernel's.
//!
//! Same data path as splicegate's io_uring engine, nothing else: one thread per core, each with
//! its own `SO_REUSEPORT` listener and io_uring (`SINGLE_ISSUER | DEFER_TASKRUN` when available),
//! a multishot `ACCEPT` per listener, a multishot `POLL_ADD` (IN|OUT|RDHUP) per socket, and
//! readiness-driven non-blocking `splice(2)` socket -> pipe -> socket, a pipe taken from a
//! per-thread pool only while bytes are in flight. Per connection: read the head up to
//! `\r\n\r\n`, take the authority of the request line (an IP literal: no resolver), dial, answer
//! `200`, splice both directions, pass EOF on with `shutdown(SHUT_WR)`, close when both are done.
//! No policy, no events, no inspection, no timeouts, no metrics.
//!
//! Loopback benchmark tool only; it exits after `--seconds`.
//!
//! Usage: `floor-relay --listen 127.0.0.1:0 [--workers N] [--pipe-size BYTES] --seconds 600`
//! prints `listening ADDR`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, Socket, Type};

const POLL_MASK: u32 =
    (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;
/// User data of the listener's multishot accept.
const ACCEPT: u64 = 1 << 63;
/// Completions nobody waits for (poll removals).
const IGNORE: u64 = 1 << 62;
const GEN_MASK: u32 = (1 << 29) - 1;
/// Bytes a direction reads per turn before other connections get theirs (as splicegate).
const BUDGET: usize = 1 << 20;
const MAX_HEAD: usize = 8192;
const ANSWER: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

fn main() -> Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut seconds = 600u64;
    let mut workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut pipe_size = 1usize << 20;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value", args[i]));
        match args[i].as_str() {
            "--listen" => listen = v?.parse()?,
            "--seconds" => seconds = v?.parse()?,
            "--workers" => workers = v?.parse()?,
            "--pipe-size" => pipe_size = v?.parse()?,
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    raise_nofile();
    let first = listener(listen)?;
    let addr = first
        .local_addr()?
        .as_socket()
        .context("listener address")?;
    let mut listeners = vec![first];
    for _ in 1..workers.max(1) {
        listeners.push(listener(addr)?);
    }
    println!("listening {addr}");
    let deadline = Instant::now() + Duration::from_secs(seconds.clamp(1, 7200));
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        std::process::exit(0);
    });
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || Worker::new(l, pipe_size).and_then(|w| w.run())))
        .collect();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("worker: {e:#}"),
            Err(_) => eprintln!("worker panicked"),
        }
    }
    Ok(())
}

/// A `SO_REUSEPORT` listener with `TCP_NODELAY`, which accepted sockets inherit.
fn listener(addr: SocketAddr) -> Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    s.listen(4096)?;
    Ok(s)
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Converts a `-1`/errno return into an `io::Result`.
fn cvt(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize, more: bool) -> io::Result<usize> {
    let mut flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    if more {
        flags |= libc::SPLICE_F_MORE;
    }
    // SAFETY: plain fds owned by the caller, no offsets.
    cvt(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    })
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice of buf.len() bytes.
    cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid readable slice of buf.len() bytes.
    cvt(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both fds are new and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on an fd we own.
        let mut cap =
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        if cap < 0 {
            // SAFETY: as above.
            cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        Ok(Pipe {
            r,
            w,
            cap: cap.max(4096) as usize,
        })
    }
}

/// One direction of a tunnel.
#[derive(Default)]
struct Dir {
    pending: Vec<u8>,
    sent: usize,
    pipe: Option<Pipe>,
    in_pipe: usize,
    eof: bool,
    shut: bool,
}

enum Phase {
    Head(Vec<u8>),
    Connecting,
    Tunnel,
}

struct Conn {
    gen: u32,
    client: OwnedFd,
    up: Option<OwnedFd>,
    phase: Phase,
    /// Readiness flags, set by poll completions and cleared on EAGAIN: client, upstream.
    c_read: bool,
    c_write: bool,
    u_read: bool,
    u_write: bool,
    /// 0: client -> upstream, 1: upstream -> client.
    dirs: [Dir; 2],
}

enum Step {
    Blocked,
    Budget,
    Done,
}

struct Worker {
    ring: IoUring,
    listener: Socket,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    pool: Vec<Pipe>,
    pipe_size: usize,
    runnable: VecDeque<(u32, u32)>,
}

fn key(slot: u32, gen: u32, upstream: bool) -> u64 {
    (u64::from(gen & GEN_MASK) << 33) | (u64::from(slot) << 1) | u64::from(upstream)
}

fn unkey(k: u64) -> (u32, u32, bool) {
    (
        ((k >> 1) & 0xffff_ffff) as u32,
        ((k >> 33) as u32) & GEN_MASK,
        k & 1 == 1,
    )
}

impl Worker {
    fn new(listener: Socket, pipe_size: usize) -> Result<Worker> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(4096)
            .build(1024)
            .or_else(|_| IoUring::builder().setup_cqsize(4096).build(1024))?;
        Ok(Worker {
            ring,
            listener,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            pool: Vec::new(),
            pipe_size,
            runnable: VecDeque::new(),
        })
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry refers only to fds and user data (no buffers): polls, poll
        // removals and a multishot accept without an address.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&e) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ACCEPT);
        self.push(e)
    }

    fn poll(&mut self, fd: RawFd, k: u64) -> io::Result<()> {
        self.push(
            opcode::PollAdd::new(types::Fd(fd), POLL_MASK)
                .multi(true)
                .build()
                .user_data(k),
        )
    }

    fn remove(&mut self, k: u64) {
        let _ = self.push(opcode::PollRemove::new(k).build().user_data(IGNORE));
    }

    fn run(mut self) -> Result<()> {
        self.arm_accept()?;
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            let wait = if self.runnable.is_empty() { 1 } else { 0 };
            if let Err(e) = self.ring.submit_and_wait(wait) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) {
                    return Err(e.into());
                }
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(ud, res, flags) in &cqes {
                let more = cqueue::more(flags);
                if ud == IGNORE {
                    continue;
                }
                if ud == ACCEPT {
                    if res >= 0 {
                        // SAFETY: a successful accept completion: a new fd nobody else owns.
                        let fd = unsafe { OwnedFd::from_raw_fd(res) };
                        self.accepted(fd)?;
                    }
                    if !more {
                        self.arm_accept()?;
                    }
                    continue;
                }
                let (slot, gen, upstream) = unkey(ud);
                let live = matches!(self.conns.get(slot as usize), Some(Some(c)) if c.gen == gen);
                if !live {
                    if more && res != -libc::ECANCELED {
                        self.remove(ud);
                    }
                    continue;
                }
                let mask = if res >= 0 { res as u32 } else { POLL_MASK };
                let bad = mask & (libc::POLLERR | libc::POLLHUP) as u32 != 0;
                let r = bad || mask & (libc::POLLIN | libc::POLLRDHUP) as u32 != 0;
                let w = bad || mask & libc::POLLOUT as u32 != 0;
                let mut rearm = None;
                if let Some(Some(c)) = self.conns.get_mut(slot as usize) {
                    if upstream {
                        c.u_read |= r;
                        c.u_write |= w;
                        if !more {
                            rearm = c.up.as_ref().map(|f| f.as_raw_fd());
                        }
                    } else {
                        c.c_read |= r;
                        c.c_write |= w;
                        if !more {
                            rearm = Some(c.client.as_raw_fd());
                        }
                    }
                }
                if let Some(fd) = rearm {
                    self.poll(fd, ud)?;
                }
                self.drive(slot)?;
            }
            for _ in 0..self.runnable.len() {
                if let Some((slot, gen)) = self.runnable.pop_front() {
                    if matches!(self.conns.get(slot as usize), Some(Some(c)) if c.gen == gen) {
                        self.drive(slot)?;
                    }
                }
            }
        }
    }

    fn accepted(&mut self, client: OwnedFd) -> io::Result<()> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let gen = self.gens[slot as usize];
        let fd = client.as_raw_fd();
        self.conns[slot as usize] = Some(Conn {
            gen,
            client,
            up: None,
            phase: Phase::Head(Vec::new()),
            c_read: false,
            c_write: false,
            u_read: false,
            u_write: false,
            dirs: [Dir::default(), Dir::default()],
        });
        self.poll(fd, key(slot, gen, false))
    }

    fn close(&mut self, slot: u32) {
        let Some(mut c) = self.conns[slot as usize].take() else {
            return;
        };
        self.remove(key(slot, c.gen, false));
        if c.up.is_some() {
            self.remove(key(slot, c.gen, true));
        }
        for d in &mut c.dirs {
            if let Some(p) = d.pipe.take() {
                if d.in_pipe == 0 && self.pool.len() < 64 {
                    self.pool.push(p);
                }
            }
        }
        self.gens[slot as usize] = (c.gen + 1) & GEN_MASK;
        self.free.push(slot);
    }

    /// Act on a connection's readiness; closes it when it ends or fails.
    fn drive(&mut self, slot: u32) -> io::Result<()> {
        let Some(mut c) = self.conns[slot as usize].take() else {
            return Ok(());
        };
        let outcome = self.step(slot, &mut c);
        let gen = c.gen;
        self.conns[slot as usize] = Some(c);
        match outcome {
            Ok(Step::Blocked) => {}
            Ok(Step::Budget) => self.runnable.push_back((slot, gen)),
            Ok(Step::Done) | Err(_) => self.close(slot),
        }
        Ok(())
    }

    fn step(&mut self, slot: u32, c: &mut Conn) -> io::Result<Step> {
        if let Phase::Head(buf) = &mut c.phase {
            if !c.c_read {
                return Ok(Step::Blocked);
            }
            let mut tmp = [0u8; 4096];
            let end = loop {
                match recv(c.client.as_raw_fd(), &mut tmp) {
                    Ok(0) => return Ok(Step::Done),
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    Err(e) if would_block(&e) => {
                        c.c_read = false;
                        break None;
                    }
                    Err(e) => return Err(e),
                }
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                if buf.len() > MAX_HEAD {
                    return Ok(Step::Done);
                }
            };
            let Some(end) = end else {
                return Ok(Step::Blocked);
            };
            let target = std::str::from_utf8(&buf[..end])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1))
                .and_then(|a| a.parse::<SocketAddr>().ok());
            let Some(target) = target else {
                let _ = send(c.client.as_raw_fd(), b"HTTP/1.1 400 Bad Request\r\n\r\n");
                return Ok(Step::Done);
            };
            c.dirs[0].pending = buf[end..].to_vec();
            let s = Socket::new(
                Domain::for_address(target),
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )?;
            s.set_nodelay(true)?;
            match s.connect(&target.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(_) => {
                    let _ = send(c.client.as_raw_fd(), b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return Ok(Step::Done);
                }
            }
            let up = OwnedFd::from(s);
            self.poll(up.as_raw_fd(), key(slot, c.gen, true))?;
            c.up = Some(up);
            c.phase = Phase::Connecting;
            return Ok(Step::Blocked);
        }
        let Some(up) = c.up.as_ref().map(|u| u.as_raw_fd()) else {
            return Ok(Step::Done);
        };
        if let Phase::Connecting = c.phase {
            if !c.u_write {
                return Ok(Step::Blocked);
            }
            let connected =
                c.up.as_ref()
                    .is_some_and(|u| matches!(socket2::SockRef::from(u).take_error(), Ok(None)));
            if !connected {
                let _ = send(c.client.as_raw_fd(), b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                return Ok(Step::Done);
            }
            c.dirs[1].pending = ANSWER.to_vec();
            c.phase = Phase::Tunnel;
        }
        let client = c.client.as_raw_fd();
        let a = self.pump(0, c, client, up)?;
        let b = self.pump(1, c, up, client)?;
        Ok(match (a, b) {
            (Step::Done, Step::Done) => Step::Done,
            (Step::Budget, _) | (_, Step::Budget) => Step::Budget,
            _ => Step::Blocked,
        })
    }

    /// Move one direction's bytes until blocked, done or out of budget (splicegate's `Flow`,
    /// without the copy fallback's tap).
    fn pump(&mut self, i: usize, c: &mut Conn, src: RawFd, dst: RawFd) -> io::Result<Step> {
        let (sr, dw) = if i == 0 {
            (&mut c.c_read, &mut c.u_write)
        } else {
            (&mut c.u_read, &mut c.c_write)
        };
        let d = &mut c.dirs[i];
        let mut budget = BUDGET;
        loop {
            if d.sent < d.pending.len() {
                if !*dw {
                    return Ok(Step::Blocked);
                }
                match send(dst, &d.pending[d.sent..]) {
                    Ok(n) => {
                        d.sent += n;
                        continue;
                    }
                    Err(e) if would_block(&e) => {
                        *dw = false;
                        return Ok(Step::Blocked);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !d.pending.is_empty() {
                d.pending = Vec::new();
                d.sent = 0;
            }
            if d.in_pipe > 0 {
                if !*dw {
                    return Ok(Step::Blocked);
                }
                let p = d.pipe.as_ref().ok_or_else(|| io::Error::other("no pipe"))?;
                match splice(p.r.as_raw_fd(), dst, d.in_pipe, false) {
                    Ok(0) => return Err(io::Error::other("pipe wrote 0")),
                    Ok(n) => {
                        d.in_pipe -= n;
                        continue;
                    }
                    Err(e) if would_block(&e) => {
                        *dw = false;
                        return Ok(Step::Blocked);
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(p) = d.pipe.take() {
                self.pool.push(p);
            }
            if d.eof {
                if !d.shut {
                    // SAFETY: shutdown on an fd the connection owns.
                    unsafe { libc::shutdown(dst, libc::SHUT_WR) };
                    d.shut = true;
                }
                return Ok(Step::Done);
            }
            if budget == 0 {
                return Ok(Step::Budget);
            }
            if !*sr {
                return Ok(Step::Blocked);
            }
            let p = match self.pool.pop() {
                Some(p) => p,
                None => Pipe::new(self.pipe_size)?,
            };
            match splice(src, p.w.as_raw_fd(), p.cap, true) {
                Ok(0) => {
                    self.pool.push(p);
                    d.eof = true;
                }
                Ok(n) => {
                    d.in_pipe = n;
                    d.pipe = Some(p);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if would_block(&e) => {
                    self.pool.push(p);
                    *sr = false;
                    return Ok(Step::Blocked);
                }
                Err(e) => {
                    self.pool.push(p);
                    return Err(e);
                }
            }
        }
    }
}
