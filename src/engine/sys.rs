//! The engine's syscall layer: typed, safe wrappers over `rustix` for the calls the workers make.
//!
//! `splice(2)`, `pipe2(2)`, `F_SETPIPE_SZ`, `recv(2)`/`send(2)`, `shutdown(2)`, `accept4(2)`,
//! `eventfd(2)`, `epoll(7)` and `RLIMIT_NOFILE`. Each returns `io::Result` and leaves policy
//! (retry, fallback) to the caller. There is no `unsafe` here: `rustix` owns the raw calls, and
//! the only `unsafe` left in the crate is the io_uring submission code in `driver.rs`.
//!
//! SIGPIPE: a `splice(2)` into a socket whose peer has gone has no `MSG_NOSIGNAL`. The Rust
//! runtime sets SIGPIPE to `SIG_IGN` before `main` on Unix, so such a write fails with `EPIPE`
//! instead of killing the process; `send` still passes `MSG_NOSIGNAL` for good measure.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{epoll, EventfdFlags, Timespec};
use rustix::net::{RecvFlags, SendFlags, Shutdown, SocketFlags};
use rustix::pipe::{PipeFlags, SpliceFlags};
use rustix::process::{Resource, Rlimit};

/// `splice(2)` between two fds (one of them a pipe), non-blocking on the pipe side.
/// `Ok(0)` from a socket source means the peer shut down its write side.
pub fn splice(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let mut flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    if more {
        flags |= SpliceFlags::MORE;
    }
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(
        PipeFlags::NONBLOCK | PipeFlags::CLOEXEC,
    )?)
}

/// `F_SETPIPE_SZ`; returns the capacity the kernel actually granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_setpipe_size(fd, size)?)
}

/// The system's page size (from the auxiliary vector: no syscall).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// `F_GETPIPE_SZ`: the pipe's capacity.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_getpipe_size(fd)?)
}

/// Non-blocking `recv(2)` into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let (n, _) = rustix::net::recv(fd, buf, RecvFlags::DONTWAIT)?;
    Ok(n)
}

/// Non-blocking `send(2)` that never raises SIGPIPE.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], more: bool) -> io::Result<usize> {
    let mut flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if more {
        flags |= SendFlags::MORE;
    }
    Ok(rustix::net::send(fd, buf, flags)?)
}

/// `shutdown(fd, SHUT_WR)`: propagate a half-close.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::shutdown(fd, Shutdown::Write)?)
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`; the peer address is read separately.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(
        listener,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
    )?)
}

/// Open `/dev/null`: the spare fd that lets a worker accept and refuse a client when the
/// process is out of descriptors.
pub fn spare_fd() -> io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

/// A non-blocking eventfd used to wake a worker from another thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
    )?)
}

/// Reset an eventfd's counter.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v = [0u8; 8];
    let _ = rustix::io::read(fd, &mut v);
}

/// What an epoll registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable, edge-triggered (listeners, eventfds).
    Read,
    /// Readable, writable and peer half-close, edge-triggered (connections).
    ReadWrite,
}

/// One readiness report from [`Epoll::wait`]: the registration's key and its `EPOLL*` bits.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub key: u64,
    pub bits: u32,
}

/// An epoll instance with its wait buffer.
pub struct Epoll {
    fd: OwnedFd,
    buf: Vec<epoll::Event>,
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)` with room for `capacity` events per wait.
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            buf: Vec::with_capacity(capacity.max(1)),
        })
    }

    /// `EPOLL_CTL_ADD` with `interest` (always edge-triggered) and a 64-bit key.
    pub fn add(&self, fd: BorrowedFd<'_>, interest: Interest, key: u64) -> io::Result<()> {
        let flags = match interest {
            Interest::Read => epoll::EventFlags::IN | epoll::EventFlags::ET,
            Interest::ReadWrite => {
                epoll::EventFlags::IN
                    | epoll::EventFlags::OUT
                    | epoll::EventFlags::RDHUP
                    | epoll::EventFlags::ET
            }
        };
        Ok(epoll::add(
            &self.fd,
            fd,
            epoll::EventData::new_u64(key),
            flags,
        )?)
    }

    /// `EPOLL_CTL_DEL`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    /// `epoll_wait` for at most `timeout` (None: forever). `EINTR` is an empty wait.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        // Round up to whole milliseconds so a timer is never woken early and spun on.
        let ts = timeout.map(|t| {
            let ms = t.as_nanos().div_ceil(1_000_000);
            let ms = i64::try_from(ms).unwrap_or(i64::MAX / 1_000_000);
            Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            }
        });
        self.buf.clear();
        match epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(&mut self.buf),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        out.extend(self.buf.iter().map(|ev| {
            // `Event` is packed on x86_64: copy the fields out before using them.
            let (flags, data) = (ev.flags, ev.data);
            Ready {
                key: data.u64(),
                bits: flags.bits(),
            }
        }));
        Ok(())
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let rl = rustix::process::getrlimit(Resource::Nofile);
    let (cur, max) = (rl.current, rl.maximum);
    if cur != max {
        rustix::process::setrlimit(
            Resource::Nofile,
            Rlimit {
                current: max,
                maximum: max,
            },
        )?;
    }
    // `None` is RLIM_INFINITY.
    Ok(max.unwrap_or(u64::MAX))
}

/// The number of online CPUs.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn splice_socket_through_pipe() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let (r, w) = pipe().unwrap();
        let cap = set_pipe_size(r.as_fd(), 1 << 16).unwrap();
        assert!(cap >= 1 << 16);
        assert_eq!(pipe_size(r.as_fd()).unwrap(), cap);
        b.set_nonblocking(true).unwrap();
        // Nothing there yet: EAGAIN, not 0.
        let e = splice(b.as_fd(), w.as_fd(), cap, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"hello").unwrap();
        let mut n = 0;
        for _ in 0..1000 {
            match splice(b.as_fd(), w.as_fd(), cap, false) {
                Ok(k) => {
                    n = k;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        assert_eq!(n, 5);
        assert_eq!(splice(r.as_fd(), b.as_fd(), 5, false).unwrap(), 5);
        let mut buf = [0u8; 5];
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        drop(a);
        let mut eof = None;
        for _ in 0..1000 {
            match splice(b.as_fd(), w.as_fd(), cap, false) {
                Ok(k) => {
                    eof = Some(k);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        assert_eq!(eof, Some(0), "EOF is a zero-length splice");
    }

    #[test]
    fn splice_into_a_reset_peer_is_epipe_not_a_signal() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        // Reset the peer: linger 0 then close.
        socket2::SockRef::from(&a)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(a);
        let (r, w) = pipe().unwrap();
        let mut first = None;
        for _ in 0..100 {
            let _ = rustix::io::write(&w, b"x");
            match splice(r.as_fd(), b.as_fd(), 1, false) {
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => {
                    first = Some(e);
                    break;
                }
            }
        }
        let e = first.expect("a write into a reset socket fails");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)),
            "{e}"
        );
    }

    #[test]
    fn eventfd_signal_and_drain() {
        let fd = eventfd().unwrap();
        crate::mailbox::signal(fd.as_fd());
        crate::mailbox::signal(fd.as_fd());
        let mut v = [0u8; 8];
        let n = std::fs::File::from(fd.try_clone().unwrap())
            .read(&mut v)
            .unwrap();
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(v), 2);
        crate::mailbox::signal(fd.as_fd());
        eventfd_drain(fd.as_fd());
        let e = rustix::io::read(&fd, &mut v).unwrap_err();
        assert_eq!(e, rustix::io::Errno::AGAIN, "drained to zero");
    }

    #[test]
    fn epoll_reports_the_key_and_bits() {
        let mut ep = Epoll::new(8).unwrap();
        let fd = eventfd().unwrap();
        ep.add(fd.as_fd(), Interest::Read, 0xfeed).unwrap();
        let mut out = Vec::new();
        ep.wait(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty(), "nothing ready yet: {out:?}");
        crate::mailbox::signal(fd.as_fd());
        ep.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, 0xfeed);
        assert_ne!(out[0].bits & libc::EPOLLIN as u32, 0);
        ep.delete(fd.as_fd()).unwrap();
        out.clear();
        crate::mailbox::signal(fd.as_fd());
        ep.wait(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty(), "deleted: {out:?}");
    }

    #[test]
    fn nofile_limit_is_raised_to_hard() {
        let soft = raise_nofile_limit().unwrap();
        let rl = rustix::process::getrlimit(Resource::Nofile);
        assert_eq!(rl.current, rl.maximum, "the soft limit is the hard limit");
        assert_eq!(
            Some(soft),
            rl.current,
            "the limit returned is the one in force"
        );
    }
}
