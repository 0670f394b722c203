//! The probe port (`health_listen`) and `limits.drain_grace`, against the real binary.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

const UP: &str = "up.splicegate.test";

/// The bound probe address, from event 101.
fn health_addr(gw: &Gateway) -> SocketAddr {
    let v = field_str(gw.started_event(), "health_listen").expect("event 101 has health_listen");
    v.parse()
        .unwrap_or_else(|e| panic!("health_listen {v:?} in event 101: {e}"))
}

/// Answers 200 through a tunnel to the echo upstream.
fn tunnel_works(addr: SocketAddr, target: &str, byte: u8) {
    let mut s = open_tunnel(addr, target);
    echo_roundtrip(&mut s, &[byte; 512]);
}

#[test]
fn the_probe_port_serves_only_healthz_and_readyz() {
    let cfg = Config::new().raw("health_listen: \"127.0.0.1:0\"\n");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let probe = health_addr(&gw);
    assert_ne!(probe, gw.metrics_addr());
    assert_eq!(http_get(probe, "/healthz").unwrap().0, 200);
    let (code, body) = http_get(probe, "/readyz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    for path in ["/metrics", "/live", "/ready", "/", "/readyz/x"] {
        assert_eq!(http_get(probe, path).unwrap().0, 404, "{path}");
    }
    // The metrics port still serves /metrics.
    assert_eq!(http_get(gw.metrics_addr(), "/metrics").unwrap().0, 200);
}

#[test]
fn the_probe_port_may_listen_beyond_loopback_without_metrics_public() {
    // A wildcard probe address is accepted by the parser (metrics_listen would need
    // metrics_public); it is checked with check-config so the test binds nothing public.
    let dir = TempDir::new("probe-cfg");
    let ok = dir.write("ok.yaml", "health_listen: \"0.0.0.0:9465\"\n");
    let out = run_cli(
        &["check-config", ok.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("health_listen: 0.0.0.0:9465"));
    let clash = dir.write(
        "clash.yaml",
        "listen: [\"127.0.0.1:9470\"]\nhealth_listen: \"127.0.0.1:9470\"\n",
    );
    let out = run_cli(
        &["check-config", clash.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("health_listen"));
}

#[test]
fn the_probe_port_reports_a_dead_worker() {
    let cfg = Config::new()
        .workers(2)
        .limit("worker_restart_delay", "1h")
        .raw("health_listen: \"127.0.0.1:0\"\n");
    let Some(gw) = Gateway::start_wrapped(cfg, &["env", "SPLICEGATE_TEST_WORKER_EXIT=1"]) else {
        return;
    };
    gw.expect_event(
        400,
        |e| field_str(e, "reason").as_deref() == Some("worker_died"),
        Duration::from_secs(5),
        "worker died",
    );
    let (code, body) = http_get(health_addr(&gw), "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("1 of 2 workers alive"), "{body}");
    assert_eq!(http_get(health_addr(&gw), "/healthz").unwrap().0, 200);
}

#[test]
fn a_reload_moves_the_probe_port() {
    let cfg = Config::new();
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    assert_eq!(
        field_str(gw.started_event(), "health_listen").as_deref(),
        Some("disabled")
    );
    let port = free_port();
    let mut text = gw.config.render();
    text.push_str(&format!("health_listen: \"127.0.0.1:{port}\"\n"));
    std::fs::write(gw.config_path(), text).unwrap();
    gw.signal(libc::SIGHUP);
    let ev = gw.expect_event(
        100,
        |e| field_str(e, "changes").is_some_and(|c| c.contains("health_listen")),
        Duration::from_secs(10),
        "reload with health_listen",
    );
    assert_eq!(
        field_str(&ev, "health_listen"),
        Some(format!("127.0.0.1:{port}"))
    );
    let probe: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(probe, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(probe, "/metrics").unwrap().0, 404);
}

/// `limits.drain_grace: 2s`: right after SIGTERM both `/readyz` answer 503, a new CONNECT
/// during the grace is still served, and after the grace new connections are refused.
#[test]
fn drain_grace_keeps_accepting_while_readyz_says_draining() {
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream(UP, up.port())
        .limit("drain_grace", "2s")
        .limit("drain_timeout", "5s")
        .raw("health_listen: \"127.0.0.1:0\"\n");
    let Some(mut gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    let probe = health_addr(&gw);
    tunnel_works(gw.addr(), &target, 1);
    assert_eq!(http_get(probe, "/readyz").unwrap().0, 200);

    let sent = Instant::now();
    gw.sigterm();
    // 503 at once on both ports.
    let deadline = sent + Duration::from_millis(1000);
    let mut both = false;
    while Instant::now() < deadline {
        let a = http_get(probe, "/readyz").map(|r| r.0).ok();
        let b = gw.readyz().ok();
        if a == Some(503) && b == Some(503) {
            both = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        both,
        "/readyz did not turn 503 on both ports right after SIGTERM"
    );
    let (_, body) = http_get(probe, "/readyz").unwrap();
    assert_eq!(body, "draining\n");
    // Within the grace: a new client is still served.
    assert!(
        sent.elapsed() < Duration::from_millis(1800),
        "too slow to test the grace"
    );
    tunnel_works(gw.addr(), &target, 2);
    // After the grace: refused.
    let deadline = sent + Duration::from_secs(6);
    let mut refused = false;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&gw.addr(), Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(refused, "new connections are refused after the grace");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "refused before the grace ended ({:?})",
        sent.elapsed()
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
}

/// Without a grace (the default), listeners close at SIGTERM as before.
#[test]
fn without_drain_grace_listeners_close_at_once() {
    let up = Upstream::echo();
    let cfg = Config::new().upstream(UP, up.port());
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    // An open tunnel keeps the process draining.
    let mut held = open_tunnel(gw.addr(), &target);
    gw.sigterm();
    gw.expect_event(
        100,
        |e| field_str(e, "message").is_some_and(|m| m.contains("listeners closed")),
        Duration::from_secs(5),
        "drain started",
    );
    let mut refused = false;
    for _ in 0..50 {
        if let Err(e) = TcpStream::connect_timeout(&gw.addr(), Duration::from_millis(500)) {
            refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "refused right after SIGTERM");
    let _ = held.write_all(b"x");
}

/// Under systemd, `STOPPING=1` goes out at the SIGTERM, before the grace ends.
#[test]
fn stopping_is_notified_at_the_signal_not_after_the_grace() {
    let dir = TempDir::new("grace-notify");
    let notify = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let cfg = Config::new().limit("drain_grace", "3s");
    let env = format!("NOTIFY_SOCKET={}", notify.display());
    let Some(mut gw) = Gateway::start_wrapped(cfg, &["env", &env]) else {
        return;
    };
    let sent = Instant::now();
    gw.sigterm();
    let mut buf = [0u8; 4096];
    let mut stopping = None;
    while stopping.is_none() && sent.elapsed() < Duration::from_secs(5) {
        if let Ok(n) = rx.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "STOPPING=1")
            {
                stopping = Some(sent.elapsed());
            }
        }
    }
    let at = stopping.expect("STOPPING=1 sent");
    assert!(
        at < Duration::from_secs(2),
        "STOPPING=1 after {at:?}: not at the signal"
    );
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
}

/// With `relay_proxy.health_check`, an unreachable relay makes the probe port unready too.
#[test]
fn the_probe_port_reports_an_unreachable_relay() {
    let closed = ClosedPort::new();
    let cfg = Config::new().raw(&format!(
        "health_listen: \"127.0.0.1:0\"\nrelay_proxy:\n  address: \"http://127.0.0.1:{}\"\n  health_check: true\n",
        closed.port()
    ));
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let (code, body) = http_get(health_addr(&gw), "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("relay proxy"), "{body}");
    assert_eq!(http_get(health_addr(&gw), "/healthz").unwrap().0, 200);
}
