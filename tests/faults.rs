//! Faults at small scale (issue 16; catalogue D5, D6a, D8): the fast, bounded versions of the
//! `loadtest/` attack scenarios, against the real binary.
//!
//! - a reset storm (200 tunnels streaming both ways, half reset by the client and half by the
//!   upstream, `SO_LINGER` 0): the other side sees the close promptly, and fds, pipes, timer
//!   entries and tunnels come back to where they were;
//! - a black-holed upstream (SYNs dropped by an nft rule in a network namespace this test
//!   creates): 504 at `connect_timeout` ±1 s while other tunnels carry on unaffected;
//! - stalled readers (the client, then the upstream, stops reading while the other side
//!   streams): the bytes in flight stop growing, the pipes stay bounded, memory stays flat, and
//!   the tunnel ends at `idle_timeout`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const NAME: &str = "faults.splicegate.test";

/// Reset `s`: `SO_LINGER` 0 turns the close into an RST.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// fds, after the gauges that count open work are back to 0 (bounded wait).
fn settled_fds(gw: &Gateway) -> usize {
    for g in [
        "splicegate_tunnels_active",
        "splicegate_active_client_connections",
        "splicegate_pipes_in_use",
        "splicegate_timer_entries",
    ] {
        let v = gw.wait_metric(g, |v| v == 0.0, Duration::from_secs(5));
        assert_eq!(v, 0.0, "{g} did not come back to 0");
    }
    // The fd count can lag the gauges by a turn: take it once it holds still.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = gw.fd_count();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = gw.fd_count();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// One round of the storm: `n` tunnels; even ids are reset by the client, odd ids by the
/// upstream, each after both directions have moved bytes. Returns the worst time between a reset
/// and the other side seeing the close.
fn reset_storm(
    gw: &Gateway,
    target: &str,
    n: usize,
    seen_by_upstream: &Mutex<Vec<Duration>>,
) -> Duration {
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let mut threads = Vec::new();
    for batch in 0..n.div_ceil(50) {
        for i in batch * 50..((batch + 1) * 50).min(n) {
            let (addr, target, worst) = (gw.addr(), target.to_string(), worst.clone());
            threads.push(thread::spawn(move || {
                let mut s = open_tunnel(addr, &target);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(&(i as u64).to_be_bytes()).unwrap();
                s.write_all(&vec![1u8; 64 * 1024]).unwrap();
                let mut got = vec![0u8; 64 * 1024];
                s.read_exact(&mut got).expect("the upstream's first 64 KiB");
                if i % 2 == 0 {
                    reset(s);
                } else {
                    // The upstream resets after its 64 KiB: we see the close (EOF or RST).
                    let t = Instant::now();
                    let (_, _) = read_until_closed(&mut s, Duration::from_secs(5));
                    let d = t.elapsed();
                    let mut w = worst.lock().unwrap();
                    *w = (*w).max(d);
                }
            }));
        }
        // 50 at a time: bounded threads, and every tunnel is mid-stream when it is reset.
        for t in threads.drain(..) {
            t.join().expect("storm client");
        }
    }
    let client_side = *worst.lock().unwrap();
    let upstream_side = seen_by_upstream
        .lock()
        .unwrap()
        .drain(..)
        .max()
        .unwrap_or_default();
    client_side.max(upstream_side)
}

/// The storm's upstream: read the id and 64 KiB, send 64 KiB; odd ids reset at once, even ids
/// wait for the client's reset and note how long the close took to arrive.
fn storm_upstream(seen: Arc<Mutex<Vec<Duration>>>) -> Upstream {
    Upstream::with_handler(move |mut s| {
        let mut id = [0u8; 8];
        if s.read_exact(&mut id).is_err() {
            return;
        }
        let id = u64::from_be_bytes(id);
        let mut buf = vec![0u8; 64 * 1024];
        if s.read_exact(&mut buf).is_err() || s.write_all(&vec![2u8; 64 * 1024]).is_err() {
            return;
        }
        if id % 2 == 1 {
            reset(s);
        } else {
            // The client resets once it has our 64 KiB; its RST reaches us through the gateway.
            let t = Instant::now();
            let mut one = [0u8; 4096];
            loop {
                match s.read(&mut one) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if t.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            seen.lock().unwrap().push(t.elapsed());
        }
    })
}

#[test]
fn a_reset_storm_leaves_fds_pipes_and_timers_at_their_baseline() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = storm_upstream(seen.clone());
    let cfg = Config::new()
        .upstream(NAME, up.port())
        .limit("max_pipes", "16");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{NAME}:{}", up.port());
    let before = settled_fds(&gw);
    // Round 1 fills the pipe pools (at most max_pipes per worker, kept for reuse).
    let worst1 = reset_storm(&gw, &target, 200, &seen);
    let after1 = settled_fds(&gw);
    assert!(
        after1 <= before + 2 * 2 * 16,
        "fds {before} -> {after1}: more than the pipe pools can hold"
    );
    // Round 2 must leave exactly what round 1 left: one leaked fd per 200 tunnels shows.
    let worst2 = reset_storm(&gw, &target, 200, &seen);
    let after2 = settled_fds(&gw);
    assert_eq!(after2, after1, "fds after a second storm of 200 resets");
    let worst = worst1.max(worst2);
    assert!(
        worst < Duration::from_secs(1),
        "a reset took {worst:?} to reach the other side"
    );
    eprintln!("reset storm: fds {before} -> {after1} -> {after2}, worst propagation {worst:?}");
    assert!(
        gw.metric_value("splicegate_errors_total") >= 1.0,
        "resets are counted"
    );
}

// ---------------------------------------------------------------------------------------------
// Black hole

/// A network namespace joined to ours by a veth pair, whose address drops every SYN to port 443
/// (nft, inside the namespace). Removed on drop (the veth pair goes with the namespace).
struct BlackHole {
    ns: String,
    addr: String,
}

impl BlackHole {
    fn new() -> Option<BlackHole> {
        if !have_root_tools() {
            return None;
        }
        let pid = std::process::id();
        let ns = format!("sgfault{pid}");
        let (a, b) = (
            format!("sgf{}a", pid % 100_000),
            format!("sgf{}b", pid % 100_000),
        );
        let net = format!("10.213.{}", pid % 250);
        let hole = BlackHole {
            ns: ns.clone(),
            addr: format!("{net}.2"),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["ip", "netns", "add", &ns],
            vec!["ip", "link", "add", &a, "type", "veth", "peer", "name", &b],
            vec!["ip", "link", "set", &b, "netns", &ns],
            vec!["ip", "addr", "add", &format!("{net}.1/30"), "dev", &a],
            vec!["ip", "link", "set", &a, "up"],
            vec![
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{net}.2/30"),
                "dev",
                &b,
            ],
            vec!["ip", "-n", &ns, "link", "set", &b, "up"],
            vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
            vec![
                "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "hole",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                &ns,
                "nft",
                "add",
                "chain",
                "inet",
                "hole",
                "in",
                "{ type filter hook input priority 0; }",
            ],
            vec![
                "ip", "netns", "exec", &ns, "nft", "add", "rule", "inet", "hole", "in", "tcp",
                "dport", "443", "drop",
            ],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for step in steps {
            let out = Command::new(&step[0]).args(&step[1..]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    eprintln!(
                        "SKIP: {} failed: {}",
                        step.join(" "),
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    return None;
                }
                Err(e) => {
                    eprintln!("SKIP: {}: {e}", step[0]);
                    return None;
                }
            }
        }
        Some(hole)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn have_root_tools() -> bool {
    // Root is uid 0 in /proc/self/status.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("SKIP: network namespaces need root");
        return false;
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("SKIP: `{tool}` is not installed");
            return false;
        }
    }
    true
}

#[test]
fn a_black_holed_upstream_is_504_at_connect_timeout_and_others_carry_on() {
    let Some(hole) = BlackHole::new() else {
        return;
    };
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream(NAME, up.port())
        .allow_host(&format!("{}:443", hole.addr))
        .destination_network(&format!("{}/32", hole.addr))
        .limit("connect_timeout", "2s");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{NAME}:{}", up.port());
    // Healthy tunnels, one after another, for the whole time the black-holed ones wait.
    let healthy = {
        let (addr, target) = (gw.addr(), target.clone());
        thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            let end = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < end {
                let t = Instant::now();
                let mut s = open_tunnel(addr, &target);
                echo_roundtrip(&mut s, b"healthy");
                worst = worst.max(t.elapsed());
                n += 1;
                thread::sleep(Duration::from_millis(50));
            }
            (n, worst)
        })
    };
    let holes: Vec<_> = (0..4)
        .map(|_| {
            let (addr, t) = (gw.addr(), format!("{}:443", hole.addr));
            thread::spawn(move || {
                let t0 = Instant::now();
                let (_s, r) = request(addr, connect_head(&t).as_bytes());
                (r.map(|r| r.status).ok(), t0.elapsed())
            })
        })
        .collect();
    for h in holes {
        let (status, took) = h.join().expect("black-holed client");
        assert_eq!(status, Some(504), "black-holed CONNECT answered {status:?}");
        assert!(
            took >= Duration::from_secs(1) && took <= Duration::from_secs(3),
            "504 after {took:?}, connect_timeout is 2 s (±1 s)"
        );
    }
    let (n, worst) = healthy.join().expect("healthy client");
    assert!(n >= 10, "only {n} healthy tunnels beside the black hole");
    // Unaffected: no healthy tunnel waits behind the dials (that would take the 2 s
    // connect_timeout); the bound leaves room for a loaded machine.
    assert!(
        worst < Duration::from_secs(1),
        "a healthy tunnel took {worst:?} beside the black hole"
    );
    expect_refusal_event(&gw, 403, 504, Some("connect_timeout"));
}

// ---------------------------------------------------------------------------------------------
// Stalled readers

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

/// Tunnels where one side never reads while the other writes as fast as it can; each writer
/// notes when its write failed (the gateway closed the tunnel).
fn stall(client_stalls: bool) {
    const TUNNELS: usize = 4;
    // Bytes each tunnel's writer got through, and when its write failed (the tunnel closed).
    let moved: Arc<Vec<AtomicU64>> = Arc::new((0..TUNNELS).map(|_| AtomicU64::new(0)).collect());
    let ends: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; TUNNELS]));
    let held = Arc::new(Mutex::new(Vec::new()));
    let write_until_closed = {
        let (moved, ends) = (moved.clone(), ends.clone());
        move |mut s: TcpStream, k: usize| {
            // Non-blocking, so that every byte the kernel takes is counted when it is taken (a
            // blocking write reports a partly sent buffer only when it fails, at the close).
            s.set_nonblocking(true).unwrap();
            let buf = vec![0x5au8; 64 * 1024];
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                match s.write(&buf) {
                    Ok(n) => {
                        moved[k].fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
            ends.lock().unwrap()[k] = Some(Instant::now());
        }
    };
    let up = {
        let (held, write) = (held.clone(), write_until_closed.clone());
        Upstream::with_handler(move |mut s| {
            if client_stalls {
                // The client names its tunnel with one byte, then never reads.
                let mut k = [0u8; 1];
                if s.read_exact(&mut k).is_ok() && (k[0] as usize) < TUNNELS {
                    write(s, k[0] as usize);
                }
            } else {
                // Never read; keep the socket until the test ends.
                held.lock().unwrap().push(s);
            }
        })
    };
    let cfg = Config::new()
        .upstream(NAME, up.port())
        .limit("idle_timeout", "2s");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{NAME}:{}", up.port());
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    for k in 0..TUNNELS {
        let mut s = open_tunnel(gw.addr(), &target);
        if client_stalls {
            s.write_all(&[k as u8]).unwrap();
            clients.push(s);
        } else {
            let write = write_until_closed.clone();
            writers.push(thread::spawn(move || write(s, k)));
        }
    }
    // Sample until every tunnel ended (bounded): each tunnel's bytes, RSS, pipes in use.
    let t0 = Instant::now();
    let mut last = [0u64; TUNNELS];
    let mut last_move = [Instant::now(); TUNNELS];
    let (mut rss_min, mut rss_max, mut pipes_max) = (u64::MAX, 0u64, 0.0f64);
    loop {
        thread::sleep(Duration::from_millis(50));
        let ends = ends.lock().unwrap().clone();
        if ends.iter().all(Option::is_some) || t0.elapsed() > Duration::from_secs(15) {
            break;
        }
        for k in 0..TUNNELS {
            let m = moved[k].load(Ordering::Relaxed);
            if m != last[k] && ends[k].is_none() {
                (last[k], last_move[k]) = (m, Instant::now());
            }
        }
        // Memory is judged once the stall has set in (no bytes moved for 300 ms).
        if last_move
            .iter()
            .all(|t| t.elapsed() > Duration::from_millis(300))
        {
            let r = rss_kib(gw.pid());
            rss_min = rss_min.min(r);
            rss_max = rss_max.max(r);
        }
        pipes_max = pipes_max.max(gw.metric_value("splicegate_pipes_in_use"));
    }
    let ends = ends.lock().unwrap().clone();
    for k in 0..TUNNELS {
        let end = ends[k]
            .unwrap_or_else(|| panic!("stalled tunnel {k} did not end (moved {} bytes)", last[k]));
        // idle_timeout (2 s) after its own last byte; the sampling every 50 ms and a loaded
        // machine widen the window.
        let after = end.saturating_duration_since(last_move[k]);
        assert!(
            after >= Duration::from_millis(1000) && after <= Duration::from_millis(4000),
            "stalled tunnel {k} ended {after:?} after its bytes stopped moving; idle_timeout is 2 s"
        );
    }
    // Backpressure bounds what is in flight: the kernel's socket buffers on both legs (loopback
    // autotuning takes them to several MiB each, up to tcp_rmem/tcp_wmem) plus one pipe.
    let per_tunnel = last.iter().max().copied().unwrap_or(0);
    assert!(
        per_tunnel < 32 << 20,
        "{per_tunnel} bytes through one stalled tunnel: the gateway kept reading"
    );
    assert!(
        pipes_max <= TUNNELS as f64,
        "{pipes_max} pipes in use for {TUNNELS} stalled tunnels"
    );
    assert!(
        rss_max.saturating_sub(rss_min) < 2048,
        "RSS moved {rss_min} -> {rss_max} KiB while stalled"
    );
    eprintln!(
        "stall (client_stalls={client_stalls}): <= {per_tunnel} bytes/tunnel in flight, pipes <= {pipes_max}, RSS {rss_min}..{rss_max} KiB"
    );
    for w in writers {
        w.join().expect("writer");
    }
    gw.wait_metric(
        "splicegate_tunnels_active",
        |v| v == 0.0,
        Duration::from_secs(3),
    );
    drop(clients);
}

#[test]
fn a_client_that_stops_reading_is_held_by_backpressure_then_idles_out() {
    stall(true);
}

#[test]
fn an_upstream_that_stops_reading_is_held_by_backpressure_then_idles_out() {
    stall(false);
}
