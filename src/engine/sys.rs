//! The engine's syscall layer: the only place in the crate with `unsafe`.
//!
//! Thin, typed wrappers over `splice(2)`, `pipe2(2)`, `fcntl(2)`, `recv(2)`/`send(2)`,
//! `eventfd(2)`, `epoll(7)`, `getrlimit(2)` and `signal(2)`. Each returns `io::Result` and leaves
//! policy (retry, fallback) to the caller.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `splice(2)` between two fds (one of them a pipe), non-blocking on the pipe side.
/// `Ok(0)` from a socket source means the peer shut down its write side.
pub fn splice(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let mut flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    if more {
        flags |= libc::SPLICE_F_MORE;
    }
    // SAFETY: both fds are borrowed, so they stay open for the call; null offsets are valid for
    // pipes and sockets; the kernel does not retain any pointer.
    let r = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    cvt_size(r)
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `F_SETPIPE_SZ`; returns the capacity the kernel actually granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl with F_SETPIPE_SZ on a borrowed (open) fd takes an int argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) }).map(|n| n as usize)
}

/// `F_GETPIPE_SZ`: the pipe's capacity.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: fcntl with F_GETPIPE_SZ on a borrowed (open) fd takes no argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) }).map(|n| n as usize)
}

/// Non-blocking `recv(2)` into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the whole call.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    cvt_size(r)
}

/// Non-blocking `send(2)` that never raises SIGPIPE.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], more: bool) -> io::Result<usize> {
    let mut flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    if more {
        flags |= libc::MSG_MORE;
    }
    // SAFETY: `buf` is a valid readable region of `buf.len()` bytes for the whole call.
    let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    cvt_size(r)
}

/// `shutdown(fd, SHUT_WR)`: propagate a half-close.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown on a borrowed (open) fd has no memory effects.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`; the peer address is read separately.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed by accept4.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 succeeded, so `fd` is a new open fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adopt an fd returned by io_uring's accept.
pub fn adopt_fd(fd: i32) -> OwnedFd {
    // SAFETY: the caller passes a non-negative result of a completed accept: a new fd that nobody
    // else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Set `O_NONBLOCK` (io_uring's accept has no flags for multishot accept on every kernel).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a borrowed (open) fd.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Open `/dev/null`: the spare fd that lets a worker accept and refuse a client when the
/// process is out of descriptors.
pub fn spare_fd() -> io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

/// A non-blocking eventfd used to wake a worker from another thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: eventfd succeeded: a new open fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd (wakes its poller). Errors (counter full) mean a wake is pending anyway.
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Reset an eventfd's counter.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a valid u64.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: a new open fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(op)` with `events` and a 64-bit key.
pub fn epoll_ctl(
    ep: BorrowedFd<'_>,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    key: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) }).map(drop)
}

/// `epoll_wait` into `buf`; returns the number of events filled.
pub fn epoll_wait(
    ep: BorrowedFd<'_>,
    buf: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let max = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `buf` is valid for `max` events.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), buf.as_mut_ptr(), max, timeout_ms) };
    cvt(n).map(|n| n as usize)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid rlimit to fill.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) })?;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` is a valid rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) })?;
    }
    Ok(rl.rlim_cur)
}

/// Ignore SIGPIPE process-wide: a synchronous `splice(2)` into a socket whose peer has gone
/// would otherwise kill the process (splice has no MSG_NOSIGNAL).
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
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
    fn eventfd_signal_and_drain() {
        let fd = eventfd().unwrap();
        eventfd_signal(fd.as_fd());
        eventfd_signal(fd.as_fd());
        let mut v = [0u8; 8];
        let n = std::fs::File::from(fd.try_clone().unwrap())
            .read(&mut v)
            .unwrap();
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(v), 2);
        eventfd_drain(fd.as_fd());
    }

    #[test]
    fn nofile_limit_is_raised_to_hard() {
        let soft = raise_nofile_limit().unwrap();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a valid rlimit to fill.
        cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }).unwrap();
        assert_eq!(soft, rl.rlim_cur, "the limit returned is the one in force");
        assert_eq!(rl.rlim_cur, rl.rlim_max, "the soft limit is the hard limit");
    }
}
