//! `splicegate-load`: drive a CONNECT gateway over loopback and measure what it costs.
//!
//! - `sink`: a TCP + TLS server (self-signed certificate made at start with `rcgen`). Each
//!   connection starts with an 8-byte big-endian header `ACK_EVERY` (after the TLS handshake
//!   when the client speaks TLS; TLS is detected from the first byte). With `ACK_EVERY > 0` the
//!   sink answers 8 bytes after every `ACK_EVERY` bytes it receives; with 0 it only discards.
//! - `agent`: N simulated agents, each a CONNECT tunnel with a real TLS handshake (SNI set) to the
//!   sink, uploading SIZE bytes every INTERVAL on an open-loop schedule and waiting for the ack;
//!   latency is measured from the *scheduled* send time (no coordinated omission).
//! - `stream`: K tunnels sending as fast as they can (plain TCP or `--tls`) for a bounded time.
//! - `connect`: a tunnel set-up storm: tunnels per second, CONNECT -> 200 latency, and with
//!   `--tls` a full TLS handshake (no resumption) plus one application-data round trip with the
//!   sink inside every tunnel before it closes; latency per phase (TCP connect -> 200, and TCP
//!   connect -> handshake done at both ends).
//! - `idle`: hold N idle tunnels and report the gateway's RSS, fds and threads per tunnel.
//! - `dns`: a small DNS server answering given names with one address and a fixed TTL, counting
//!   the queries it gets (for `resolve.sh`, the resolution-path comparison).
//!
//! `--direct` runs the same traffic with no proxy at all (the ceiling). `--gateway-pid` adds the
//! gateway's CPU-seconds (user/sys), CPU-seconds per GB, VmRSS/VmHWM, fds and threads, read from
//! `/proc`. Every run is bounded in time and count and only dials the addresses it is given (use
//! loopback). `--sources N` spreads client sockets over 127.0.0.1..127.0.0.N (bind before
//! connect) so that one source address does not run out of ephemeral ports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};

mod attack;
mod dns;

#[derive(Parser)]
#[command(name = "splicegate-load")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// How to reach the sink: through a gateway or directly.
#[derive(Args, Clone)]
struct Net {
    /// The gateway (ignored with --direct).
    #[arg(long, default_value = "127.0.0.1:8080")]
    proxy: SocketAddr,
    /// CONNECT target as host:port.
    #[arg(long, default_value = "")]
    target: String,
    /// Where the sink really is (needed with --direct).
    #[arg(long)]
    sink: Option<SocketAddr>,
    /// No proxy at all: connect straight to --sink. The ceiling every ratio is measured against.
    #[arg(long)]
    direct: bool,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (bind before connect; 1 = no bind).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// TLS server name (SNI) sent to the sink.
    #[arg(long, default_value = "sink.test")]
    sni: String,
    /// The sink's certificate (written by `sink --cert-out`); needed for TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The gateway's pid: report its CPU, memory, fds and threads.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// One JSON object on stdout at the end (progress lines go to stderr).
    #[arg(long)]
    json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
    /// Runtime worker threads of this tool.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// TCP/TLS sink: discard, and acknowledge every ACK_EVERY bytes when the client asks.
    Sink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Accepted for clarity: the sink always serves TLS (detected per connection) and TCP.
        #[arg(long)]
        tls: bool,
        /// Write the self-signed certificate (PEM) here for the clients' --ca.
        #[arg(long)]
        cert_out: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// N agents uploading SIZE bytes every INTERVAL over TLS, open loop.
    Agent {
        #[command(flatten)]
        net: Net,
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Bytes per upload.
        #[arg(long, default_value_t = 200_000)]
        size: usize,
        /// Seconds between uploads of one agent (real time).
        #[arg(long, default_value_t = 6.0)]
        interval: f64,
        /// Compress time: offer X times the real rate.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Length of the upload schedule in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Tunnels being set up at once before the schedule starts.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// An upload not acknowledged this many seconds after its scheduled time is an error.
        #[arg(long, default_value_t = 10)]
        ack_timeout: u64,
    },
    /// K senders as fast as they can for SECONDS (plain TCP, or --tls).
    Stream {
        #[command(flatten)]
        net: Net,
        #[arg(long, default_value_t = 1)]
        tunnels: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Seconds excluded at the start (buffers filling) from throughput and CPU.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long)]
        tls: bool,
    },
    /// Tunnel set-up storm: COUNT tunnels, CONCURRENCY at a time, at most SECONDS.
    Connect {
        #[command(flatten)]
        net: Net,
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Inside each tunnel: a full TLS handshake with the sink (SNI --sni, trust --ca; no
        /// session resumption, so every tunnel carries the certificate and key exchange), one
        /// application-data round trip (9 bytes out, the sink's 8-byte ack back), close_notify,
        /// close. Without it a tunnel is closed right after the 200.
        #[arg(long)]
        tls: bool,
        /// A tunnel not done this many seconds after its TCP connect started is an error.
        #[arg(long, default_value_t = 10)]
        tunnel_timeout: u64,
    },
    /// A DNS server: A for NAMEs at ADDRESS with TTL, AAAA NODATA, others NXDOMAIN.
    Dns {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Names answered (repeat the flag for more).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long, default_value = "127.0.0.1")]
        address: Ipv4Addr,
        #[arg(long, default_value_t = 60)]
        ttl: u32,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Where the query counts are kept: `total a aaaa other`, then per name and type.
        #[arg(long)]
        count_file: PathBuf,
    },
    /// Slowloris: CONNECTION heads that never end, one more header byte every INTERVAL_MS.
    Slowloris {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        attack: attack::Attack,
        #[arg(long, default_value_t = 9000)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Give up on a connection still open after this many seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The legitimate client beside the attack: CONNECTs a second, at a fixed rate.
        #[arg(long, default_value_t = 20)]
        probe_rate: u32,
        /// Seconds of the same probe, at the same rate, before the attack (its baseline).
        #[arg(long, default_value_t = 5)]
        probe_baseline_s: u64,
    },
    /// Idle flood: CONNECTIONS that never send a byte, then TRICKLE more per second for HOLD s.
    Flood {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        attack: attack::Attack,
        #[arg(long, default_value_t = 6000)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        hold: u64,
        #[arg(long, default_value_t = 100)]
        trickle: usize,
    },
    /// Reset storm: TUNNELS streaming both ways, each reset mid-stream by one side.
    Resets {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        attack: attack::Attack,
        #[arg(long, default_value_t = 4000)]
        tunnels: usize,
        /// Resets are spread over this many milliseconds after each tunnel starts.
        #[arg(long, default_value_t = 500)]
        max_ms: u64,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Each side writes a 16 KiB chunk every PACE_MS (0: as fast as it can).
        #[arg(long, default_value_t = 100)]
        pace_ms: u64,
    },
    /// Stalled reader: SIDE (client or upstream) stops reading while the other streams.
    Stall {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        attack: attack::Attack,
        #[arg(long, default_value_t = 50)]
        tunnels: usize,
        #[arg(long, default_value = "client")]
        side: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Black-holed upstream: COUNT CONNECTs to --target (SYNs dropped), healthy tunnels beside.
    Blackhole {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        attack: attack::Attack,
        #[arg(long, default_value_t = 20)]
        count: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Hold N idle tunnels for SECONDS and report the gateway's cost per tunnel.
    Idle {
        #[command(flatten)]
        net: Net,
        #[arg(long, default_value_t = 1000)]
        tunnels: usize,
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Give up opening tunnels after this many seconds.
        #[arg(long, default_value_t = 60)]
        open_timeout: u64,
    },
}

fn main() -> Result<()> {
    // The hard limit is what we may use; thousands of tunnels need it.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match Cli::parse().mode {
        Mode::Sink {
            listen,
            seconds,
            tls: _,
            cert_out,
            threads,
        } => runtime(threads)?.block_on(sink(listen, seconds.clamp(1, 86_400), cert_out)),
        Mode::Agent {
            net,
            agents,
            size,
            interval,
            time_scale,
            seconds,
            concurrency,
            ack_timeout,
        } => {
            let cfg = AgentCfg {
                agents: agents.clamp(1, 20_000),
                size: size.clamp(1, 1 << 30),
                period: Duration::from_secs_f64((interval / time_scale).clamp(0.001, 3600.0)),
                // Up to a day: the soak (`loadtest/soak.sh`) runs one agent process throughout.
                seconds: seconds.clamp(1, 86_400),
                concurrency: concurrency.clamp(1, 4096),
                ack_timeout: Duration::from_secs(ack_timeout.clamp(1, 120)),
                interval,
                time_scale,
            };
            runtime(net.threads)?.block_on(agent_main(net, cfg))
        }
        Mode::Stream {
            net,
            tunnels,
            seconds,
            warmup,
            tls,
        } => stream(
            &net,
            tunnels.clamp(1, 4096),
            seconds.clamp(1, 600),
            warmup.clamp(0.0, 60.0),
            tls,
        ),
        Mode::Connect {
            net,
            count,
            concurrency,
            seconds,
            tls,
            tunnel_timeout,
        } => {
            let cfg = StormCfg {
                count: count.clamp(1, 1_000_000),
                concurrency: concurrency.clamp(1, 4096),
                seconds: seconds.clamp(1, 600),
                tls: if tls {
                    Some(tls_connector(&net, false)?)
                } else {
                    None
                },
                tunnel_timeout: Duration::from_secs(tunnel_timeout.clamp(1, 600)),
            };
            runtime(net.threads)?.block_on(connect_storm(net, cfg))
        }
        Mode::Dns {
            listen,
            names,
            address,
            ttl,
            seconds,
            count_file,
        } => dns::serve(
            listen,
            &names,
            address,
            ttl,
            seconds.clamp(1, 86_400),
            &count_file,
        ),
        Mode::Slowloris {
            net,
            attack,
            connections,
            interval_ms,
            seconds,
            probe_rate,
            probe_baseline_s,
        } => runtime(net.threads)?.block_on(attack::slowloris(
            net.clone(),
            attack,
            attack::Slowloris {
                connections: connections.clamp(1, 20_000),
                interval: Duration::from_millis(interval_ms.clamp(10, 60_000)),
                max_seconds: seconds.clamp(1, 600),
                probe_rate: probe_rate.clamp(1, 1000),
                probe_baseline: Duration::from_secs(probe_baseline_s.clamp(1, 60)),
            },
        )),
        Mode::Flood {
            net,
            attack,
            connections,
            hold,
            trickle,
        } => runtime(net.threads)?.block_on(attack::flood(
            net.clone(),
            attack,
            connections.clamp(1, 20_000),
            hold.clamp(0, 600),
            trickle.clamp(0, 10_000),
        )),
        Mode::Resets {
            net,
            attack,
            tunnels,
            max_ms,
            rounds,
            pace_ms,
        } => runtime(net.threads)?.block_on(attack::resets(
            net.clone(),
            attack,
            tunnels.clamp(1, 20_000),
            max_ms.clamp(1, 60_000),
            rounds.clamp(1, 100),
            (pace_ms > 0).then(|| Duration::from_millis(pace_ms.min(60_000))),
        )),
        Mode::Stall {
            net,
            attack,
            tunnels,
            side,
            seconds,
        } => runtime(net.threads)?.block_on(attack::stall(
            net.clone(),
            attack,
            tunnels.clamp(1, 5_000),
            side,
            seconds.clamp(1, 3_600),
        )),
        Mode::Blackhole {
            net,
            attack,
            count,
            seconds,
        } => runtime(net.threads)?.block_on(attack::blackhole(
            net.clone(),
            attack,
            count.clamp(1, 10_000),
            seconds.clamp(1, 600),
        )),
        Mode::Idle {
            net,
            tunnels,
            seconds,
            concurrency,
            open_timeout,
        } => runtime(net.threads)?.block_on(idle(
            net.clone(),
            tunnels.clamp(1, 20_000),
            seconds.clamp(1, 600),
            concurrency.clamp(1, 4096),
            open_timeout.clamp(1, 600),
        )),
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 64))
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// Errors by kind

#[derive(Debug)]
struct Fail {
    kind: String,
    detail: String,
}

fn fail(kind: &str, e: impl std::fmt::Display) -> Fail {
    Fail {
        kind: kind.to_string(),
        detail: e.to_string(),
    }
}

#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, (u64, String)>>);

impl Errors {
    fn add(&self, f: &Fail) {
        let mut m = self.0.lock().unwrap();
        let e = m.entry(f.kind.clone()).or_insert((0, f.detail.clone()));
        e.0 += 1;
    }
    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().map(|v| v.0).sum()
    }
    fn json(&self) -> Value {
        let m = self.0.lock().unwrap();
        Value::Object(
            m.iter()
                .map(|(k, (n, d))| (k.clone(), json!({"count": n, "example": d})))
                .collect(),
        )
    }
    fn text(&self) -> String {
        let m = self.0.lock().unwrap();
        if m.is_empty() {
            return "none".into();
        }
        m.iter()
            .map(|(k, (n, d))| format!("{k}={n} ({d})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway observation through /proc

#[derive(Clone, Copy, Default, Debug)]
struct Gw {
    user_s: f64,
    sys_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    fds: u64,
}

impl Gw {
    fn cpu(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

fn gw_sample(pid: Option<u32>) -> Option<Gw> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let user_s = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / ticks;
    let sys_s = f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) as u64;
    Some(Gw {
        user_s,
        sys_s,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
    })
}

/// The gateway's cost between two samples, per `tunnels` tunnels and per `bytes` relayed.
fn gw_report(a: Option<Gw>, b: Option<Gw>, wall: f64, bytes: f64, tunnels: usize) -> Value {
    let (Some(a), Some(b)) = (a, b) else {
        return Value::Null;
    };
    let cpu = b.cpu() - a.cpu();
    json!({
        "cpu_s": round(cpu, 3),
        "user_s": round(b.user_s - a.user_s, 3),
        "sys_s": round(b.sys_s - a.sys_s, 3),
        "cpu_pct_of_one_core": round(100.0 * cpu / wall.max(1e-9), 1),
        "cpu_s_per_gb": if bytes > 0.0 { Value::from(round(cpu / (bytes / 1e9), 4)) } else { Value::Null },
        "rss_kib_before": a.rss_kib,
        "rss_kib": b.rss_kib,
        "vm_hwm_kib": b.hwm_kib,
        "threads_before": a.threads,
        "threads": b.threads,
        "fds_before": a.fds,
        "fds": b.fds,
        "rss_kib_per_tunnel": round((b.rss_kib as f64 - a.rss_kib as f64) / tunnels.max(1) as f64, 3),
        "fds_per_tunnel": round((b.fds as f64 - a.fds as f64) / tunnels.max(1) as f64, 3),
    })
}

fn gw_text(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    format!(
        "gateway: {} CPU-s (user {} sys {}) = {}% of one core, {} CPU-s/GB; RSS {} -> {} KiB (VmHWM {} KiB, {} KiB/tunnel); fds {} -> {} ({}/tunnel); threads {} -> {}",
        v["cpu_s"], v["user_s"], v["sys_s"], v["cpu_pct_of_one_core"], v["cpu_s_per_gb"],
        v["rss_kib_before"], v["rss_kib"], v["vm_hwm_kib"], v["rss_kib_per_tunnel"],
        v["fds_before"], v["fds"], v["fds_per_tunnel"], v["threads_before"], v["threads"]
    )
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

// ---------------------------------------------------------------------------------------------
// Latency samples (microseconds, all kept: runs are bounded, so are the samples)

#[derive(Default)]
struct Samples(Mutex<Vec<u32>>);

impl Samples {
    fn add(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        self.0.lock().unwrap().push(us);
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    /// Sorted copy of the samples from index `from` on.
    fn sorted_from(&self, from: usize) -> Vec<u32> {
        let v = self.0.lock().unwrap();
        let mut s = v[from.min(v.len())..].to_vec();
        s.sort_unstable();
        s
    }
}

/// Nearest-rank percentile in milliseconds.
fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn lat_json(sorted: &[u32]) -> Value {
    json!({
        "count": sorted.len(),
        "min_ms": round(sorted.first().map_or(0.0, |&us| us as f64 / 1000.0), 3),
        "p50_ms": round(pct(sorted, 50.0), 3),
        "p99_ms": round(pct(sorted, 99.0), 3),
        "p99_9_ms": round(pct(sorted, 99.9), 3),
        "max_ms": round(pct(sorted, 100.0), 3),
    })
}

fn lat_text(sorted: &[u32]) -> String {
    format!(
        "p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
        pct(sorted, 50.0),
        pct(sorted, 99.0),
        pct(sorted, 99.9),
        pct(sorted, 100.0)
    )
}

// ---------------------------------------------------------------------------------------------
// Dialling: source address spread, CONNECT, TLS

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn destination(net: &Net) -> Result<SocketAddr, Fail> {
    if net.direct {
        net.sink
            .ok_or_else(|| fail("config", "--direct needs --sink"))
    } else {
        Ok(net.proxy)
    }
}

fn source(net: &Net, i: usize, dst: SocketAddr) -> Option<SocketAddr> {
    (net.sources > 1 && dst.is_ipv4()).then(|| {
        let last = 1 + (i % net.sources as usize) as u8;
        SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0)
    })
}

async fn dial(net: &Net, i: usize) -> Result<TcpStream, Fail> {
    let dst = destination(net)?;
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail("socket", e))?;
    if let Some(src) = source(net, i, dst) {
        sock.bind(src).map_err(|e| fail("bind", e))?;
    }
    let s = sock.connect(dst).await.map_err(|e| fail("connect", e))?;
    s.set_nodelay(true).map_err(|e| fail("socket", e))?;
    Ok(s)
}

fn find_end(head: &[u8]) -> Option<usize> {
    head.windows(4).position(|w| w == b"\r\n\r\n")
}

fn check_status(head: &[u8]) -> Result<(), Fail> {
    let line = String::from_utf8_lossy(head);
    let line = line.lines().next().unwrap_or("");
    let code = line.split_whitespace().nth(1).unwrap_or("???");
    if line.starts_with("HTTP/1.") && code == "200" {
        Ok(())
    } else {
        Err(fail(&format!("proxy_status_{code}"), line))
    }
}

/// Send CONNECT and wait for the answer head. Nothing follows the head: the sink never speaks
/// first, so reading in chunks cannot swallow tunnel bytes.
async fn connect_head(s: &mut TcpStream, target: &str) -> Result<(), Fail> {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| fail("proxy_io", e))?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| fail("proxy_io", e))?;
        if n == 0 {
            return Err(fail(
                "proxy_eof",
                format!("closed after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_end(&head) {
            if end + 4 != head.len() {
                return Err(fail("proxy_extra_bytes", "bytes after the answer head"));
            }
            return check_status(&head);
        }
        if head.len() > 8192 {
            return Err(fail("proxy_head_too_long", head.len()));
        }
    }
}

/// The client side of the TLS sessions to the sink. `resume`: rustls' default in-memory session
/// cache (later sessions to the same name resume with a ticket); without it every session is a
/// full handshake with the certificate (the storm's `--tls`).
fn tls_connector(net: &Net, resume: bool) -> Result<TlsConnector> {
    let ca = net
        .ca
        .as_ref()
        .context("TLS needs --ca (the file the sink wrote with --cert-out)")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).context("reading --ca")?)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// Timings of one tunnel set-up.
struct Opened {
    stream: Box<dyn Io>,
    /// CONNECT sent -> 200 received (TCP connect time with --direct).
    connect: Duration,
}

/// TCP connect (+ CONNECT unless direct) (+ TLS handshake and the 8-byte header).
async fn open(
    net: &Net,
    i: usize,
    tls: Option<&TlsConnector>,
    ack_every: u64,
) -> Result<Opened, Fail> {
    let (s, connect) = open_plain(net, i).await?;
    let mut stream: Box<dyn Io> = match tls {
        Some(c) => {
            let name = ServerName::try_from(net.sni.clone()).map_err(|e| fail("config", e))?;
            Box::new(c.connect(name, s).await.map_err(|e| fail("tls", e))?)
        }
        None => Box::new(s),
    };
    stream
        .write_all(&ack_every.to_be_bytes())
        .await
        .map_err(|e| fail("write", e))?;
    stream.flush().await.map_err(|e| fail("write", e))?;
    Ok(Opened { stream, connect })
}

// ---------------------------------------------------------------------------------------------
// sink

async fn sink(listen: SocketAddr, seconds: u64, cert_out: Option<PathBuf>) -> Result<()> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "sink.test".to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ])?;
    if let Some(p) = &cert_out {
        std::fs::write(p, ck.cert.pem()).context("writing --cert-out")?;
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)?;
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let sock = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(listen)?;
    let l = sock.listen(4096)?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let accepted = tokio::time::timeout_at(deadline, l.accept()).await;
        let Ok(r) = accepted else { return Ok(()) };
        let Ok((s, _)) = r else {
            // Out of fds or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = sink_conn(s, acceptor).await;
        });
    }
}

async fn sink_conn(s: TcpStream, acceptor: TlsAcceptor) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut first = [0u8; 1];
    if s.peek(&mut first).await? == 0 {
        return Ok(());
    }
    if first[0] == 0x16 {
        sink_serve(acceptor.accept(s).await?).await
    } else {
        sink_serve(s).await
    }
}

async fn sink_serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await?;
    let every = u64::from_be_bytes(hdr);
    // Large reads for fast streams; small buffers for thousands of acknowledging agents.
    let mut buf = vec![0u8; if every == 0 { 256 * 1024 } else { 16 * 1024 }];
    let (mut since_ack, mut acks) = (0u64, 0u64);
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if every > 0 {
            since_ack += n as u64;
            while since_ack >= every {
                since_ack -= every;
                acks += 1;
                s.write_all(&acks.to_be_bytes()).await?;
                s.flush().await?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// agent

struct AgentCfg {
    agents: usize,
    size: usize,
    period: Duration,
    seconds: u64,
    concurrency: usize,
    ack_timeout: Duration,
    interval: f64,
    time_scale: f64,
}

#[derive(Default)]
struct Stats {
    bytes: AtomicU64,
    uploads: AtomicU64,
    lat: Samples,
    connect: Samples,
    errors: Errors,
}

async fn agent_main(net: Net, cfg: AgentCfg) -> Result<()> {
    let tls = tls_connector(&net, true)?;
    let stats = Arc::new(Stats::default());
    let net = Arc::new(net);
    let cfg = Arc::new(cfg);
    let gw0 = gw_sample(net.gateway_pid);

    // Phase 1: set up every tunnel (bounded concurrency), then start the schedule together.
    let t_setup = Instant::now();
    let sem = Arc::new(Semaphore::new(cfg.concurrency));
    let mut handles = Vec::with_capacity(cfg.agents);
    for i in 0..cfg.agents {
        let (net, tls, stats, sem) = (net.clone(), tls.clone(), stats.clone(), sem.clone());
        let ack_every = cfg.size as u64; // the header asks the sink for an ack per upload
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let opened = open(&net, i, Some(&tls), ack_every);
            match tokio::time::timeout(Duration::from_secs(30), opened).await {
                Ok(Ok(o)) => {
                    stats.connect.add(o.connect);
                    Some(o.stream)
                }
                Ok(Err(f)) => {
                    stats.errors.add(&f);
                    None
                }
                Err(_) => {
                    stats.errors.add(&fail("setup_timeout", "30 s"));
                    None
                }
            }
        }));
    }
    let mut streams = Vec::with_capacity(cfg.agents);
    for h in handles {
        streams.push(h.await.ok().flatten());
    }
    let setup_s = t_setup.elapsed().as_secs_f64();
    let open_n = streams.iter().filter(|s| s.is_some()).count();
    let gw1 = gw_sample(net.gateway_pid);
    let pid = net.gateway_pid;
    let t0_std = Instant::now() + Duration::from_millis(200);
    let gw1_at_t0 = tokio::spawn(async move {
        tokio::time::sleep_until(t0_std.into()).await;
        gw_sample(pid)
    });
    if !net.quiet {
        eprintln!(
            "agent: {open_n}/{} tunnels up in {setup_s:.2} s; errors: {}",
            cfg.agents,
            stats.errors.text()
        );
    }

    // Phase 2: the open-loop schedule.
    let payload: Arc<[u8]> = vec![0x5au8; cfg.size].into();
    let t0 = tokio::time::Instant::from_std(t0_std);
    let end = t0 + Duration::from_secs(cfg.seconds);
    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(
        net.clone(),
        stats.clone(),
        stop_progress.clone(),
        open_n,
        t0.into_std(),
    );
    let mut tasks = Vec::with_capacity(cfg.agents);
    for (i, s) in streams.into_iter().enumerate() {
        let Some(s) = s else { continue };
        let (cfg, stats, payload) = (cfg.clone(), stats.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            agent_run(i, s, &cfg, &stats, &payload, t0, end).await;
        }));
    }
    // The gateway's cost over exactly the schedule window, sampled at its end.
    let pid = net.gateway_pid;
    let at_end = tokio::spawn(async move {
        tokio::time::sleep_until(end).await;
        gw_sample(pid)
    });
    let hard_end = end + cfg.ack_timeout + Duration::from_secs(5);
    for t in tasks {
        if tokio::time::timeout_at(hard_end, t).await.is_err() {
            stats.errors.add(&fail("agent_stuck", "past the hard end"));
        }
    }
    let gw2 = at_end.await.ok().flatten();
    let gw1 = gw1_at_t0.await.ok().flatten().or(gw1);
    stop_progress.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let bytes = stats.bytes.load(Ordering::Relaxed) as f64;
    let uploads = stats.uploads.load(Ordering::Relaxed);
    let sched_s = cfg.seconds as f64;
    let lat = stats.lat.sorted_from(0);
    let con = stats.connect.sorted_from(0);
    let offered = cfg.agents as f64 * cfg.size as f64 / cfg.period.as_secs_f64();
    let gw_run = gw_report(gw1, gw2, sched_s, bytes, open_n);
    let gw_idle = gw_report(gw0, gw1, setup_s, 0.0, open_n);
    let v = json!({
        "mode": "agent",
        "direct": net.direct,
        "agents": cfg.agents,
        "agents_up": open_n,
        "size": cfg.size,
        "interval_s": cfg.interval,
        "time_scale": cfg.time_scale,
        "schedule_s": sched_s,
        "offered_mb_per_s": round(offered / 1e6, 2),
        "throughput_mb_per_s": round(bytes / sched_s / 1e6, 2),
        "uploads": uploads,
        "upload_latency": lat_json(&lat),
        "connect_latency": lat_json(&con),
        "setup_s": round(setup_s, 3),
        "errors": stats.errors.json(),
        "errors_total": stats.errors.total(),
        "gateway": gw_run,
        "gateway_setup": gw_idle,
    });
    if net.json {
        println!("{v}");
    } else {
        println!(
            "agent{}: {} agents ({} up), {:.1} MB/s offered, {:.1} MB/s acked, {uploads} uploads; upload latency {}; connect {}; errors: {}",
            if net.direct { " (direct)" } else { "" },
            cfg.agents,
            open_n,
            offered / 1e6,
            bytes / sched_s / 1e6,
            lat_text(&lat),
            lat_text(&con),
            stats.errors.text()
        );
        let g = gw_text(&gw_run);
        if !g.is_empty() {
            println!("  during the schedule: {g}");
            println!("  after set-up (idle):  {}", gw_text(&gw_idle));
        }
    }
    Ok(())
}

async fn agent_run(
    i: usize,
    mut s: Box<dyn Io>,
    cfg: &AgentCfg,
    stats: &Stats,
    payload: &[u8],
    t0: tokio::time::Instant,
    end: tokio::time::Instant,
) {
    // Each upload is SIZE bytes followed by the sink's 8-byte ack; the header told the sink SIZE.
    // Agents are spread evenly over one period.
    let offset = cfg.period.mul_f64(i as f64 / cfg.agents as f64);
    let mut ack = [0u8; 8];
    for k in 0u32.. {
        let sched = t0 + offset + cfg.period * k;
        if sched >= end {
            break;
        }
        tokio::time::sleep_until(sched).await;
        let r = tokio::time::timeout_at(sched + cfg.ack_timeout, async {
            s.write_all(payload).await.map_err(|e| fail("write", e))?;
            s.flush().await.map_err(|e| fail("write", e))?;
            s.read_exact(&mut ack)
                .await
                .map_err(|e| fail("ack_read", e))?;
            Ok::<(), Fail>(())
        })
        .await;
        match r {
            Ok(Ok(())) => {
                stats.lat.add(sched.elapsed());
                stats.uploads.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(f)) => {
                stats.errors.add(&f);
                return;
            }
            Err(_) => {
                stats
                    .errors
                    .add(&fail("ack_timeout", format!("{:?}", cfg.ack_timeout)));
                return;
            }
        }
    }
    let _ = s.shutdown().await;
}

fn spawn_progress(
    net: Arc<Net>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    tunnels: usize,
    t0: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if net.quiet {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let (mut last_bytes, mut last_n) = (0u64, stats.lat.len());
        let mut last_gw = gw_sample(net.gateway_pid);
        let mut last_t = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let now = Instant::now();
            let dt = (now - last_t).as_secs_f64();
            let bytes = stats.bytes.load(Ordering::Relaxed);
            let n = stats.lat.len();
            let lat = stats.lat.sorted_from(last_n);
            let gw = gw_sample(net.gateway_pid);
            let g = match (last_gw, gw) {
                (Some(a), Some(b)) => format!(
                    "; gateway {:.0}% CPU, RSS {} KiB (VmHWM {}), fds {}, threads {} ({} tunnels)",
                    100.0 * (b.cpu() - a.cpu()) / dt,
                    b.rss_kib,
                    b.hwm_kib,
                    b.fds,
                    b.threads,
                    tunnels,
                ),
                _ => String::new(),
            };
            eprintln!(
                "[{:>5.1}s] {:.1} MB/s, {} done/s, {}; errors {}{g}",
                now.saturating_duration_since(t0).as_secs_f64(),
                (bytes - last_bytes) as f64 / dt / 1e6,
                n - last_n,
                lat_text(&lat),
                stats.errors.total()
            );
            (last_bytes, last_n, last_gw, last_t) = (bytes, n, gw, now);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// stream (threads: a few fast senders)

fn std_dial(net: &Net, i: usize) -> Result<StdTcp> {
    let dst = destination(net).map_err(|f| anyhow::anyhow!("{}: {}", f.kind, f.detail))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(src) = source(net, i, dst) {
        sock.bind(&src.into())?;
    }
    sock.connect(&dst.into())?;
    let mut s: StdTcp = sock.into();
    s.set_nodelay(true)?;
    if !net.direct {
        let target = &net.target;
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while find_end(&head).is_none() {
            if s.read(&mut b)? == 0 || head.len() > 8192 {
                bail!(
                    "gateway closed during the CONNECT answer: {:?}",
                    String::from_utf8_lossy(&head)
                );
            }
            head.push(b[0]);
        }
        check_status(&head).map_err(|f| anyhow::anyhow!("{}: {}", f.kind, f.detail))?;
    }
    Ok(s)
}

fn stream(net: &Net, tunnels: usize, seconds: u64, warmup: f64, tls: bool) -> Result<()> {
    let tls_cfg = if tls {
        let ca = net.ca.as_ref().context("--tls needs --ca")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(ca).context("reading --ca")?)?;
        Some(Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
        ))
    } else {
        None
    };
    let mut conns: Vec<Box<dyn Write + Send>> = Vec::with_capacity(tunnels);
    for i in 0..tunnels {
        let s = std_dial(net, i).with_context(|| format!("tunnel {i}"))?;
        let mut w: Box<dyn Write + Send> = match &tls_cfg {
            Some(c) => {
                let name = ServerName::try_from(net.sni.clone())?;
                let conn = rustls::ClientConnection::new(c.clone(), name)?;
                Box::new(rustls::StreamOwned::new(conn, s))
            }
            None => Box::new(s),
        };
        w.write_all(&0u64.to_be_bytes())?; // no acks: a pure stream
        w.flush()?;
        conns.push(w);
    }
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let (total, stop, errors) = (total.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let buf = vec![0x5au8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match s.write(&buf) {
                        Ok(n) => {
                            total.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.add(&fail("write", e));
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // Warm-up: socket buffers and pipes fill; then measure a steady window.
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let (b0, g0, w0) = (
        total.load(Ordering::Relaxed),
        gw_sample(net.gateway_pid),
        Instant::now(),
    );
    // The window is SECONDS from its own start: on a starved machine the warm-up sleep can
    // overrun, and a window counted from `start` would then be empty (0 bytes, 0 s).
    let window_end = w0 + Duration::from_secs(seconds);
    let (mut lb, mut lt) = (b0, w0);
    while Instant::now() < window_end {
        std::thread::sleep(
            Duration::from_secs(1).min(window_end.saturating_duration_since(Instant::now())),
        );
        if !net.quiet {
            let (b, t) = (total.load(Ordering::Relaxed), Instant::now());
            eprintln!(
                "[{:>5.1}s] {:.3} GB/s",
                (t - start).as_secs_f64(),
                (b - lb) as f64 / (t - lt).as_secs_f64().max(1e-9) / 1e9
            );
            (lb, lt) = (b, t);
        }
    }
    let (b1, g1, elapsed) = (
        total.load(Ordering::Relaxed),
        gw_sample(net.gateway_pid),
        w0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let bytes = (b1 - b0) as f64;
    let gbps = bytes / elapsed / 1e9;
    let gw = gw_report(g0, g1, elapsed, bytes, tunnels);
    if net.json {
        println!(
            "{}",
            json!({
                "mode": "stream", "direct": net.direct, "tls": tls, "tunnels": tunnels,
                "seconds": round(elapsed, 3), "bytes": bytes, "gb_per_s": round(gbps, 4),
                "gateway_cpu_s": gw.get("cpu_s"), "gateway_cpu_s_per_gb": gw.get("cpu_s_per_gb"),
                "gateway": gw, "errors": errors.json(),
            })
        );
    } else {
        println!(
            "stream: {tunnels} tunnel(s){}{} {:.2} GB in {elapsed:.2} s = {gbps:.3} GB/s{}; errors: {}",
            if net.direct { " (direct)" } else { "" },
            if tls { " TLS" } else { "" },
            bytes / 1e9,
            match gw.get("cpu_s") {
                Some(c) => format!(", gateway {c} CPU-s = {} CPU-s/GB (user {} sys {})", gw["cpu_s_per_gb"], gw["user_s"], gw["sys_s"]),
                None => String::new(),
            },
            errors.text()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// connect storm

struct StormCfg {
    count: usize,
    concurrency: usize,
    seconds: u64,
    /// Some: a TLS handshake and one round trip inside every tunnel (`--tls`).
    tls: Option<TlsConnector>,
    tunnel_timeout: Duration,
}

/// The phases of one storm tunnel, each measured from the start of its TCP connect.
struct StormTimes {
    /// CONNECT sent -> 200 received (with --direct: the TCP connect).
    connect: Duration,
    /// TCP connect started -> 200 received (with --direct: the TCP connect).
    open: Duration,
    /// With --tls: TCP connect started -> the first application-data round trip back, i.e. the
    /// handshake finished at both ends (the sink can only answer once it has the client's
    /// Finished and the 9 bytes after it).
    handshake: Option<Duration>,
}

/// Latency samples of a storm, one set per phase.
#[derive(Default)]
struct StormSamples {
    open: Samples,
    tls: Samples,
    handshake: Samples,
}

async fn connect_storm(net: Net, cfg: StormCfg) -> Result<()> {
    let (count, concurrency) = (cfg.count, cfg.concurrency);
    let tls_on = cfg.tls.is_some();
    let net = Arc::new(net);
    let cfg = Arc::new(cfg);
    let stats = Arc::new(Stats::default());
    let phases = Arc::new(StormSamples::default());
    let next = Arc::new(AtomicU64::new(0));
    let g0 = gw_sample(net.gateway_pid);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(net.clone(), stats.clone(), stop.clone(), 1, start);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (net, cfg, stats, phases, next) = (
            net.clone(),
            cfg.clone(),
            stats.clone(),
            phases.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let own = tokio::time::Instant::now() + cfg.tunnel_timeout;
                let one = storm_tunnel(&net, i, cfg.tls.as_ref());
                match tokio::time::timeout_at(own.min(deadline), one).await {
                    Ok(Ok(t)) => {
                        stats.connect.add(t.connect);
                        phases.open.add(t.open);
                        // Progress lines count tunnels as "uploads", with their whole set-up.
                        match t.handshake {
                            Some(h) => {
                                phases.handshake.add(h);
                                phases.tls.add(h.saturating_sub(t.open));
                                stats.lat.add(h);
                            }
                            None => stats.lat.add(t.connect),
                        }
                    }
                    Ok(Err(f)) => stats.errors.add(&f),
                    Err(_) if own <= deadline => {
                        stats
                            .errors
                            .add(&fail("tunnel_timeout", format!("{:?}", cfg.tunnel_timeout)));
                    }
                    Err(_) => {
                        // Still open when the run's time was up: counted, not silently lost.
                        stats
                            .errors
                            .add(&fail("run_deadline", format!("{} s", cfg.seconds)));
                        break;
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let g1 = gw_sample(net.gateway_pid);
    stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let con = stats.connect.sorted_from(0);
    let open = phases.open.sorted_from(0);
    let rate = con.len() as f64 / elapsed;
    let gw = gw_report(g0, g1, elapsed, 0.0, con.len());
    let errors_total = stats.errors.total();
    let (hs, tls_phase) = (phases.handshake.sorted_from(0), phases.tls.sorted_from(0));
    let v = json!({
        "mode": "connect", "direct": net.direct, "tls": tls_on, "count": count,
        "concurrency": concurrency, "ok": con.len(),
        "not_run": (count as u64).saturating_sub(con.len() as u64 + errors_total),
        "seconds": round(elapsed, 3), "tunnels_per_s": round(rate, 1),
        "connect_latency": lat_json(&con),
        "open_latency": lat_json(&open),
        "tls_latency": if tls_on { lat_json(&tls_phase) } else { Value::Null },
        "handshake_latency": if tls_on { lat_json(&hs) } else { Value::Null },
        "errors": stats.errors.json(),
        "errors_total": errors_total, "gateway": gw,
    });
    if net.json {
        println!("{v}");
    } else {
        println!(
            "connect{}{}: {} of {count} tunnels in {elapsed:.2} s = {rate:.0}/s; {} {}; errors: {}",
            if net.direct { " (direct)" } else { "" },
            if tls_on { " + TLS" } else { "" },
            con.len(),
            if net.direct {
                "TCP connect"
            } else {
                "TCP connect -> 200"
            },
            lat_text(&open),
            stats.errors.text()
        );
        if tls_on {
            println!(
                "  TCP connect -> handshake done at both ends (first round trip): {}",
                lat_text(&hs)
            );
        }
        let g = gw_text(&gw);
        if !g.is_empty() {
            println!("  {g}");
        }
    }
    Ok(())
}

/// One storm tunnel: TCP connect, CONNECT, 200; with `tls`, a full handshake with the sink, one
/// application-data round trip, close_notify; then close.
async fn storm_tunnel(net: &Net, i: usize, tls: Option<&TlsConnector>) -> Result<StormTimes, Fail> {
    let t0 = Instant::now();
    let (s, connect) = open_plain(net, i).await?;
    let open = t0.elapsed();
    let Some(c) = tls else {
        return Ok(StormTimes {
            connect,
            open,
            handshake: None,
        });
    };
    let name = ServerName::try_from(net.sni.clone()).map_err(|e| fail("config", e))?;
    let mut t = c
        .connect(name, s)
        .await
        .map_err(|e| fail("tls_handshake", e))?;
    // The client's side of a TLS 1.3 handshake ends before the server has read the client's
    // Finished; a round trip of application data proves both ends are done. The sink's header
    // (8 bytes, "ack every 1 byte") and one byte go out; its 8-byte ack (counter 1) comes back.
    let mut msg = [0x5au8; 9];
    msg[..8].copy_from_slice(&1u64.to_be_bytes());
    t.write_all(&msg).await.map_err(|e| fail("tls_write", e))?;
    t.flush().await.map_err(|e| fail("tls_write", e))?;
    let mut ack = [0u8; 8];
    t.read_exact(&mut ack)
        .await
        .map_err(|e| fail("tls_round_trip", e))?;
    if u64::from_be_bytes(ack) != 1 {
        return Err(fail("tls_round_trip", format!("ack {ack:?}, expected 1")));
    }
    let handshake = t0.elapsed();
    // close_notify and FIN, as a client that is done; not part of the timed phases.
    t.shutdown().await.map_err(|e| fail("tls_close", e))?;
    Ok(StormTimes {
        connect,
        open,
        handshake: Some(handshake),
    })
}

// ---------------------------------------------------------------------------------------------
// idle

async fn idle(
    net: Net,
    n: usize,
    seconds: u64,
    concurrency: usize,
    open_timeout: u64,
) -> Result<()> {
    let net = Arc::new(net);
    let stats = Arc::new(Stats::default());
    let g0 = gw_sample(net.gateway_pid);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(open_timeout);
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (net, stats, sem) = (net.clone(), stats.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.ok()?;
            match tokio::time::timeout_at(deadline, open_plain(&net, i)).await {
                Ok(Ok((s, d))) => {
                    stats.connect.add(d);
                    Some(s)
                }
                Ok(Err(f)) => {
                    stats.errors.add(&f);
                    None
                }
                Err(_) => {
                    stats.errors.add(&fail("open_timeout", open_timeout));
                    None
                }
            }
        }));
    }
    let mut held = Vec::with_capacity(n);
    for h in handles {
        if let Some(s) = h.await.ok().flatten() {
            held.push(s);
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    if !net.quiet {
        eprintln!(
            "idle: {} tunnels up in {open_s:.2} s; errors: {}",
            held.len(),
            stats.errors.text()
        );
    }
    for k in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !net.quiet {
            if let Some(g) = gw_sample(net.gateway_pid) {
                eprintln!(
                    "[{:>3}s] holding {}; gateway RSS {} KiB, fds {}, threads {}",
                    k + 1,
                    held.len(),
                    g.rss_kib,
                    g.fds,
                    g.threads
                );
            }
        }
    }
    let g1 = gw_sample(net.gateway_pid);
    let up = held.len();
    let gw = gw_report(g0, g1, open_s + seconds as f64, 0.0, up);
    let con = stats.connect.sorted_from(0);
    let per_tunnel = gw.get("rss_kib_per_tunnel").and_then(Value::as_f64);
    let v = json!({
        "mode": "idle", "direct": net.direct, "tunnels": n, "up": up, "sources": net.sources,
        "open_s": round(open_s, 3), "connect_latency": lat_json(&con),
        "errors": stats.errors.json(), "errors_total": stats.errors.total(), "gateway": gw,
        "extrapolated_100k_rss_mib": per_tunnel.map(|k| round(k * 100_000.0 / 1024.0, 1)),
    });
    if net.json {
        println!("{v}");
    } else {
        println!(
            "idle: {up} of {n} tunnels over {} source address(es), opened in {open_s:.2} s; CONNECT->200 {}; errors: {}",
            net.sources.max(1),
            lat_text(&con),
            stats.errors.text()
        );
        let g = gw_text(&gw);
        if !g.is_empty() {
            println!("  {g}");
            if let Some(k) = per_tunnel {
                println!(
                    "  extrapolated to 100,000 tunnels: {:.0} MiB RSS above the base",
                    k * 100_000.0 / 1024.0
                );
            }
        }
    }
    drop(held);
    Ok(())
}

/// A tunnel that stays idle: no TLS, no header (the sink waits for the first byte).
async fn open_plain(net: &Net, i: usize) -> Result<(TcpStream, Duration), Fail> {
    let t0 = Instant::now();
    let mut s = dial(net, i).await?;
    let d = if net.direct {
        t0.elapsed()
    } else {
        let t1 = Instant::now();
        connect_head(&mut s, &net.target).await?;
        t1.elapsed()
    };
    Ok((s, d))
}
