//! Attack and fault scenarios (issue 16, catalogue section D), each against a gateway on
//! loopback, each bounded in count and time, each printing one JSON object on stdout:
//!
//! - `slowloris`: connections that send `CONNECT <target> HTTP/1.1\r\nX-Pad: ` and then one more
//!   header byte every interval; when and how each is closed, the gateway's RSS, `/metrics`
//!   latency sampled throughout, and a legitimate client's CONNECT latency before and during.
//! - `flood`: connections that never send a byte, more than `max_connections`; how many were
//!   held, how many got an answer at once (and which), the gateway's CPU while refusing and while
//!   holding, and the open connections sampled every 100 ms.
//! - `resets`: tunnels streaming both ways that one side resets (`SO_LINGER` 0) mid-stream, half
//!   by the client, half by the upstream; how fast the other side sees it, then the gateway's
//!   fds, pipes, timer entries, tunnels and RSS against the baseline.
//! - `stall`: tunnels where one side stops reading while the other streams; the gateway's RSS and
//!   pipes while stalled, bytes that moved, and when and how each tunnel ended.
//! - `blackhole`: CONNECTs to a target whose SYNs are dropped (the script sets that up) while
//!   healthy tunnels run beside them; the answer and its time, and the healthy latency before and
//!   during.
//!
//! The upstream for `resets`, `stall`, `blackhole` and the probes is in this process: it listens
//! on 127.0.0.1 (port 0 unless `--upstream-listen`) and reads a role byte and an 8-byte id first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::{
    connect_head, dial, fail, find_end, gw_sample, lat_json, round, Errors, Fail, Net, Samples,
};

/// Options every attack scenario shares.
#[derive(Args, Clone)]
pub struct Attack {
    /// The gateway's metrics endpoint (host:port): sampled for latency and gauges when given.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Where the in-process upstream listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub upstream_listen: SocketAddr,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

const CHUNK: usize = 16 * 1024;
/// Roles the in-process upstream plays, sent by the client as its first byte.
const ROLE_ECHO: u8 = b'E';
const ROLE_RESET: u8 = b'R';
const ROLE_STREAM: u8 = b'S';
const ROLE_HOLD: u8 = b'H';

// ---------------------------------------------------------------------------------------------
// The in-process upstream

/// What the upstream saw, by tunnel id, on the clock every task shares.
#[derive(Default)]
struct Marks {
    /// When one side reset its socket.
    reset_at: Mutex<Vec<Option<Instant>>>,
    /// When the other side saw the close (EOF or error).
    seen_at: Mutex<Vec<Option<Instant>>>,
    /// Bytes the stalled tunnels' writers wrote, by id (stall).
    written: Vec<AtomicU64>,
    /// When upstream connections ended, by id (stall).
    upstream_end: Mutex<Vec<Option<Instant>>>,
    accepted: AtomicU64,
    /// Time between chunks each side of a reset-storm tunnel writes (`None`: as fast as it can).
    pace: Option<Duration>,
}

impl Marks {
    fn new(n: usize) -> Marks {
        Marks {
            written: (0..n).map(|_| AtomicU64::new(0)).collect(),
            reset_at: Mutex::new(vec![None; n]),
            seen_at: Mutex::new(vec![None; n]),
            upstream_end: Mutex::new(vec![None; n]),
            ..Marks::default()
        }
    }
    fn set(v: &Mutex<Vec<Option<Instant>>>, id: usize, t: Instant) {
        if let Some(slot) = v.lock().unwrap().get_mut(id) {
            slot.get_or_insert(t);
        }
    }
}

/// Reset `s` on drop: `SO_LINGER` 0 turns the close into an RST.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Delay before tunnel `id` is reset: spread over `max_ms`, deterministic.
fn reset_delay(id: usize, max_ms: u64) -> Duration {
    Duration::from_millis(20 + (id as u64).wrapping_mul(7919) % max_ms.max(1))
}

async fn upstream(listen: SocketAddr, marks: Arc<Marks>, max_ms: u64) -> Result<SocketAddr> {
    let l = TcpListener::bind(listen).await.context("upstream bind")?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            marks.accepted.fetch_add(1, Ordering::Relaxed);
            let marks = marks.clone();
            tokio::spawn(async move {
                let _ = upstream_conn(s, marks, max_ms).await;
            });
        }
    });
    Ok(addr)
}

async fn upstream_conn(mut s: TcpStream, marks: Arc<Marks>, max_ms: u64) -> std::io::Result<()> {
    let mut hdr = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut hdr))
        .await
        .map_err(|_| std::io::Error::other("no role"))??;
    let id = u64::from_be_bytes(hdr[1..].try_into().unwrap_or([0; 8])) as usize;
    match hdr[0] {
        ROLE_ECHO => {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        ROLE_RESET => {
            // Odd ids are reset by the upstream, even ids by the client.
            let ours = id % 2 == 1;
            let at = tokio::time::Instant::now() + reset_delay(id, max_ms);
            let (seen, s) = stream_both(s, ours.then_some(at), marks.pace).await;
            match s {
                Some(s) => {
                    Marks::set(&marks.reset_at, id, Instant::now());
                    reset(s);
                }
                None => Marks::set(&marks.seen_at, id, seen),
            }
            Ok(())
        }
        ROLE_STREAM => {
            // Stream at the client until the gateway closes us (the client does not read).
            let buf = vec![0x5au8; CHUNK];
            let r = loop {
                match s.write(&buf).await {
                    Ok(n) => {
                        if let Some(w) = marks.written.get(id) {
                            w.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Err(e) => break e,
                }
            };
            drop(r);
            Marks::set(&marks.upstream_end, id, Instant::now());
            Ok(())
        }
        ROLE_HOLD => {
            // Never read; the client's end (its writes fail once the gateway closes) is what the
            // scenario measures. Held at most 5 minutes.
            tokio::time::sleep(Duration::from_secs(300)).await;
            drop(s);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Write chunks (one per `pace`, or as fast as the socket takes them) and read whatever comes
/// until `reset_at` (then hand the socket back for the reset) or until the other side closes
/// (then report when).
async fn stream_both(
    s: TcpStream,
    reset_at: Option<tokio::time::Instant>,
    pace: Option<Duration>,
) -> (Instant, Option<TcpStream>) {
    let chunk = vec![0x5au8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let never = tokio::time::Instant::now() + Duration::from_secs(3600);
    let at = reset_at.unwrap_or(never);
    let bound = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut rd, mut wr) = s.into_split();
    let mut write_open = true;
    let mut next_write = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {
                return match rd.reunite(wr) {
                    Ok(s) => (Instant::now(), Some(s)),
                    Err(_) => (Instant::now(), None),
                };
            }
            _ = tokio::time::sleep_until(bound) => return (Instant::now(), None),
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (Instant::now(), None),
                Ok(_) => {}
            },
            w = async {
                tokio::time::sleep_until(next_write).await;
                wr.write(&chunk).await
            }, if write_open => match w {
                // The read side reports the close; stop writing meanwhile.
                Err(_) => write_open = false,
                Ok(_) => {
                    if let Some(p) = pace {
                        next_write = tokio::time::Instant::now() + p;
                    }
                }
            },
        }
    }
}

async fn role(s: &mut TcpStream, role: u8, id: usize) -> Result<(), Fail> {
    let mut hdr = [0u8; 9];
    hdr[0] = role;
    hdr[1..].copy_from_slice(&(id as u64).to_be_bytes());
    s.write_all(&hdr).await.map_err(|e| fail("role", e))
}

// ---------------------------------------------------------------------------------------------
// Observation: /metrics and /proc

/// GET /metrics: the time it took and the body.
async fn scrape(addr: SocketAddr) -> Result<(Duration, String), Fail> {
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| fail("metrics", e))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: m\r\n\r\n")
            .await
            .map_err(|e| fail("metrics", e))?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)
            .await
            .map_err(|e| fail("metrics", e))?;
        Ok::<_, Fail>(String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .map_err(|_| fail("metrics_timeout", "5 s"))??;
    Ok((t0.elapsed(), r))
}

/// The sum of a metric's samples over its label sets.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some((key, val)) = line.rsplit_once(' ') else {
            continue;
        };
        if key == name || key.starts_with(&format!("{name}{{")) {
            if let Ok(v) = val.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

const GAUGES: [&str; 5] = [
    "splicegate_active_client_connections",
    "splicegate_tunnels_active",
    "splicegate_pipes_in_use",
    "splicegate_timer_entries",
    "splicegate_errors_total",
];

/// The gateway's state: /proc (fds, RSS, CPU) and the gauges in /metrics.
async fn state(net: &Net, a: &Attack) -> Value {
    let g = gw_sample(net.gateway_pid);
    let mut v = json!({
        "fds": g.map(|g| g.fds), "rss_kib": g.map(|g| g.rss_kib),
        "cpu_s": g.map(|g| round(g.cpu(), 2)), "threads": g.map(|g| g.threads),
    });
    if let Some(m) = a.metrics {
        if let Ok((_, text)) = scrape(m).await {
            for name in GAUGES {
                v[name.trim_start_matches("splicegate_")] = json!(metric(&text, name));
            }
        }
    }
    v
}

/// Samples taken every `period` until stopped: the gateway's RSS, fds and CPU, and the
/// `/metrics` scrape time with its gauges.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<SamplerOut>,
    procs: std::thread::JoinHandle<SamplerOut>,
}

#[derive(Default)]
struct SamplerOut {
    scrape: Vec<u32>,
    scrape_failures: u64,
    rss_kib: Vec<u64>,
    fds: Vec<u64>,
    /// (seconds since start, value) per gauge name.
    gauges: Vec<(f64, &'static str, f64)>,
    cpu_s: Vec<(f64, f64)>,
    /// (seconds since start, CPU seconds by thread) per sample.
    threads: Vec<(f64, Vec<ThreadCpu>)>,
    /// Connections waiting in the listeners' accept queues (handshake done, not yet accepted
    /// by the gateway), per sample.
    accept_queue: Vec<u64>,
}

/// Connections waiting to be accepted on the listening sockets of `port` (handshake done, not
/// yet accepted), summed over the listeners (one per worker with `SO_REUSEPORT`): the Recv-Q
/// that `ss -lnt` shows for a socket in LISTEN. Asked of `ss`, whose netlink query walks only the
/// listening sockets (reading `/proc/net/tcp` would format all 18,000 sockets of the attack).
fn accept_queue(port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args(["-Hlnt", &format!("sport = :{port}")])
        .output()
        .ok()?;
    accept_queue_in(&String::from_utf8_lossy(&out.stdout))
}

/// [`accept_queue`] from the lines `ss -Hlnt` prints (`LISTEN <Recv-Q> <Send-Q> <local> ...`);
/// `None` if there are none.
fn accept_queue_in(text: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"LISTEN") {
            continue;
        }
        if let Some(q) = f.get(1).and_then(|q| q.parse::<u64>().ok()) {
            *total.get_or_insert(0) += q;
        }
    }
    total
}

/// One thread of the gateway: its id, name (`splicegate-w0` is worker 0) and CPU seconds.
#[derive(Clone)]
struct ThreadCpu {
    tid: u32,
    name: String,
    cpu_s: f64,
}

/// The CPU each thread of `pid` has used so far (`/proc/PID/task/*/stat`, user + system).
fn thread_cpu(pid: u32) -> Vec<ThreadCpu> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        out.push(ThreadCpu {
            tid,
            name: stat[open + 1..close].to_string(),
            cpu_s: (ticks(11) + ticks(12)) / 100.0, // USER_HZ on Linux
        });
    }
    out
}

/// Per thread: its share of one core over the whole sampling (`whole`) and over its busiest
/// second (`peak_1s`), busiest first.
fn thread_shares(samples: &[(f64, Vec<ThreadCpu>)]) -> Vec<Value> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    let at = |s: &[ThreadCpu], tid: u32| s.iter().find(|t| t.tid == tid).map(|t| t.cpu_s);
    let mut rows: Vec<(f64, Value)> = Vec::new();
    for t in &last.1 {
        let start = samples
            .iter()
            .find_map(|(ts, s)| at(s, t.tid).map(|c| (*ts, c)))
            .unwrap_or((first.0, 0.0));
        let span = last.0 - start.0;
        let whole = if span > 0.0 {
            100.0 * (t.cpu_s - start.1) / span
        } else {
            0.0
        };
        // Busiest window of at least 1 s between two samples.
        let mut peak: f64 = 0.0;
        let mut j = 0;
        for i in 0..samples.len() {
            j = j.max(i);
            while j < samples.len() && samples[j].0 - samples[i].0 < 1.0 {
                j += 1;
            }
            if j >= samples.len() {
                break;
            }
            if let (Some(a), Some(b)) = (at(&samples[i].1, t.tid), at(&samples[j].1, t.tid)) {
                peak = peak.max(100.0 * (b - a) / (samples[j].0 - samples[i].0));
            }
        }
        rows.push((
            whole,
            json!({"name": t.name, "tid": t.tid, "whole_pct": round(whole, 1), "peak_1s_pct": round(peak, 1)}),
        ));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    rows.into_iter().map(|r| r.1).collect()
}

impl Sampler {
    /// `/proc` (and the accept queue) on a thread of its own, `/metrics` on a task: a slow read
    /// of one never delays or thins out the samples of the other.
    fn start(net: &Net, a: &Attack, period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (pid, metrics) = (net.gateway_pid, a.metrics);
        let port = (!net.direct).then_some(net.proxy.port());
        let t0 = Instant::now();
        let stop2 = stop.clone();
        let procs = std::thread::spawn(move || {
            let mut out = SamplerOut::default();
            while !stop2.load(Ordering::Relaxed) {
                let t = t0.elapsed().as_secs_f64();
                if let Some(g) = gw_sample(pid) {
                    out.rss_kib.push(g.rss_kib);
                    out.fds.push(g.fds);
                    out.cpu_s.push((t, g.cpu()));
                }
                if let Some(pid) = pid {
                    out.threads.push((t, thread_cpu(pid)));
                }
                if let Some(q) = port.and_then(accept_queue) {
                    out.accept_queue.push(q);
                }
                std::thread::sleep(period);
            }
            out
        });
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = SamplerOut::default();
            let Some(m) = metrics else {
                return out;
            };
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop2.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = t0.elapsed().as_secs_f64();
                match scrape(m).await {
                    Ok((d, text)) => {
                        out.scrape.push(d.as_micros().min(u32::MAX as u128) as u32);
                        for name in GAUGES {
                            if let Some(v) = metric(&text, name) {
                                out.gauges.push((t, name, v));
                            }
                        }
                    }
                    Err(_) => out.scrape_failures += 1,
                }
            }
            out
        });
        Sampler { stop, task, procs }
    }

    async fn finish(self) -> SamplerOut {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = self.task.await.unwrap_or_default();
        let procs = tokio::task::spawn_blocking(move || self.procs.join().unwrap_or_default())
            .await
            .unwrap_or_default();
        out.rss_kib = procs.rss_kib;
        out.fds = procs.fds;
        out.cpu_s = procs.cpu_s;
        out.threads = procs.threads;
        out.accept_queue = procs.accept_queue;
        out
    }
}

impl SamplerOut {
    fn json(&self, rss0: Option<u64>) -> Value {
        let mut scrape = self.scrape.clone();
        scrape.sort_unstable();
        let peak = self.rss_kib.iter().copied().max();
        let gauge_max = |name: &str| {
            self.gauges
                .iter()
                .filter(|g| g.1 == name)
                .map(|g| g.2)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        let cpu_pct = match (self.cpu_s.first(), self.cpu_s.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => Some(round(100.0 * (b.1 - a.1) / (b.0 - a.0), 1)),
            _ => None,
        };
        let threads = thread_shares(&self.threads);
        // The data path: the workers (`splicegate-w<id>`), not the control or auth threads.
        let worker = |v: &&Value| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("splicegate-w"))
        };
        let busiest_peak = threads
            .iter()
            .filter(worker)
            .filter_map(|v| v["peak_1s_pct"].as_f64())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        json!({
            "samples": self.rss_kib.len().max(self.scrape.len()),
            "metrics_scrape": lat_json(&scrape),
            "metrics_scrape_over_100ms": scrape.iter().filter(|&&us| us > 100_000).count(),
            "metrics_scrape_failures": self.scrape_failures,
            "accept_queue_peak": self.accept_queue.iter().copied().max(),
            "accept_queue_samples_nonzero": self.accept_queue.iter().filter(|&&q| q > 0).count(),
            "threads_cpu": threads,
            "busiest_worker": threads.iter().find(worker),
            "busiest_worker_peak_1s_pct": busiest_peak,
            "rss_kib_peak": peak,
            "rss_kib_growth": match (rss0, peak) { (Some(a), Some(b)) => Some(b as i64 - a as i64), _ => None },
            "rss_kib_min": self.rss_kib.iter().copied().min(),
            "fds_peak": self.fds.iter().copied().max(),
            "gateway_cpu_pct_of_one_core": cpu_pct,
            "active_connections_peak": gauge_max("splicegate_active_client_connections"),
            "pipes_in_use_peak": gauge_max("splicegate_pipes_in_use"),
            "timer_entries_peak": gauge_max("splicegate_timer_entries"),
        })
    }
}

/// A legitimate client beside the attack: CONNECT to the in-process upstream, one echo round
/// trip, close; the time from dialling to the echo.
async fn probe(net: &Net, target: &str, i: usize) -> Result<Duration, Fail> {
    probe_phases(net, target, i).await.map(|p| p.iter().sum())
}

/// [`probe`], step by step: dialling the gateway, its answer to CONNECT, the echo.
async fn probe_phases(net: &Net, target: &str, i: usize) -> Result<[Duration; 3], Fail> {
    let t0 = Instant::now();
    let mut s = dial(net, i).await?;
    let t1 = Instant::now();
    connect_head(&mut s, target).await?;
    let t2 = Instant::now();
    role(&mut s, ROLE_ECHO, i).await?;
    s.write_all(b"ping").await.map_err(|e| fail("probe", e))?;
    let mut four = [0u8; 4];
    s.read_exact(&mut four)
        .await
        .map_err(|e| fail("probe", e))?;
    Ok([t1 - t0, t2 - t1, t2.elapsed()])
}

/// A probe slower than 100 ms: when it started (s after the probing began) and its steps (ms).
type SlowProbe = (f64, [f64; 3]);

/// Probes every `period` until stopped (each bounded at 10 s).
fn spawn_probes(
    net: Arc<Net>,
    target: String,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<u32>, Errors)> {
    tokio::spawn(async move {
        let (mut lat, errors) = (Vec::new(), Errors::default());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(10), probe(&net, &target, i)).await {
                Ok(Ok(d)) => lat.push(d.as_micros().min(u32::MAX as u128) as u32),
                Ok(Err(f)) => errors.add(&f),
                Err(_) => errors.add(&fail("probe_timeout", "10 s")),
            }
            i += 1;
            tokio::time::sleep(period).await;
        }
        lat.sort_unstable();
        (lat, errors)
    })
}

/// Probes at a fixed rate (open loop: one starts every `1/rate` s whether or not the last one
/// has finished, so a slow gateway cannot hide its latency by slowing the prober) until `stop`
/// or `until`; each bounded at 10 s. Latencies sorted, and the errors.
fn open_loop_probes(
    net: Arc<Net>,
    target: String,
    rate: u32,
    until: Option<Instant>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<u32>, Errors, Vec<SlowProbe>)> {
    tokio::spawn(async move {
        let errors = Arc::new(Errors::default());
        let lat = Arc::new(Samples::default());
        let slow = Arc::new(Mutex::new(Vec::<SlowProbe>::new()));
        let t0 = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut handles = Vec::new();
        for i in 0usize.. {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) || until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            let (net, target, errors, lat, slow) = (
                net.clone(),
                target.clone(),
                errors.clone(),
                lat.clone(),
                slow.clone(),
            );
            let at = t0.elapsed().as_secs_f64();
            handles.push(tokio::spawn(async move {
                let r = probe_phases(&net, &target, i);
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(p)) => {
                        let d: Duration = p.iter().sum();
                        lat.add(d);
                        if d > Duration::from_millis(100) {
                            let ms = p.map(|x| round(x.as_secs_f64() * 1000.0, 1));
                            slow.lock().unwrap().push((round(at, 2), ms));
                        }
                    }
                    Ok(Err(f)) => errors.add(&f),
                    Err(_) => errors.add(&fail("probe_timeout", "10 s")),
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        let sorted = lat.sorted_from(0);
        let errors = Arc::try_unwrap(errors).unwrap_or_default();
        let mut slow = std::mem::take(&mut *slow.lock().unwrap());
        slow.sort_by(|a, b| a.0.total_cmp(&b.0));
        (sorted, errors, slow)
    })
}

/// The kernel's counters of listen-queue trouble in this network namespace (`TcpExt` in
/// `/proc/net/netstat`, what `nstat` shows): a full accept queue drops the SYN or the
/// handshake's last ACK (`ListenOverflows`, `ListenDrops`), and the client retransmits 1 s,
/// 3 s, ... later, a wait the gateway never sees.
const LISTEN_COUNTERS: [&str; 5] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
];

fn listen_counters() -> Option<Vec<(&'static str, u64)>> {
    listen_counters_in(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// [`listen_counters`] from a `/proc/net/netstat` text: `TcpExt:` names on one line, values
/// on the next.
fn listen_counters_in(text: &str) -> Option<Vec<(&'static str, u64)>> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let pairs: Vec<(&str, &str)> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .collect();
        return Some(
            LISTEN_COUNTERS
                .iter()
                .map(|c| {
                    let v = pairs
                        .iter()
                        .find(|p| p.0 == *c)
                        .and_then(|p| p.1.parse().ok());
                    (*c, v.unwrap_or(0))
                })
                .collect(),
        );
    }
    None
}

/// What the counters grew by between two readings.
fn listen_delta(
    a: &Option<Vec<(&'static str, u64)>>,
    b: &Option<Vec<(&'static str, u64)>>,
) -> Value {
    let (Some(a), Some(b)) = (a, b) else {
        return Value::Null;
    };
    let mut m = serde_json::Map::new();
    for ((name, x), (_, y)) in a.iter().zip(b) {
        m.insert((*name).into(), json!(y.saturating_sub(*x)));
    }
    Value::Object(m)
}

/// Answers counted per half second (key: the bucket's start in seconds), to see steps such as
/// the client's SYN retransmits (1 s, 3 s) in the spread.
fn half_second_histogram(sorted: &[u32]) -> Value {
    let mut m = std::collections::BTreeMap::<u32, u64>::new();
    for us in sorted {
        *m.entry(us / 500_000).or_insert(0) += 1;
    }
    let mut out = serde_json::Map::new();
    for (b, n) in m {
        out.insert(format!("{:.1}", f64::from(b) * 0.5), json!(n));
    }
    Value::Object(out)
}

async fn baseline_probes(net: &Arc<Net>, target: &str, n: usize) -> Vec<u32> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_secs(10), probe(net, target, i)).await
        {
            lat.push(d.as_micros().min(u32::MAX as u128) as u32);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lat.sort_unstable();
    lat
}

/// Read an answer head (or EOF) from `s`: the status code, if any arrived.
async fn read_status(s: &mut TcpStream, head: &mut Vec<u8>) -> Option<u16> {
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = find_end(head) {
            let line = String::from_utf8_lossy(&head[..end]).into_owned();
            return line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let line = String::from_utf8_lossy(head).into_owned();
                return line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 8192 {
            return None;
        }
    }
}

fn ms_sorted(v: &mut [u32]) -> Value {
    v.sort_unstable();
    lat_json(v)
}

fn emit(v: &Value) {
    println!("{v}");
}

// ---------------------------------------------------------------------------------------------
// slowloris

/// A slowloris connection on its own OS thread with blocking sockets, timed with no async
/// runtime in between: the 9,000 attack tasks share this tool's few runtime threads, so their
/// own timestamps (when the connect completed, when the answer came) can be late by the time it
/// takes those threads to get round to them. The time from its connect returning to the answer
/// (or close), or `None` if neither came within `max`.
fn canary(proxy: SocketAddr, prefix: &str, interval: Duration, max: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&proxy, Duration::from_secs(10)).ok()?;
    let opened = Instant::now();
    s.write_all(prefix.as_bytes()).ok()?;
    let mut next = opened + interval;
    let mut buf = [0u8; 512];
    while opened.elapsed() < max {
        let wait = next.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            let _ = s.write_all(b"a");
            next += interval;
            continue;
        }
        s.set_read_timeout(Some(wait)).ok()?;
        match s.read(&mut buf) {
            Ok(_) => return Some(opened.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(opened.elapsed()),
        }
    }
    None
}

/// The slowloris scenario's shape.
pub struct Slowloris {
    pub connections: usize,
    /// Between two dribbled header bytes.
    pub interval: Duration,
    /// A connection still open after this long is given up on.
    pub max_seconds: u64,
    /// The legitimate client's CONNECTs a second (open loop), before and during the attack.
    pub probe_rate: u32,
    /// How long the same probe runs before the attack, as its baseline.
    pub probe_baseline: Duration,
}

/// Canary connections beside the attack's (see [`canary`]).
const CANARIES: usize = 50;

pub async fn slowloris(net: Net, a: Attack, sl: Slowloris) -> Result<()> {
    let Slowloris {
        connections,
        interval,
        max_seconds,
        probe_rate,
        probe_baseline,
    } = sl;
    let net = Arc::new(net);
    // The observers (the probes, their upstream, the /metrics and /proc sampler) run on a
    // runtime of their own: on the attack's, behind 9,000 tasks, they would measure this tool's
    // own queueing (seconds, on a loaded machine) and call it the gateway's.
    let obs = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("observer")
        .enable_all()
        .build()?;
    let marks = Arc::new(Marks::new(1));
    let up = obs.spawn(upstream(a.upstream_listen, marks, 100)).await??;
    let probe_target = up.to_string();
    let target = if net.target.is_empty() {
        probe_target.clone()
    } else {
        net.target.clone()
    };
    // The baseline: the same open-loop probe, same rate, alone.
    let baseline = {
        let _on = obs.enter();
        open_loop_probes(
            net.clone(),
            probe_target.clone(),
            probe_rate,
            Some(Instant::now() + probe_baseline),
            Arc::new(AtomicBool::new(false)),
        )
    };
    let (base_probe, base_errors, _) = baseline.await.unwrap_or_default();
    let g0 = gw_sample(net.gateway_pid);
    let state0 = state(&net, &a).await;
    let listen0 = listen_counters();
    let stop = Arc::new(AtomicBool::new(false));
    let (sampler, probes) = {
        let _on = obs.enter();
        (
            Sampler::start(&net, &a, Duration::from_millis(100)),
            open_loop_probes(net.clone(), probe_target, probe_rate, None, stop.clone()),
        )
    };

    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let prefix = format!("CONNECT {target} HTTP/1.1\r\nX-Pad: ");
    let closed_after = Arc::new(Samples::default());
    let from_dial = Arc::new(Samples::default());
    let connect_took = Arc::new(Samples::default());
    let eof_after = Arc::new(Samples::default());
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let errors = Arc::new(Errors::default());
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let t_start = Instant::now();
    // Canaries: one every 50 ms over the first 2.5 s (the burst), each on its own thread.
    let canaries: Vec<_> = (0..CANARIES)
        .map(|k| {
            let (proxy, prefix) = (net.proxy, prefix.clone());
            let max = Duration::from_secs(max_seconds);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50 * k as u64));
                canary(proxy, &prefix, interval, max)
            })
        })
        .collect();
    let mut handles = Vec::with_capacity(connections);
    for i in 0..connections {
        let (net, sem, prefix) = (net.clone(), sem.clone(), prefix.clone());
        let (closed_after, eof_after, statuses, errors, bytes_sent) = (
            closed_after.clone(),
            eof_after.clone(),
            statuses.clone(),
            errors.clone(),
            bytes_sent.clone(),
        );
        let (from_dial, connect_took) = (from_dial.clone(), connect_took.clone());
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok()?;
            let dialled = Instant::now();
            let mut s = match dial(&net, i).await {
                Ok(s) => s,
                Err(f) => {
                    errors.add(&f);
                    return None;
                }
            };
            // Established on the client's side (the SYN-ACK came back): the gateway may not
            // have accepted it yet, or may never see this handshake's last ACK (full queue).
            let opened = Instant::now();
            connect_took.add(opened - dialled);
            if let Err(e) = s.write_all(prefix.as_bytes()).await {
                errors.add(&fail("write", e));
                return None;
            }
            drop(permit);
            bytes_sent.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            let bound = tokio::time::Instant::now() + Duration::from_secs(max_seconds);
            let mut next = tokio::time::Instant::now() + interval;
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            let mut answered: Option<Duration> = None;
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => {
                            let d = opened.elapsed();
                            eof_after.add(d);
                            let at = answered.unwrap_or(d);
                            closed_after.add(at);
                            from_dial.add(at + (opened - dialled));
                            let line = String::from_utf8_lossy(&head).into_owned();
                            let code = line.split_whitespace().nth(1).unwrap_or("closed").to_string();
                            *statuses.lock().unwrap().entry(code).or_insert(0) += 1;
                            return Some(());
                        }
                        Ok(n) => {
                            answered.get_or_insert(opened.elapsed());
                            if head.len() < 64 {
                                head.extend_from_slice(&buf[..n]);
                            }
                        }
                    },
                    _ = tokio::time::sleep_until(next), if answered.is_none() => {
                        next += interval;
                        if s.write_all(b"a").await.is_ok() {
                            bytes_sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ = tokio::time::sleep_until(bound) => {
                        *statuses.lock().unwrap().entry("still_open".into()).or_insert(0) += 1;
                        return Some(());
                    }
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let wall = t_start.elapsed().as_secs_f64();
    let (mut canary_after, mut canary_lost) = (Vec::new(), 0u64);
    for c in canaries {
        match c.join().ok().flatten() {
            Some(d) => canary_after.push(d.as_micros().min(u32::MAX as u128) as u32),
            None => canary_lost += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut during, probe_errors, slow_probes) = probes.await.unwrap_or_default();
    let samp = sampler.finish().await;
    obs.shutdown_background();
    let listen1 = listen_counters();
    let g1 = gw_sample(net.gateway_pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state1 = state(&net, &a).await;
    let mut closed = closed_after.sorted_from(0);
    let mut dialled = from_dial.sorted_from(0);
    let mut connects = connect_took.sorted_from(0);
    let mut eof = eof_after.sorted_from(0);
    let hist = half_second_histogram(&closed);
    let p99_ratio = if base_probe.is_empty() || during.is_empty() {
        Value::Null
    } else {
        json!(round(
            crate::pct(&during, 99.0) / crate::pct(&base_probe, 99.0).max(1e-6),
            2
        ))
    };
    let cpu_pct = match (g0, g1) {
        (Some(a0), Some(b)) => Some(round(100.0 * (b.cpu() - a0.cpu()) / wall, 1)),
        _ => None,
    };
    let v = json!({
        "mode": "slowloris", "connections": connections, "interval_ms": interval.as_millis() as u64,
        "wall_s": round(wall, 2),
        "answered_after": ms_sorted(&mut closed), "answered_after_histogram_s": hist,
        "answered_after_dial": ms_sorted(&mut dialled), "connect_took": ms_sorted(&mut connects),
        "listen_queue_counters": listen_delta(&listen0, &listen1),
        "canary_answered_after": ms_sorted(&mut canary_after), "canaries_unanswered": canary_lost,
        "eof_after": ms_sorted(&mut eof),
        "statuses": *statuses.lock().unwrap(), "errors": errors.json(),
        "client_bytes_sent": bytes_sent.load(Ordering::Relaxed),
        "gateway_rss_kib_before": g0.map(|g| g.rss_kib),
        "rss_kib_per_connection_at_peak": match (g0, samp.rss_kib.iter().copied().max()) {
            (Some(g), Some(p)) => Some(round((p as f64 - g.rss_kib as f64) / connections.max(1) as f64, 3)),
            _ => None,
        },
        "gateway_cpu_pct_of_one_core": cpu_pct,
        "during": samp.json(g0.map(|g| g.rss_kib)),
        "probe_rate_per_s": probe_rate,
        "probe_before": lat_json(&base_probe), "probe_before_errors": base_errors.json(),
        "probe_during": ms_sorted(&mut during),
        "probe_p99_ratio": p99_ratio, "probe_errors": probe_errors.json(),
        "probe_slow_count": slow_probes.len(),
        "probe_slow_first_20": slow_probes.iter().take(20)
            .map(|(t, p)| json!({"at_s": t, "dial_ms": p[0], "connect_answer_ms": p[1], "echo_ms": p[2]}))
            .collect::<Vec<_>>(),
        "state_before": state0, "state_after": state1,
    });
    emit(&v);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// flood

pub async fn flood(
    net: Net,
    a: Attack,
    connections: usize,
    hold: u64,
    trickle: usize,
) -> Result<()> {
    let net = Arc::new(net);
    let g0 = gw_sample(net.gateway_pid);
    let state0 = state(&net, &a).await;
    let sampler = Sampler::start(&net, &a, Duration::from_millis(100));
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let answered = Arc::new(Samples::default());
    let held_for = Arc::new(Samples::default());
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let errors = Arc::new(Errors::default());
    let limit = Duration::from_secs(hold + 30);
    let dialled = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let spawn = |i: usize| {
        let (net, sem, answered, held_for, statuses, errors, dialled) = (
            net.clone(),
            sem.clone(),
            answered.clone(),
            held_for.clone(),
            statuses.clone(),
            errors.clone(),
            dialled.clone(),
        );
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok()?;
            let dialed = dial(&net, i).await;
            dialled.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let mut s = match dialed {
                Ok(s) => s,
                Err(f) => {
                    errors.add(&f);
                    return None;
                }
            };
            let opened = Instant::now();
            let mut head = Vec::new();
            let code = tokio::time::timeout(limit, read_status(&mut s, &mut head)).await;
            let d = opened.elapsed();
            let key = match code {
                Ok(Some(c)) => c.to_string(),
                Ok(None) => "closed".into(),
                Err(_) => "still_open".into(),
            };
            // An answer within 1 s is "at once"; later ones were held until a timeout.
            if d < Duration::from_secs(1) {
                answered.add(d);
            } else {
                held_for.add(d);
            }
            *statuses.lock().unwrap().entry(key).or_insert(0) += 1;
            Some(())
        })
    };
    let mut handles: Vec<_> = (0..connections).map(&spawn).collect();
    // Once everything is dialled, hold, with a trickle of new connections every second.
    let opened_s = loop {
        if dialled.load(Ordering::Relaxed) as usize >= connections
            || t0.elapsed() > Duration::from_secs(60)
        {
            break t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let g_open = gw_sample(net.gateway_pid);
    let t_hold = Instant::now();
    let mut k = connections;
    for _ in 0..hold {
        for _ in 0..trickle {
            handles.push(spawn(k));
            k += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let g_hold = gw_sample(net.gateway_pid);
    let hold_s = t_hold.elapsed().as_secs_f64();
    for h in handles {
        let _ = h.await;
    }
    let samp = sampler.finish().await;
    let wall = t0.elapsed().as_secs_f64();
    let g1 = gw_sample(net.gateway_pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state1 = state(&net, &a).await;
    let pct = |a: Option<crate::Gw>, b: Option<crate::Gw>, s: f64| match (a, b) {
        (Some(a), Some(b)) => Some(round(100.0 * (b.cpu() - a.cpu()) / s.max(1e-9), 1)),
        _ => None,
    };
    let mut ans = answered.sorted_from(0);
    let mut held = held_for.sorted_from(0);
    let v = json!({
        "mode": "flood", "connections": connections, "trickle_per_s": trickle, "hold_s": hold,
        "opened_in_s": round(opened_s, 3), "wall_s": round(wall, 2),
        "answered_at_once": ms_sorted(&mut ans), "answered_after_hold": ms_sorted(&mut held),
        "statuses": *statuses.lock().unwrap(), "errors": errors.json(),
        "gateway_cpu_pct_opening": pct(g0, g_open, opened_s),
        "gateway_cpu_pct_holding_with_trickle": pct(g_open, g_hold, hold_s),
        "gateway_cpu_pct_whole": pct(g0, g1, wall),
        "during": samp.json(g0.map(|g| g.rss_kib)),
        "state_before": state0, "state_after": state1,
    });
    emit(&v);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// resets

pub async fn resets(
    net: Net,
    a: Attack,
    tunnels: usize,
    max_ms: u64,
    rounds: usize,
    pace: Option<Duration>,
) -> Result<()> {
    let net = Arc::new(net);
    let mut out = Vec::new();
    let state0 = state(&net, &a).await;
    for round_no in 0..rounds.max(1) {
        let marks = Arc::new(Marks {
            pace,
            ..Marks::new(tunnels)
        });
        let up = upstream(a.upstream_listen, marks.clone(), max_ms).await?;
        let target = up.to_string();
        let sampler = Sampler::start(&net, &a, Duration::from_millis(500));
        let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
        let errors = Arc::new(Errors::default());
        let established = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let mut handles = Vec::with_capacity(tunnels);
        for i in 0..tunnels {
            let (net, sem, marks, errors, target, established) = (
                net.clone(),
                sem.clone(),
                marks.clone(),
                errors.clone(),
                target.clone(),
                established.clone(),
            );
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                let mut s = match dial(&net, i).await {
                    Ok(s) => s,
                    Err(f) => {
                        errors.add(&f);
                        return None;
                    }
                };
                if let Err(f) = connect_head(&mut s, &target).await {
                    errors.add(&f);
                    return None;
                }
                if let Err(f) = role(&mut s, ROLE_RESET, i).await {
                    errors.add(&f);
                    return None;
                }
                established.fetch_add(1, Ordering::Relaxed);
                let ours = i % 2 == 0;
                let at = tokio::time::Instant::now() + reset_delay(i, max_ms);
                let (seen, s) = stream_both(s, ours.then_some(at), marks.pace).await;
                match s {
                    Some(s) => {
                        Marks::set(&marks.reset_at, i, Instant::now());
                        reset(s);
                    }
                    None => Marks::set(&marks.seen_at, i, seen),
                }
                Some(())
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        // The upstream's tasks are not joined: give the last resets up to 5 s to arrive there.
        let pending = |m: &Marks| {
            let (r, s) = (m.reset_at.lock().unwrap(), m.seen_at.lock().unwrap());
            r.iter()
                .zip(s.iter())
                .filter(|(r, s)| r.is_some() && s.is_none())
                .count()
        };
        let wait_end = Instant::now() + Duration::from_secs(5);
        while pending(&marks) > 0 && Instant::now() < wait_end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let storm_s = t0.elapsed().as_secs_f64();
        let samp = sampler.finish().await;
        // Propagation: the other side's close after the reset, per direction.
        let (mut by_client, mut by_upstream, mut unseen) = (Vec::new(), Vec::new(), 0u64);
        {
            let r = marks.reset_at.lock().unwrap();
            let s = marks.seen_at.lock().unwrap();
            for i in 0..tunnels {
                match (r[i], s[i]) {
                    (Some(r), Some(s)) => {
                        let us = s
                            .saturating_duration_since(r)
                            .as_micros()
                            .min(u32::MAX as u128) as u32;
                        if i % 2 == 0 {
                            by_client.push(us)
                        } else {
                            by_upstream.push(us)
                        }
                    }
                    (Some(_), None) => unseen += 1,
                    _ => {}
                }
            }
        }
        let over_100ms = by_client
            .iter()
            .chain(&by_upstream)
            .filter(|&&us| us > 100_000)
            .count();
        // Settle, then the gateway's state against the one before the first round.
        let mut after = state(&net, &a).await;
        for _ in 0..50 {
            let busy = [
                "tunnels_active",
                "pipes_in_use",
                "active_client_connections",
                "timer_entries",
            ]
            .iter()
            .any(|k| after[*k].as_f64().unwrap_or(0.0) > 0.0);
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = state(&net, &a).await;
        }
        out.push(json!({
            "round": round_no + 1, "tunnels": tunnels,
            "established": established.load(Ordering::Relaxed),
            "upstream_accepted": marks.accepted.load(Ordering::Relaxed),
            "storm_s": round(storm_s, 2), "errors": errors.json(),
            "client_reset_seen_by_upstream": ms_sorted(&mut by_client),
            "upstream_reset_seen_by_client": ms_sorted(&mut by_upstream),
            "resets_never_seen": unseen, "seen_after_over_100ms": over_100ms,
            "during": samp.json(state0["rss_kib"].as_u64()),
            "state_after": after,
        }));
    }
    emit(&json!({"mode": "resets", "max_ms": max_ms,
        "pace_ms": pace.map(|p| p.as_millis() as u64), "state_before": state0, "rounds": out}));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stall

pub async fn stall(net: Net, a: Attack, tunnels: usize, side: String, seconds: u64) -> Result<()> {
    let net = Arc::new(net);
    let client_stalls = side != "upstream";
    let marks = Arc::new(Marks::new(tunnels));
    let up = upstream(a.upstream_listen, marks.clone(), 100).await?;
    let target = up.to_string();
    let state0 = state(&net, &a).await;
    let errors = Arc::new(Errors::default());
    let client_end: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; tunnels]));
    let mut held = Vec::new();
    let t0 = Instant::now();
    let mut writers = Vec::new();
    for i in 0..tunnels {
        let mut s = match dial(&net, i).await {
            Ok(s) => s,
            Err(f) => {
                errors.add(&f);
                continue;
            }
        };
        if let Err(f) = connect_head(&mut s, &target).await {
            errors.add(&f);
            continue;
        }
        let r = if client_stalls {
            ROLE_STREAM
        } else {
            ROLE_HOLD
        };
        if let Err(f) = role(&mut s, r, i).await {
            errors.add(&f);
            continue;
        }
        if client_stalls {
            // Never read: keep the socket; a peek-free wait would read, so just hold it.
            held.push(s);
        } else {
            let (marks, client_end) = (marks.clone(), client_end.clone());
            writers.push(tokio::spawn(async move {
                let buf = vec![0x5au8; CHUNK];
                while let Ok(n) = s.write(&buf).await {
                    marks.written[i].fetch_add(n as u64, Ordering::Relaxed);
                }
                Marks::set(&client_end, i, Instant::now());
            }));
        }
    }
    let up_n = if client_stalls {
        held.len()
    } else {
        writers.len()
    };
    let sampler = Sampler::start(&net, &a, Duration::from_millis(500));
    // Watch each tunnel's bytes: when they stop moving, that tunnel has reached backpressure.
    // Movement after a tunnel's end (a last partial write as it closes) does not count.
    let ends_now = |m: &Marks| -> Vec<Option<Instant>> {
        if client_stalls {
            m.upstream_end.lock().unwrap().clone()
        } else {
            client_end.lock().unwrap().clone()
        }
    };
    let mut last = vec![0u64; tunnels];
    let mut last_move = vec![Instant::now(); tunnels];
    let mut series = Vec::new();
    let deadline = t0 + Duration::from_secs(seconds);
    for tick in 0u64.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ends = ends_now(&marks);
        for i in 0..tunnels {
            let now = marks.written[i].load(Ordering::Relaxed);
            if now != last[i] && ends[i].is_none() {
                last[i] = now;
                last_move[i] = Instant::now();
            }
        }
        let ended = ends.iter().filter(|e| e.is_some()).count();
        if series.len() < 400 && tick % 10 == 0 {
            let g = gw_sample(net.gateway_pid);
            series.push(json!({"t_s": round(t0.elapsed().as_secs_f64(), 2),
                "bytes": last.iter().sum::<u64>(), "rss_kib": g.map(|g| g.rss_kib), "ended": ended}));
        }
        if ended >= up_n || Instant::now() >= deadline {
            break;
        }
    }
    let samp = sampler.finish().await;
    // Each tunnel's end, after its own bytes stopped moving (backpressure reached).
    let ends = ends_now(&marks);
    let mut after_stop: Vec<u32> = (0..tunnels)
        .filter_map(|i| ends[i].map(|e| (e, last_move[i])))
        .map(|(e, m)| {
            e.saturating_duration_since(m)
                .as_micros()
                .min(u32::MAX as u128) as u32
        })
        .collect();
    let stopped_at = last_move.iter().max().copied().unwrap_or(t0);
    let not_ended = up_n - after_stop.len();
    drop(held);
    for w in writers {
        w.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state1 = state(&net, &a).await;
    let bytes: u64 = last.iter().sum();
    let v = json!({
        "mode": "stall", "side_not_reading": if client_stalls { "client" } else { "upstream" },
        "tunnels": tunnels, "up": up_n, "errors": errors.json(),
        "bytes_moved": bytes, "bytes_per_tunnel": bytes / up_n.max(1) as u64,
        "bytes_stopped_moving_at_s": round(stopped_at.saturating_duration_since(t0).as_secs_f64(), 2),
        "ended_after_bytes_stopped": ms_sorted(&mut after_stop), "not_ended": not_ended,
        "during": samp.json(state0["rss_kib"].as_u64()),
        "series": series, "state_before": state0, "state_after": state1,
    });
    emit(&v);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// blackhole

pub async fn blackhole(net: Net, a: Attack, count: usize, seconds: u64) -> Result<()> {
    let net = Arc::new(net);
    let marks = Arc::new(Marks::new(1));
    let up = upstream(a.upstream_listen, marks, 100).await?;
    let healthy = up.to_string();
    let base = baseline_probes(&net, &healthy, 40).await;
    let stop = Arc::new(AtomicBool::new(false));
    let probes = spawn_probes(
        net.clone(),
        healthy.clone(),
        Duration::from_millis(100),
        stop.clone(),
    );
    let t0 = Instant::now();
    let answered = Arc::new(Samples::default());
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let mut handles = Vec::new();
    for i in 0..count {
        let (net, answered, statuses) = (net.clone(), answered.clone(), statuses.clone());
        handles.push(tokio::spawn(async move {
            let mut s = dial(&net, i).await.ok()?;
            let req = format!(
                "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n",
                net.target, net.target
            );
            let t = Instant::now();
            s.write_all(req.as_bytes()).await.ok()?;
            let mut head = Vec::new();
            let code =
                tokio::time::timeout(Duration::from_secs(seconds), read_status(&mut s, &mut head))
                    .await;
            answered.add(t.elapsed());
            let key = match code {
                Ok(Some(c)) => c.to_string(),
                Ok(None) => "closed".into(),
                Err(_) => "no_answer".into(),
            };
            *statuses.lock().unwrap().entry(key).or_insert(0) += 1;
            Some(())
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (mut during, probe_errors) = probes.await.unwrap_or_default();
    let mut ans = answered.sorted_from(0);
    let v = json!({
        "mode": "blackhole", "target": net.target, "count": count, "wall_s": round(wall, 2),
        "answered_after": ms_sorted(&mut ans), "statuses": *statuses.lock().unwrap(),
        "healthy_before": lat_json(&base), "healthy_during": ms_sorted(&mut during),
        "healthy_errors": probe_errors.json(),
        "gateway_state_after": state(&net, &a).await,
    });
    emit(&v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_queue_sums_the_listeners() {
        // Two SO_REUSEPORT listeners with 3 and 16 connections waiting.
        let text = "LISTEN 3      4096   127.0.0.1:8080  0.0.0.0:*
LISTEN 16     4096   127.0.0.1:8080  0.0.0.0:*
";
        assert_eq!(accept_queue_in(text), Some(19));
        assert_eq!(accept_queue_in(""), None);
    }

    #[test]
    fn listen_counters_are_read_from_the_tcpext_pair() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops
TcpExt: 4 17 21
IpExt: ListenOverflows
IpExt: 99
";
        let c = listen_counters_in(text).unwrap();
        let get = |n: &str| c.iter().find(|x| x.0 == n).map(|x| x.1);
        assert_eq!(get("ListenOverflows"), Some(17));
        assert_eq!(get("ListenDrops"), Some(21));
        assert_eq!(get("SyncookiesSent"), Some(4));
        assert_eq!(get("TCPReqQFullDrop"), Some(0));
        assert!(listen_counters_in("IpExt: A\nIpExt: 1\n").is_none());
    }

    #[test]
    fn thread_shares_finds_the_busiest_second() {
        let t = |tid, cpu_s| ThreadCpu {
            tid,
            name: format!("splicegate-w{tid}"),
            cpu_s,
        };
        // Worker 1 uses 0.6 s of CPU between t = 1 and t = 2, nothing otherwise; worker 0
        // uses 0.1 s a second throughout.
        let samples = vec![
            (0.0, vec![t(0, 0.0), t(1, 0.0)]),
            (1.0, vec![t(0, 0.1), t(1, 0.0)]),
            (2.0, vec![t(0, 0.2), t(1, 0.6)]),
            (3.0, vec![t(0, 0.3), t(1, 0.6)]),
        ];
        let rows = thread_shares(&samples);
        assert_eq!(rows[0]["name"], "splicegate-w1");
        assert_eq!(rows[0]["whole_pct"], 20.0);
        assert_eq!(rows[0]["peak_1s_pct"], 60.0);
        assert_eq!(rows[1]["whole_pct"], 10.0);
        assert_eq!(rows[1]["peak_1s_pct"], 10.0);
    }

    #[test]
    fn half_second_histogram_buckets_by_start() {
        let h = half_second_histogram(&[4_999_999, 5_000_000, 5_400_000, 6_100_000]);
        assert_eq!(h["4.5"], 1);
        assert_eq!(h["5.0"], 2);
        assert_eq!(h["6.0"], 1);
    }
}
