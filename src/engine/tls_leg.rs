//! The TLS leg to an `https://` relay proxy: rustls driven over a non-blocking socket.
//!
//! Bytes on this leg are encrypted in user space, so a tunnel through an `https://` relay copies
//! (client socket -> rustls -> relay socket and back) instead of splicing. Kernel TLS offload
//! would let the relay leg splice again; it needs the kernel's `tls` ULP, which the machines we
//! measured on do not have (`/proc/sys/net/ipv4/tcp_available_ulp`), see BENCHMARKS.md.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rustls::ClientConnection;

use super::flow::Tap;
use super::sys;

/// Plaintext the gateway buffers inside rustls before it stops reading the client.
const BUFFER_LIMIT: usize = 256 * 1024;
/// Largest plaintext chunk read from the client at once.
const CHUNK: usize = 16 * 1024;

/// `Read`/`Write` over a borrowed non-blocking socket.
struct FdIo<'a>(BorrowedFd<'a>);

impl Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0, buf)
    }
}

impl Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf, false)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One TLS session with the relay, and the state of both directions through it.
pub struct TlsLeg {
    conn: ClientConnection,
    /// The relay's TCP stream ended.
    tcp_eof: bool,
    /// Plaintext from the relay not yet delivered to the client.
    down_pending: Vec<u8>,
    down_sent: usize,
    /// Leading bytes of `down_pending` that are the gateway's own `200`.
    own: usize,
    up_eof: bool,
    up_shut: bool,
    down_eof: bool,
    down_shut: bool,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What one turn of [`TlsLeg::pump`] achieved.
pub struct Turn {
    pub moved: bool,
    pub done: bool,
    /// Stopped with work left (turn budget): run again soon.
    pub more: bool,
}

impl TlsLeg {
    pub fn new(mut conn: ClientConnection) -> TlsLeg {
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        TlsLeg {
            conn,
            tcp_eof: false,
            down_pending: Vec::new(),
            down_sent: 0,
            own: 0,
            up_eof: false,
            up_shut: false,
            down_eof: false,
            down_shut: false,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Queue plaintext for the relay (our CONNECT request, or early client data).
    pub fn send_plain(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(data)
    }

    /// Read plaintext the relay sent (its answer) into `out`; returns whether the relay's
    /// stream ended.
    pub fn recv_plain(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        while out.len() < max {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.tcp_eof)
    }

    /// Move records between rustls and the relay socket until blocked.
    pub fn io(&mut self, fd: BorrowedFd<'_>, rd: &mut bool, wr: &mut bool) -> io::Result<()> {
        loop {
            let mut progress = false;
            while self.conn.wants_write() && *wr {
                match self.conn.write_tls(&mut FdIo(fd)) {
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => *wr = false,
                    Err(e) => return Err(e),
                }
            }
            while *rd && !self.tcp_eof && self.conn.wants_read() {
                match self.conn.read_tls(&mut FdIo(fd)) {
                    Ok(0) => self.tcp_eof = true,
                    Ok(_) => {
                        self.conn.process_new_packets().map_err(io::Error::other)?;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => *rd = false,
                    Err(e) => return Err(e),
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Start the tunnel: the `200` for the client, then any plaintext the relay already sent
    /// after its answer; `early` client bytes go to the relay first.
    pub fn start_tunnel(&mut self, answer: &[u8], from_relay: &[u8]) {
        self.down_pending.extend_from_slice(answer);
        self.down_pending.extend_from_slice(from_relay);
        self.own = answer.len();
    }

    /// Client bytes read by the gateway itself (early data, an inspected ClientHello): queued
    /// for the relay and counted as relayed.
    pub fn forward_up(&mut self, data: &[u8], counter: &AtomicU64) -> io::Result<()> {
        if !data.is_empty() {
            self.bytes_up += data.len() as u64;
            counter.fetch_add(data.len() as u64, Relaxed);
            self.send_plain(data)?;
        }
        Ok(())
    }

    /// Deliver what is queued for the client (the `200`), reading nothing.
    pub fn flush_down(
        &mut self,
        client: BorrowedFd<'_>,
        c_wr: &mut bool,
        counter: &AtomicU64,
    ) -> io::Result<()> {
        while self.down_sent < self.down_pending.len() && *c_wr {
            match sys::send(client, &self.down_pending[self.down_sent..], false) {
                Ok(n) => {
                    self.down_sent += n;
                    let own = n.min(self.own);
                    self.own -= own;
                    let relayed = (n - own) as u64;
                    self.bytes_down += relayed;
                    counter.fetch_add(relayed, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *c_wr = false,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Relay both directions until blocked. Returns an error on any I/O or TLS failure.
    #[allow(clippy::too_many_arguments)]
    pub fn pump(
        &mut self,
        client: BorrowedFd<'_>,
        relay: BorrowedFd<'_>,
        c_rd: &mut bool,
        c_wr: &mut bool,
        u_rd: &mut bool,
        u_wr: &mut bool,
        scratch: &mut [u8],
        up_counter: &AtomicU64,
        down_counter: &AtomicU64,
        mut tap_up: Option<Tap<'_>>,
        mut tap_down: Option<Tap<'_>>,
    ) -> io::Result<Turn> {
        let mut moved = false;
        let mut more = false;
        for turn in 0..64 {
            let mut progress = false;
            self.io(relay, u_rd, u_wr)?;

            // Relay -> client.
            let before = self.down_sent;
            self.flush_down(client, c_wr, down_counter)?;
            progress |= self.down_sent != before;
            if self.down_sent == self.down_pending.len() {
                self.down_pending.clear();
                self.down_sent = 0;
                if !self.down_eof {
                    let chunk = scratch.len().min(64 * 1024);
                    match self.conn.reader().read(&mut scratch[..chunk]) {
                        Ok(0) => self.down_eof = true,
                        Ok(n) => {
                            if let Some(t) = tap_down.as_mut() {
                                if !t(&scratch[..n]) {
                                    return Ok(Turn {
                                        moved,
                                        done: false,
                                        more: false,
                                    });
                                }
                            }
                            self.down_pending.extend_from_slice(&scratch[..n]);
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if self.tcp_eof {
                                self.down_eof = true;
                            }
                        }
                        // The relay closed TCP without close_notify: treat as the end.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.down_eof = true,
                        Err(e) => return Err(e),
                    }
                }
                if self.down_eof && !self.down_shut && self.down_pending.is_empty() {
                    let _ = sys::shutdown_write(client);
                    self.down_shut = true;
                    progress = true;
                }
            }

            // Client -> relay: read only once rustls has flushed what it holds.
            if !self.up_eof && *c_rd && !self.conn.wants_write() {
                let chunk = scratch.len().min(CHUNK);
                match sys::recv(client, &mut scratch[..chunk]) {
                    Ok(0) => {
                        self.up_eof = true;
                        self.conn.send_close_notify();
                        progress = true;
                    }
                    Ok(n) => {
                        if let Some(t) = tap_up.as_mut() {
                            if !t(&scratch[..n]) {
                                return Ok(Turn {
                                    moved,
                                    done: false,
                                    more: false,
                                });
                            }
                        }
                        self.conn.writer().write_all(&scratch[..n])?;
                        self.bytes_up += n as u64;
                        up_counter.fetch_add(n as u64, Relaxed);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => *c_rd = false,
                    Err(e) => return Err(e),
                }
            }
            if self.up_eof && !self.up_shut && !self.conn.wants_write() {
                let _ = sys::shutdown_write(relay);
                self.up_shut = true;
                progress = true;
            }
            moved |= progress;
            if !progress {
                break;
            }
            more = turn == 63;
        }
        Ok(Turn {
            moved,
            done: self.up_shut && self.down_shut,
            more,
        })
    }
}
