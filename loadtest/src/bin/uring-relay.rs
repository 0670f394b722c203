//! `uring-relay`: the data-path variant splicegate did not choose, built only to be measured
//! beside it (issue #6: "readiness + splice(2) with a pipe pool" against "io_uring recv/send with
//! a buffer ring").
//!
//! A minimal CONNECT relay on one thread and one io_uring: it answers `200` to each CONNECT
//! (no policy), dials the authority (an IP literal), and then moves bytes client -> upstream with
//! a multishot `IORING_OP_RECV` drawing from a registered provided-buffer ring, and
//! `IORING_OP_SEND` from the same buffer, which goes back to the ring once sent. The reverse
//! direction is drained and dropped (the `stream` scenario only sends). One tunnel at a time;
//! it exits after `--seconds`. Loopback only.
//!
//! Usage: `uring-relay --listen 127.0.0.1:0 --seconds 60` prints `listening ADDR`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use io_uring::{cqueue, opcode, types, IoUring};

const BUF_SIZE: usize = 64 * 1024;
const BUFS: u16 = 64;
const GROUP: u16 = 7;
const RECV: u64 = 1;
const SEND: u64 = 2;

/// The provided-buffer ring: `BUFS` entries of `struct io_uring_buf` (16 bytes each, the ring's
/// tail in the last 2 bytes of the first entry) plus the buffers themselves.
struct BufRing {
    ring: *mut u8,
    ring_len: usize,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new(uring: &IoUring) -> Result<BufRing> {
        let ring_len = usize::from(BUFS) * 16;
        // SAFETY: an anonymous private mapping of ring_len bytes; checked for MAP_FAILED below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        let mut r = BufRing {
            ring: ring.cast(),
            ring_len,
            bufs: vec![0u8; usize::from(BUFS) * BUF_SIZE],
            tail: 0,
        };
        // SAFETY: the ring memory is page-aligned, BUFS * 16 bytes, and outlives the io_uring
        // registration (the process exits before the BufRing is dropped, and Drop unmaps only
        // after the ring is gone in `main`).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(r.ring as u64, BUFS, GROUP, 0)
        }
        .context("IORING_REGISTER_PBUF_RING (kernel 5.19+)")?;
        for bid in 0..BUFS {
            r.give(bid);
        }
        Ok(r)
    }

    /// Put buffer `bid` back at the ring's tail.
    fn give(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (BUFS - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * BUF_SIZE as u64;
        // SAFETY: idx < BUFS, so the 16-byte entry lies inside the mapping; the kernel only
        // reads entries between its head and our tail, and this one is past the tail until the
        // tail store below.
        unsafe {
            let e = self.ring.add(idx * 16);
            std::ptr::write_unaligned(e.cast::<u64>(), addr);
            std::ptr::write_unaligned(e.add(8).cast::<u32>(), BUF_SIZE as u32);
            std::ptr::write_unaligned(e.add(12).cast::<u16>(), bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the `resv` field of entry 0 (offset 14); a release store
        // publishes the entry written above.
        unsafe {
            let t = &*(self.ring.add(14).cast::<std::sync::atomic::AtomicU16>());
            t.store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * BUF_SIZE;
        &self.bufs[start..start + len]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}

fn main() -> Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut seconds = 60u64;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--listen" => listen = args.get(i + 1).context("--listen ADDR")?.parse()?,
            "--seconds" => seconds = args.get(i + 1).context("--seconds N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    let l = TcpListener::bind(listen)?;
    println!("listening {}", l.local_addr()?);
    let deadline = Instant::now() + Duration::from_secs(seconds.clamp(1, 3600));
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        std::process::exit(0);
    });
    let mut uring = IoUring::new(256)?;
    let mut bufs = BufRing::new(&uring)?;
    for client in l.incoming() {
        let Ok(mut client) = client else { continue };
        if let Err(e) = tunnel(&mut uring, &mut bufs, &mut client) {
            eprintln!("tunnel: {e:#}");
        }
    }
    Ok(())
}

/// Read the CONNECT head, dial, answer 200, then relay client -> upstream until EOF.
fn tunnel(uring: &mut IoUring, bufs: &mut BufRing, client: &mut TcpStream) -> Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut b)? == 0 || head.len() > 8192 {
            bail!("no CONNECT head");
        }
        head.push(b[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1).context("no authority")?;
    let up = TcpStream::connect(target).with_context(|| format!("connect {target}"))?;
    up.set_nodelay(true)?;
    client.set_nodelay(true)?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    let (cfd, ufd) = (client.as_raw_fd(), up.as_raw_fd());
    let recv = opcode::RecvMulti::new(types::Fd(cfd), GROUP)
        .build()
        .user_data(RECV);
    // SAFETY: the entry refers to fds that stay open for the whole tunnel and to the buffer
    // group registered above.
    unsafe { uring.submission().push(&recv) }.map_err(|_| anyhow::anyhow!("SQ full"))?;
    // Received buffers waiting to be sent, in order: (bid, len, sent so far).
    let mut queue: VecDeque<(u16, usize, usize)> = VecDeque::new();
    let mut sending = false;
    let mut eof = false;
    loop {
        if !sending {
            if let Some(&(bid, len, off)) = queue.front() {
                let data = bufs.buf(bid, len);
                let send =
                    opcode::Send::new(types::Fd(ufd), data[off..].as_ptr(), (len - off) as u32)
                        .build()
                        .user_data(SEND);
                // SAFETY: the buffer stays untouched (not returned to the ring) until this
                // send completes.
                unsafe { uring.submission().push(&send) }
                    .map_err(|_| anyhow::anyhow!("SQ full"))?;
                sending = true;
            } else if eof {
                return Ok(());
            }
        }
        uring.submit_and_wait(1)?;
        let cqes: Vec<(u64, i32, u32)> = uring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in cqes {
            match ud {
                RECV => {
                    if res > 0 {
                        let bid = cqueue::buffer_select(flags).context("no buffer id")?;
                        queue.push_back((bid, res as usize, 0));
                    } else if res == 0 {
                        eof = true;
                    } else if res != -libc::ENOBUFS {
                        bail!("recv: {}", std::io::Error::from_raw_os_error(-res));
                    }
                    if !cqueue::more(flags) && !eof {
                        // The multishot ended (out of buffers): arm it again.
                        // SAFETY: as above.
                        unsafe { uring.submission().push(&recv) }
                            .map_err(|_| anyhow::anyhow!("SQ full"))?;
                    }
                }
                SEND => {
                    sending = false;
                    if res < 0 {
                        bail!("send: {}", std::io::Error::from_raw_os_error(-res));
                    }
                    if let Some(front) = queue.front_mut() {
                        front.2 += res as usize;
                        if front.2 >= front.1 {
                            let bid = front.0;
                            queue.pop_front();
                            bufs.give(bid);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
