//! Agents, a TLS sink that checks every byte, and a CONNECT storm, for the HA tests.
//!
//! - [`Sink`]: a TLS server (rustls, an openssl-made certificate for [`SINK_NAME`]) in a lab
//!   host. After the handshake it tells the client which address the connection came from (the
//!   gateway that carried it, 4 bytes), then takes uploads: a 12-byte header (agent, sequence,
//!   length) and `length` bytes that must be the [`crate::support::Pattern`] of (agent, sequence); it
//!   answers `1` when every byte matched and `0` otherwise (counted as corrupt). It records when
//!   each connection arrived and from which gateway, and how many are open per gateway.
//! - [`Fleet`]: agents modelled on the load generator's agent profile (`loadtest/`, `agent`):
//!   each is a thread in an agent host that opens a CONNECT tunnel through the balancer, a TLS
//!   session inside it, and uploads on an open-loop schedule, waiting for the sink's answer;
//!   after `uploads_per_tunnel` uploads it closes the tunnel and opens a new one for the next (as
//!   an HTTP client recycles its connections). Like the real agents, an upload that fails is not
//!   lost: the agent opens a new tunnel and sends the same upload again (its disk queue). An idle
//!   tunnel found closed before an upload is replaced without counting a failure (as HTTP
//!   clients do with a stale pooled connection).
//! - [`storm`]: CONNECT set-ups as fast as a few threads can make them, counting refusals and
//!   resets apart from other failures.

use crate::netns::{enter, Lab};
use crate::support::{Pattern, TempDir};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The name the sink's certificate is issued for; agents CONNECT to `SINK_NAME:443`.
pub const SINK_NAME: &str = "sink.test";
/// A port of the sink host that accepts and at once closes every connection: the target of
/// [`storm`] (cheap, so the storm measures the path to it, not the sink).
pub const DISCARD_PORT: u16 = 8443;
/// Socket timeouts of agents and sink: a hung peer fails an upload instead of a test.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest upload the sink accepts.
const MAX_UPLOAD: u32 = 16 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pattern seed of one upload.
fn seed(agent: u32, seq: u32) -> u64 {
    (u64::from(agent) << 32) | u64::from(seq)
}

// ---------------------------------------------------------------------------------------------
// Certificate
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for [`SINK_NAME`] (an end-entity certificate: `CA:FALSE`).
pub struct SinkCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl SinkCert {
    pub fn new() -> SinkCert {
        let dir = TempDir::new("sink-cert");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        crate::netns::run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
                .arg("-subj")
                .arg(format!("/CN={SINK_NAME}"))
                .arg("-addext")
                .arg(format!("subjectAltName=DNS:{SINK_NAME}"))
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        SinkCert {
            cert,
            key,
            _dir: dir,
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let cert = CertificateDer::from_pem_file(&self.cert).expect("read the sink certificate");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("read the sink key");
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("rustls protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("the sink's certificate and key"),
        )
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.cert).expect("read the sink certificate"))
            .expect("the sink certificate as a root");
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("rustls protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------------------

/// What the sink saw.
#[derive(Default)]
pub struct SinkStats {
    /// Every accepted connection: when, and from which address (the gateway).
    accepted: Mutex<Vec<(Instant, IpAddr)>>,
    /// Connections open now, per gateway.
    open: Mutex<HashMap<IpAddr, u64>>,
    /// Uploads whose every byte matched.
    pub uploads: AtomicU64,
    /// Uploads with at least one wrong byte (or an impossible header).
    pub corrupt: AtomicU64,
    pub bytes: AtomicU64,
}

impl SinkStats {
    /// Connections from `from` accepted at or after `since`.
    pub fn accepted_since(&self, from: IpAddr, since: Instant) -> usize {
        lock(&self.accepted)
            .iter()
            .filter(|(at, ip)| *ip == from && *at >= since)
            .count()
    }

    /// Connections from `from` open now.
    pub fn open(&self, from: IpAddr) -> u64 {
        lock(&self.open).get(&from).copied().unwrap_or(0)
    }
}

/// Decrements a gateway's open count when a sink connection ends.
struct OpenGuard(Arc<SinkStats>, IpAddr);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.0.open).get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

pub struct Sink {
    pub stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listen on `addr` (an address of `host`).
    pub fn start(lab: &Lab, host: &str, addr: SocketAddr, cert: &SinkCert) -> Sink {
        let netns = lab.netns(host).to_string();
        let cfg = cert.server_config();
        let stats = Arc::new(SinkStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (st, sp) = (stats.clone(), stop.clone());
        let thread = thread::spawn(move || {
            enter(&netns);
            let bind = |a: SocketAddr| {
                let l = TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Ok::<_, io::Error>(l)
            };
            let (l, discard) = match bind(addr)
                .and_then(|l| Ok((l, bind(SocketAddr::new(addr.ip(), DISCARD_PORT))?)))
            {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            while !sp.load(Ordering::Relaxed) {
                let mut idle = true;
                // Bounded per turn, so the sink's own listener is served too.
                for _ in 0..256 {
                    match discard.accept() {
                        Ok(_) => idle = false,
                        Err(_) => break,
                    }
                }
                match l.accept() {
                    Ok((s, peer)) => {
                        idle = false;
                        let (cfg, st) = (cfg.clone(), st.clone());
                        lock(&st.accepted).push((Instant::now(), peer.ip()));
                        *lock(&st.open).entry(peer.ip()).or_insert(0) += 1;
                        thread::spawn(move || {
                            let _open = OpenGuard(st.clone(), peer.ip());
                            let _ = sink_conn(s, peer.ip(), cfg, &st);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
                if idle {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the sink thread reports its bind")
            .unwrap_or_else(|e| panic!("sink bind {addr}: {e}"));
        Sink {
            stats,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
fn read_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn sink_conn(
    s: TcpStream,
    from: IpAddr,
    cfg: Arc<rustls::ServerConfig>,
    stats: &SinkStats,
) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, s);
    let hello = match from {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [0; 4],
    };
    tls.write_all(&hello)?;
    tls.flush()?;
    let mut expect = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    loop {
        let mut hdr = [0u8; 12];
        if !read_or_eof(&mut tls, &mut hdr)? {
            return Ok(());
        }
        let word = |i: usize| u32::from_be_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (agent, seq, len) = (word(0), word(4), word(8));
        if len > MAX_UPLOAD {
            stats.corrupt.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut p = Pattern::new(seed(agent, seq));
        let (mut left, mut same) = (len as usize, true);
        while left > 0 {
            let k = left.min(got.len());
            tls.read_exact(&mut got[..k])?;
            p.fill(&mut expect[..k]);
            same &= got[..k] == expect[..k];
            left -= k;
        }
        if same {
            stats.uploads.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(u64::from(len), Ordering::Relaxed);
        } else {
            stats.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        tls.write_all(&[u8::from(same)])?;
        tls.flush()?;
    }
}

// ---------------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------------

/// A group of agents in one agent host.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// The agent host's namespace.
    pub netns: String,
    /// The address the agents connect from.
    pub source: IpAddr,
    /// Where they send their CONNECTs (the balancer).
    pub proxy: SocketAddr,
    pub agents: u32,
    /// Agent IDs are `first_id..first_id + agents`.
    pub first_id: u32,
    /// Bytes per upload.
    pub upload: usize,
    /// Time between two uploads of one agent.
    pub interval: Duration,
    /// Agent `id` closes its tunnel after `n + id % n` uploads.
    pub uploads_per_tunnel: u32,
    /// `Proxy-Authorization: Basic` user and password.
    pub credentials: Option<(String, String)>,
}

/// An upload or a tunnel set-up that failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: Instant,
    pub agent: u32,
    pub seq: u32,
    /// The gateway that carried the tunnel (unknown for a set-up that failed before the sink).
    pub gateway: Option<IpAddr>,
    /// For a set-up: whether the CONNECT had been answered 200 (the tunnel was up on some
    /// gateway and broke before the sink said which).
    pub answered: bool,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent {} upload {} via {:?} (answered 200: {}): {}",
            self.agent, self.seq, self.gateway, self.answered, self.error
        )
    }
}

#[derive(Default)]
pub struct FleetStats {
    /// Uploads acknowledged: when, and through which gateway.
    acked: Mutex<Vec<(Instant, IpAddr)>>,
    /// Per agent: uploads acknowledged so far (the next sequence number).
    next_seq: Mutex<HashMap<u32, u32>>,
    failures: Mutex<Vec<Failure>>,
    setup_failures: Mutex<Vec<Failure>>,
    /// Uploads the sink answered `0` (a wrong byte).
    pub rejected: AtomicU64,
    /// Idle tunnels found closed before an upload (replaced, not a failure).
    pub stale: AtomicU64,
}

impl FleetStats {
    pub fn acked(&self) -> usize {
        lock(&self.acked).len()
    }

    /// Uploads acknowledged through `gateway` at or after `since`.
    pub fn acked_via_since(&self, gateway: IpAddr, since: Instant) -> usize {
        lock(&self.acked)
            .iter()
            .filter(|(at, gw)| *gw == gateway && *at >= since)
            .count()
    }

    pub fn failures(&self) -> Vec<Failure> {
        lock(&self.failures).clone()
    }

    pub fn setup_failures(&self) -> Vec<Failure> {
        lock(&self.setup_failures).clone()
    }

    /// Whether `agent` has had upload `seq` acknowledged (uploads are acknowledged in order).
    pub fn is_acked(&self, agent: u32, seq: u32) -> bool {
        lock(&self.next_seq).get(&agent).is_some_and(|n| *n > seq)
    }
}

/// Agents running until [`Fleet::stop`] (or drop).
pub struct Fleet {
    stop: Arc<AtomicBool>,
    pub stats: Arc<FleetStats>,
    threads: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub fn start(spec: &AgentSpec, cert: &SinkCert) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FleetStats::default());
        let tls = cert.client_config();
        let t0 = Instant::now();
        let threads = (0..spec.agents)
            .map(|i| {
                let (spec, stop, stats, tls) =
                    (spec.clone(), stop.clone(), stats.clone(), tls.clone());
                // Phases spread evenly over one interval, as in the load generator.
                let first = t0 + spec.interval.mul_f64(f64::from(i) / f64::from(spec.agents));
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        enter(&spec.netns);
                        agent(spec.first_id + i, &spec, &tls, &stats, &stop, first);
                    })
                    .expect("spawn an agent thread")
            })
            .collect();
        Fleet {
            stop,
            stats,
            threads,
        }
    }

    /// Stop scheduling uploads, let the ones in flight finish, and wait for every agent.
    pub fn stop(mut self) -> Arc<FleetStats> {
        self.halt();
        self.stats.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An open tunnel with its TLS session to the sink.
struct Tunnel {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    gateway: IpAddr,
    used: u32,
}

impl Tunnel {
    /// Whether the peer closed (or reset) the idle tunnel: a byte or an EOF waiting, or an error.
    fn is_stale(&mut self) -> bool {
        let s = &self.tls.sock;
        if s.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let stale = !matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
        stale || s.set_nonblocking(false).is_err()
    }

    /// Send one upload and read the sink's verdict.
    fn upload(&mut self, agent: u32, seq: u32, payload: &[u8]) -> io::Result<bool> {
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&agent.to_be_bytes());
        hdr[4..8].copy_from_slice(&seq.to_be_bytes());
        hdr[8..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        self.tls.write_all(&hdr)?;
        self.tls.write_all(payload)?;
        self.tls.flush()?;
        let mut verdict = [0u8; 1];
        self.tls.read_exact(&mut verdict)?;
        Ok(verdict[0] == 1)
    }

    fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
        let _ = self.tls.sock.shutdown(Shutdown::Write);
    }
}

/// TCP connect from `source` to `proxy` within `IO_TIMEOUT`, with the socket timeouts set.
pub fn dial(source: IpAddr, proxy: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(proxy),
        socket2::Type::STREAM,
        None,
    )?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&proxy.into(), IO_TIMEOUT)?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Send `CONNECT SINK_NAME:443` (with credentials when given) and read the answer's status.
pub fn connect(s: &mut TcpStream, credentials: Option<&(String, String)>) -> io::Result<u16> {
    let mut req = format!("CONNECT {SINK_NAME}:443 HTTP/1.1\r\nHost: {SINK_NAME}:443\r\n");
    if let Some((user, pass)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // Byte by byte, so no tunnel byte after the head is consumed.
    let mut head = Vec::with_capacity(128);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("closed after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.push(b[0]);
        if head.len() > 8192 {
            return Err(io::Error::other("answer head over 8 KiB"));
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// A tunnel through the proxy with its TLS session; on failure, whether the CONNECT had been
/// answered 200.
fn open_tunnel(
    spec: &AgentSpec,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Tunnel, (bool, io::Error)> {
    let before = |e| (false, e);
    let mut s = dial(spec.source, spec.proxy).map_err(before)?;
    let status = connect(&mut s, spec.credentials.as_ref()).map_err(before)?;
    if status != 200 {
        return Err(before(io::Error::other(format!(
            "CONNECT answered {status}"
        ))));
    }
    let after = |e| (true, e);
    let name = ServerName::try_from(SINK_NAME)
        .map_err(io::Error::other)
        .map_err(after)?;
    let conn = rustls::ClientConnection::new(tls.clone(), name)
        .map_err(io::Error::other)
        .map_err(after)?;
    let mut tls = rustls::StreamOwned::new(conn, s);
    let mut hello = [0u8; 4];
    tls.read_exact(&mut hello).map_err(after)?;
    Ok(Tunnel {
        tls,
        gateway: IpAddr::V4(Ipv4Addr::from(hello)),
        used: 0,
    })
}

/// Sleep until `at`, waking every 50 ms to see `stop`; false when stopped.
fn sleep_until(at: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

fn agent(
    id: u32,
    spec: &AgentSpec,
    tls: &Arc<rustls::ClientConfig>,
    stats: &FleetStats,
    stop: &AtomicBool,
    first: Instant,
) {
    let mut next = first;
    let mut seq = 0u32;
    let mut tunnel: Option<Tunnel> = None;
    while sleep_until(next, stop) {
        next += spec.interval;
        if tunnel.as_mut().is_some_and(Tunnel::is_stale) {
            stats.stale.fetch_add(1, Ordering::Relaxed);
            tunnel = None;
        }
        let t = match tunnel.as_mut() {
            Some(t) => t,
            None => match open_tunnel(spec, tls) {
                Ok(t) => tunnel.insert(t),
                Err((answered, e)) => {
                    lock(&stats.setup_failures).push(Failure {
                        at: Instant::now(),
                        agent: id,
                        seq,
                        gateway: None,
                        answered,
                        error: e.to_string(),
                    });
                    continue;
                }
            },
        };
        let payload = Pattern::bytes(seed(id, seq), spec.upload);
        match t.upload(id, seq, &payload) {
            Ok(true) => {
                lock(&stats.acked).push((Instant::now(), t.gateway));
                seq += 1;
                lock(&stats.next_seq).insert(id, seq);
                t.used += 1;
                // Tunnels of different lengths, so that some are always in mid-life.
                if t.used >= spec.uploads_per_tunnel + id % spec.uploads_per_tunnel.max(1) {
                    if let Some(t) = tunnel.take() {
                        t.close();
                    }
                }
            }
            Ok(false) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tunnel = None;
            }
            Err(e) => {
                lock(&stats.failures).push(Failure {
                    at: Instant::now(),
                    agent: id,
                    seq,
                    gateway: Some(t.gateway),
                    answered: true,
                    error: e.to_string(),
                });
                tunnel = None;
                // Resend from the queue at once, through whichever gateway the balancer picks.
                next = Instant::now();
            }
        }
    }
    if let Some(t) = tunnel.take() {
        t.close();
    }
}
// ---------------------------------------------------------------------------------------------
// CONNECT storm
// ---------------------------------------------------------------------------------------------

/// The outcome of a [`storm`].
#[derive(Debug, Default)]
pub struct StormResult {
    /// CONNECTs answered 200.
    pub ok: u64,
    /// TCP connects refused.
    pub refused: u64,
    /// Connections reset or closed before the answer.
    pub reset: u64,
    /// Anything else (another status, a timeout), with examples.
    pub other: u64,
    pub examples: Vec<String>,
    pub seconds: f64,
}

impl StormResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// Send `CONNECT SINK_NAME:DISCARD_PORT` and read the answer's status. The head is read in
/// chunks: the discard port never sends, so nothing but the head can arrive.
fn storm_connect(s: &mut TcpStream) -> io::Result<u16> {
    let target = format!("{SINK_NAME}:{DISCARD_PORT}");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return Err(io::Error::other("answer head over 8 KiB"));
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// `threads` threads in `netns` open tunnels to the sink host's [`DISCARD_PORT`] through
/// `proxy` (CONNECT, 200, close) back to back for `duration`.
pub fn storm(
    netns: &str,
    source: IpAddr,
    proxy: SocketAddr,
    threads: usize,
    duration: Duration,
) -> StormResult {
    let result = Arc::new(Mutex::new(StormResult::default()));
    let start = Instant::now();
    let end = start + duration;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (netns, result) = (netns.to_string(), result.clone());
            thread::spawn(move || {
                enter(&netns);
                while Instant::now() < end {
                    let r = dial(source, proxy).and_then(|mut s| storm_connect(&mut s));
                    let mut res = lock(&result);
                    match r {
                        Ok(200) => res.ok += 1,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => res.refused += 1,
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::ConnectionReset
                                    | ErrorKind::UnexpectedEof
                                    | ErrorKind::BrokenPipe
                            ) =>
                        {
                            res.reset += 1;
                            if res.examples.len() < 5 {
                                res.examples.push(e.to_string());
                            }
                        }
                        other => {
                            res.other += 1;
                            if res.examples.len() < 5 {
                                res.examples.push(format!("{other:?}"));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut r = std::mem::take(&mut *lock(&result));
    r.seconds = start.elapsed().as_secs_f64();
    r
}
