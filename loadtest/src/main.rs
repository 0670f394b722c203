//! `splicegate-load`: drive a gateway over loopback and measure what it costs.
//!
//! - `sink`: a TCP server that reads and discards (one thread per connection).
//! - `stream`: K tunnels (or, with `--direct`, plain connections) that send as fast as they can
//!   for a bounded time; reports throughput and, given `--gateway-pid`, the gateway's CPU-seconds
//!   per GB relayed, read from `/proc/PID/stat` before and after.
//! - `idle`: hold N idle tunnels and report the gateway's threads, fds and RSS per tunnel.
//!
//! Every run is bounded in time and count, and only talks to the addresses it is given (use
//! loopback).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "splicegate-load")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Read and discard everything on LISTEN.
    Sink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// K senders as fast as they can for SECONDS.
    Stream {
        /// The gateway (ignored with --direct).
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy: SocketAddr,
        /// CONNECT target as host:port.
        #[arg(long)]
        target: String,
        /// Where the sink really is (for --direct).
        #[arg(long)]
        sink: Option<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        tunnels: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long)]
        direct: bool,
        #[arg(long)]
        gateway_pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Hold N idle tunnels for SECONDS and report the gateway's cost per tunnel.
    Idle {
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy: SocketAddr,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1000)]
        tunnels: usize,
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        #[arg(long)]
        gateway_pid: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Sink { listen, seconds } => sink(listen, seconds),
        Mode::Stream {
            proxy,
            target,
            sink,
            tunnels,
            seconds,
            direct,
            gateway_pid,
            json,
        } => stream(proxy, &target, sink, tunnels.clamp(1, 4096), seconds.clamp(1, 600), direct, gateway_pid, json),
        Mode::Idle {
            proxy,
            target,
            tunnels,
            seconds,
            gateway_pid,
        } => idle(proxy, &target, tunnels.clamp(1, 9000), seconds.clamp(1, 600), gateway_pid),
    }
}

fn sink(listen: SocketAddr, seconds: u64) -> Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("listening {}", l.local_addr()?);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        std::process::exit(0);
    });
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Open a tunnel through the gateway; returns the stream after the `200`.
fn tunnel(proxy: SocketAddr, target: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).context("connecting to the gateway")?;
    s.set_nodelay(true)?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 || head.len() > 4096 {
            bail!("gateway closed during the CONNECT answer: {:?}", String::from_utf8_lossy(&head));
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("gateway refused: {}", String::from_utf8_lossy(&head).lines().next().unwrap_or(""));
    }
    Ok(s)
}

/// utime + stime of a process in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Ok((ut + st) / ticks)
}

fn proc_count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn stream(
    proxy: SocketAddr,
    target: &str,
    sink: Option<SocketAddr>,
    tunnels: usize,
    seconds: u64,
    direct: bool,
    pid: Option<u32>,
    json: bool,
) -> Result<()> {
    let mut conns = Vec::with_capacity(tunnels);
    for _ in 0..tunnels {
        let s = if direct {
            let addr = sink.context("--direct needs --sink")?;
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            s
        } else {
            tunnel(proxy, target)?
        };
        conns.push(s);
    }
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = pid.map(cpu_seconds).transpose()?;
    let start = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let total = Arc::clone(&total);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let buf = vec![0x5au8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match s.write(&buf) {
                        Ok(n) => {
                            total.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = pid.map(cpu_seconds).transpose()?;
    for h in handles {
        let _ = h.join();
    }
    let bytes = total.load(Ordering::Relaxed) as f64;
    let gbps = bytes / elapsed / 1e9;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let per_gb = cpu.map(|c| c / (bytes / 1e9));
    if json {
        println!(
            "{{\"mode\":\"stream\",\"direct\":{direct},\"tunnels\":{tunnels},\"seconds\":{elapsed:.3},\"bytes\":{bytes},\"gb_per_s\":{gbps:.4},\"gateway_cpu_s\":{},\"gateway_cpu_s_per_gb\":{}}}",
            cpu.map_or("null".into(), |c| format!("{c:.3}")),
            per_gb.map_or("null".into(), |c| format!("{c:.4}"))
        );
    } else {
        println!(
            "stream: {tunnels} tunnel(s){} {:.2} GB in {elapsed:.2} s = {gbps:.3} GB/s{}",
            if direct { " (direct)" } else { "" },
            bytes / 1e9,
            match (cpu, per_gb) {
                (Some(c), Some(p)) => format!(", gateway {c:.2} CPU-s = {p:.3} CPU-s/GB"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

fn idle(proxy: SocketAddr, target: &str, n: usize, seconds: u64, pid: u32) -> Result<()> {
    let (t0, f0, r0) = (proc_count(pid, "task"), proc_count(pid, "fd"), rss_kib(pid));
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(tunnel(proxy, target).with_context(|| format!("tunnel {i}"))?);
    }
    std::thread::sleep(Duration::from_secs(seconds));
    let (t1, f1, r1) = (proc_count(pid, "task"), proc_count(pid, "fd"), rss_kib(pid));
    println!(
        "idle: {n} tunnels; gateway threads {t0} -> {t1}; fds {f0} -> {f1} ({:.2} per tunnel); RSS {r0} -> {r1} KiB ({:.2} KiB per tunnel)",
        (f1 as f64 - f0 as f64) / n as f64,
        (r1 as f64 - r0 as f64) / n as f64
    );
    drop(held);
    Ok(())
}
