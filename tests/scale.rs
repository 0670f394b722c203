//! Heavy tests: 64 MiB byte-exact transfers (splice and copy data paths), 200 concurrent
//! tunnels, 1,000 idle tunnels (threads and file descriptors). They take `heavy_lock()`, so they
//! run one at a time within this test binary.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const UP: &str = "up.splicegate.test";
const BIG: u64 = 64 << 20;
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

fn cfg(port: u16, data_path: Option<&str>) -> Config {
    let c = Config::new()
        .upstream(UP, port)
        .limit("max_connections", "10000");
    match data_path {
        Some(dp) => c.data_path(dp),
        None => c,
    }
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

fn upload(data_path: Option<&str>) {
    let _heavy = heavy_lock();
    let (tx, rx) = mpsc::channel();
    let up = Upstream::sink(tx);
    let Some(gw) = Gateway::start(cfg(up.port(), data_path)) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    let t0 = Instant::now();
    let sent = send_pattern(&mut s, BIG, 11).expect("send 64 MiB into the tunnel");
    s.shutdown(Shutdown::Write).unwrap();
    let (n, got) = rx
        .recv_timeout(TRANSFER_TIMEOUT)
        .expect("upstream reached EOF");
    eprintln!(
        "upload {data_path:?}: {:.0} MiB/s",
        mib_per_s(BIG, t0.elapsed())
    );
    assert_eq!(n, BIG, "upstream byte count");
    assert_eq!(hex(&got), hex(&sent), "SHA-256 client->upstream");
    // The upstream closes after EOF; the client sees it.
    assert_closes(&mut s, Duration::from_secs(10));
}

fn download(data_path: Option<&str>) {
    let _heavy = heavy_lock();
    let (tx, rx) = mpsc::channel();
    let up = Upstream::send_then_close(BIG, 22, tx);
    let Some(gw) = Gateway::start(cfg(up.port(), data_path)) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    let t0 = Instant::now();
    let (n, got) = sink_hash(&mut s).expect("read 64 MiB from the tunnel up to EOF");
    eprintln!(
        "download {data_path:?}: {:.0} MiB/s",
        mib_per_s(BIG, t0.elapsed())
    );
    let sent = rx
        .recv_timeout(TRANSFER_TIMEOUT)
        .expect("upstream reports what it sent");
    assert_eq!(n, BIG, "client byte count");
    assert_eq!(hex(&got), hex(&sent), "SHA-256 upstream->client");
}

fn bidirectional(data_path: Option<&str>) {
    let _heavy = heavy_lock();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let up = Upstream::with_handler(move |s| {
        let mut w = s.try_clone().expect("clone upstream socket");
        let sender = thread::spawn(move || {
            let d = send_pattern(&mut w, BIG, 44);
            let _ = w.shutdown(Shutdown::Write);
            d
        });
        let mut r = &s;
        let recv = sink_hash(&mut r);
        let sent = sender.join().expect("upstream sender thread");
        let tx = tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = tx.send((
            recv.map_err(|e| e.to_string()),
            sent.map_err(|e| e.to_string()),
        ));
    });
    let Some(gw) = Gateway::start(cfg(up.port(), data_path)) else {
        return;
    };
    let s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    let mut w = s.try_clone().unwrap();
    let t0 = Instant::now();
    let writer = thread::spawn(move || {
        let d = send_pattern(&mut w, BIG, 33);
        let _ = w.shutdown(Shutdown::Write);
        d
    });
    let mut r = &s;
    let (n_down, got_down) = sink_hash(&mut r).expect("client reads to EOF");
    let sent_up = writer
        .join()
        .expect("client writer thread")
        .expect("client sends 64 MiB");
    let (recv_up, sent_down) = rx
        .recv_timeout(TRANSFER_TIMEOUT)
        .expect("upstream finished both directions");
    let (n_up, got_up) = recv_up.expect("upstream read");
    let sent_down = sent_down.expect("upstream write");
    eprintln!(
        "bidirectional {data_path:?}: {:.0} MiB/s total",
        mib_per_s(2 * BIG, t0.elapsed())
    );
    assert_eq!(n_up, BIG, "bytes client->upstream");
    assert_eq!(hex(&got_up), hex(&sent_up), "SHA-256 client->upstream");
    assert_eq!(n_down, BIG, "bytes upstream->client");
    assert_eq!(hex(&got_down), hex(&sent_down), "SHA-256 upstream->client");
}

#[test]
fn upload_64mib_byte_exact() {
    upload(None);
}

#[test]
fn download_64mib_byte_exact() {
    download(None);
}

#[test]
fn bidirectional_64mib_byte_exact() {
    bidirectional(None);
}

#[test]
fn upload_64mib_byte_exact_copy_path() {
    upload(Some("copy"));
}

#[test]
fn download_64mib_byte_exact_copy_path() {
    download(Some("copy"));
}

#[test]
fn bidirectional_64mib_byte_exact_copy_path() {
    bidirectional(Some("copy"));
}

#[test]
fn upload_64mib_byte_exact_splice_path() {
    upload(Some("splice"));
}

/// Wait (bounded) until `counter` reaches `n`.
fn wait_count(counter: &AtomicUsize, n: usize, deadline: Instant) -> bool {
    while counter.load(Ordering::SeqCst) < n {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn two_hundred_concurrent_tunnels_byte_exact() {
    const TUNNELS: usize = 200;
    const EACH: u64 = 256 * 1024;
    let _heavy = heavy_lock();
    let up = Upstream::echo();
    let Some(gw) = Gateway::start(cfg(up.port(), None)) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    let fds_before = gw.fd_count();
    let opened = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let gate_deadline = Instant::now() + Duration::from_secs(60);
    let t0 = Instant::now();
    let results: Vec<Result<(), String>> = thread::scope(|sc| {
        let handles: Vec<_> = (0..TUNNELS)
            .map(|i| {
                let (opened, failed, target, gw_addr) = (&opened, &failed, &target, gw.addr());
                sc.spawn(move || -> Result<(), String> {
                    let s = match std::panic::catch_unwind(|| open_tunnel(gw_addr, target)) {
                        Ok(s) => s,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return Err(format!("tunnel {i}: CONNECT failed"));
                        }
                    };
                    opened.fetch_add(1, Ordering::SeqCst);
                    // All tunnels are open at the same time before any data moves.
                    let all = TUNNELS - failed.load(Ordering::SeqCst);
                    if !wait_count(opened, all, gate_deadline) {
                        return Err(format!("tunnel {i}: not all tunnels opened in time"));
                    }
                    let mut w = s.try_clone().map_err(|e| e.to_string())?;
                    let writer = thread::spawn(move || {
                        let d = send_pattern(&mut w, EACH, 1000 + i as u64);
                        let _ = w.shutdown(Shutdown::Write);
                        d
                    });
                    let mut r = &s;
                    let (n, got) =
                        sink_hash(&mut r).map_err(|e| format!("tunnel {i}: read: {e}"))?;
                    let sent = writer
                        .join()
                        .map_err(|_| format!("tunnel {i}: writer panicked"))?
                        .map_err(|e| format!("tunnel {i}: write: {e}"))?;
                    if n != EACH || got != sent {
                        return Err(format!(
                            "tunnel {i}: echoed {n} bytes (expected {EACH}), sha {} vs {}",
                            hex(&got),
                            hex(&sent)
                        ));
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    eprintln!(
        "{TUNNELS} tunnels x {EACH} bytes both ways in {:?}",
        t0.elapsed()
    );
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} tunnel(s) failed: {errors:#?}",
        errors.len()
    );
    assert_eq!(up.accepts(), TUNNELS);
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == 0.0,
        Duration::from_secs(10),
    );
    assert_eq!(active, 0.0, "all tunnels closed");
    // No descriptor leak once everything is closed (pooled pipes may stay: small slack).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_after = gw.fd_count();
    while fds_after > fds_before + 64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        fds_after = gw.fd_count();
    }
    assert!(
        fds_after <= fds_before + 64,
        "gateway fds: {fds_before} before, {fds_after} after all tunnels closed"
    );
}

#[test]
fn thousand_idle_tunnels_add_no_threads_and_two_fds_each() {
    const TUNNELS: usize = 1000;
    const WARMUP: usize = 10;
    let _heavy = heavy_lock();
    let limit = nofile_limit();
    if limit < 4 * TUNNELS as u64 {
        eprintln!(
            "SKIP: RLIMIT_NOFILE is {limit}, need at least {}",
            4 * TUNNELS
        );
        return;
    }
    let up = Upstream::hold();
    let Some(gw) = Gateway::start(cfg(up.port(), None)) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());

    // Warm up: whatever the gateway creates lazily on its first tunnels exists before the
    // baseline is taken.
    let warm: Vec<TcpStream> = (0..WARMUP)
        .map(|_| open_tunnel(gw.addr(), &target))
        .collect();
    assert_eq!(up.wait_accepts(WARMUP, Duration::from_secs(10)), WARMUP);
    drop(warm);
    up.close_held();
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == 0.0,
        Duration::from_secs(10),
    );
    assert_eq!(active, 0.0, "warm-up tunnels closed");

    let tasks_before = gw.task_count();
    let fds_before = gw.fd_count();
    let t0 = Instant::now();
    let tunnels: Vec<TcpStream> = (0..TUNNELS)
        .map(|_| open_tunnel(gw.addr(), &target))
        .collect();
    assert_eq!(
        up.wait_accepts(WARMUP + TUNNELS, Duration::from_secs(20)),
        WARMUP + TUNNELS
    );
    eprintln!("opened {TUNNELS} tunnels in {:?}", t0.elapsed());
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == TUNNELS as f64,
        Duration::from_secs(10),
    );
    assert_eq!(active, TUNNELS as f64);
    let tasks_after = gw.task_count();
    let fds_after = gw.fd_count();
    eprintln!(
        "gateway threads {tasks_before} -> {tasks_after}, fds {fds_before} -> {fds_after} \
         for {TUNNELS} idle tunnels"
    );
    assert!(
        tasks_after <= tasks_before,
        "{TUNNELS} idle tunnels added kernel threads: {tasks_before} -> {tasks_after}"
    );
    assert!(
        fds_after <= fds_before + 2 * TUNNELS + 16,
        "{TUNNELS} idle tunnels took {} fds (> 2 per tunnel + 16)",
        fds_after.saturating_sub(fds_before)
    );
    assert!(
        fds_after + 16 >= fds_before + 2 * TUNNELS,
        "each tunnel holds a client and an upstream socket (the count is a sanity check with \
         slack for transient fds such as a metrics scrape): {fds_before} -> {fds_after}"
    );

    drop(tunnels);
    up.close_held();
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == 0.0,
        Duration::from_secs(15),
    );
    assert_eq!(active, 0.0, "all idle tunnels closed");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_end = gw.fd_count();
    while fds_end > fds_before + 16 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        fds_end = gw.fd_count();
    }
    assert!(
        fds_end <= fds_before + 16,
        "fd leak: {fds_before} before, {fds_end} after closing all tunnels"
    );
}

#[test]
fn tunnel_survives_many_small_writes() {
    // Many tiny segments in both directions (stress for readiness handling, not throughput).
    let _heavy = heavy_lock();
    let up = Upstream::echo();
    let Some(gw) = Gateway::start(cfg(up.port(), None)) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    s.set_nodelay(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..5000u64 {
        assert!(Instant::now() < deadline, "5000 round trips took over 30 s");
        let b = [(i % 251) as u8; 3];
        s.write_all(&b).unwrap();
        let mut back = [0u8; 3];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, b, "round trip {i}");
    }
}
