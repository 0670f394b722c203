//! Startup event, health endpoints, SIGTERM drain.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const UP: &str = "up.splicegate.test";

#[test]
fn started_event_reports_configuration_and_health_endpoints_answer() {
    let Some(gw) = Gateway::start(Config::new()) else {
        return;
    };
    let ev = gw.started_event().clone();
    assert_eq!(field_str(&ev, "level").as_deref(), Some("INFO"), "{ev}");
    assert_eq!(
        field_str(&ev, "engine").as_deref(),
        Some(test_engine().as_str()),
        "event 101 names the engine actually running: {ev}"
    );
    assert_eq!(field_u64(&ev, "workers"), Some(2), "{ev}");
    assert!(gw.addr().ip().is_loopback() && gw.addr().port() != 0);
    assert!(gw.metrics_addr().port() != 0);
    // The listener really is at the reported address.
    TcpStream::connect_timeout(&gw.addr(), Duration::from_secs(2)).expect("connect to listener");
    assert_eq!(gw.healthz().expect("GET /healthz"), 200);
    assert_eq!(gw.readyz().expect("GET /readyz"), 200);
}

#[test]
fn sigterm_drains_open_tunnel_then_exits_zero() {
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream(UP, up.port())
        .limit("drain_timeout", "20s");
    let Some(mut gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, b"before SIGTERM");
    assert_eq!(gw.readyz().unwrap(), 200);

    gw.sigterm();
    let t0 = Instant::now();

    // /readyz flips to 503 at once.
    let deadline = t0 + Duration::from_secs(1);
    let mut ready = gw.readyz();
    while !matches!(ready, Ok(503)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        ready = gw.readyz();
    }
    assert!(matches!(ready, Ok(503)), "/readyz during drain: {ready:?}");

    // The listener is closed: new connections are refused.
    let deadline = t0 + Duration::from_secs(2);
    let refused = loop {
        match TcpStream::connect_timeout(&gw.addr(), Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break true,
            _ if Instant::now() >= deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(
        refused,
        "the listener still accepts connections 2 s after SIGTERM"
    );

    // The open tunnel still carries data in both directions.
    echo_roundtrip(&mut s, b"during drain");
    echo_roundtrip(&mut s, &Pattern::bytes(1, 200_000));
    assert!(gw.is_running(), "the gateway must wait for the open tunnel");

    // Closing the tunnel lets the process finish.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closes(&mut s, Duration::from_secs(5));
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exits after its last tunnel closed");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after drain: {status:?}"
    );
    gw.expect_event(102, |_| true, Duration::from_secs(2), "stopped");
}

#[test]
fn drain_timeout_closes_leftover_tunnel_and_exits_zero() {
    let up = Upstream::hold();
    let cfg = Config::new()
        .upstream(UP, up.port())
        .limit("drain_timeout", "1s");
    let Some(mut gw) = Gateway::start(cfg) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    assert_eq!(up.wait_accepts(1, Duration::from_secs(5)), 1);
    gw.sigterm();
    let t0 = Instant::now();
    read_until_closed(&mut s, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "tunnel closed after {took:?}, before drain_timeout (1s)"
    );
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exits after drain_timeout");
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert!(t0.elapsed() < Duration::from_secs(6));
    gw.expect_event(102, |_| true, Duration::from_secs(2), "stopped");
    // Writing into the closed tunnel fails eventually (bounded attempts).
    let mut failed = false;
    for _ in 0..50 {
        if s.write_all(b"x").is_err() {
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(failed, "the tunnel must be closed after the drain timeout");
}

#[test]
fn sigterm_without_tunnels_exits_promptly() {
    let Some(mut gw) = Gateway::start(Config::new()) else {
        return;
    };
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(3))
        .expect("idle gateway exits within 3 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let ev = gw.expect_event(102, |_| true, Duration::from_secs(2), "stopped");
    assert_eq!(field_str(&ev, "level").as_deref(), Some("INFO"), "{ev}");
}

/// A worker that stops on an error (forced through the test-build-only
/// `SPLICEGATE_TEST_WORKER_EXIT`): event 400 with the cause, `/readyz` 503,
/// `splicegate_workers_alive` 1 of 2, and its listeners closed so that every new client is
/// served by the live worker (none waits in the dead worker's accept queue). A second later it
/// is restarted: 2 alive, `/readyz` 200.
#[test]
fn a_dead_worker_hands_its_clients_to_the_live_one_and_is_restarted() {
    let up = Upstream::echo();
    let cfg = Config::new().workers(2).upstream(UP, up.port());
    let Some(gw) = Gateway::start_wrapped(cfg, &["env", "SPLICEGATE_TEST_WORKER_EXIT=0"]) else {
        return;
    };
    let ev = gw.expect_event(
        400,
        |e| field_str(e, "reason").as_deref() == Some("worker_died"),
        Duration::from_secs(5),
        "worker died",
    );
    assert!(
        field_str(&ev, "error").is_some_and(|e| e.contains("SPLICEGATE_TEST_WORKER_EXIT")),
        "the event carries the cause: {ev}"
    );
    assert_eq!(gw.readyz().expect("readyz answers"), 503);
    assert_eq!(gw.metric_value("splicegate_workers_alive"), 1.0);
    // Every new client is served: with the dead worker's socket still open, about half would
    // wait forever in its accept queue.
    let target = format!("{UP}:{}", up.port());
    for i in 0..24u8 {
        let s = TcpStream::connect(gw.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut s = s;
        s.write_all(connect_head(&target).as_bytes()).unwrap();
        let r = read_response_head(&mut s)
            .unwrap_or_else(|e| panic!("client {i} got no answer (stranded?): {e}"));
        assert_eq!(r.status, 200, "client {i}");
        echo_roundtrip(&mut s, &[i; 1000]);
    }
    assert_eq!(gw.healthz().expect("healthz answers"), 200);
    // After a pause the worker is started again: both alive, /readyz 200, and clients served.
    gw.expect_event(
        100,
        |e| field_str(e, "message").is_some_and(|m| m.contains("worker restarted")),
        Duration::from_secs(10),
        "worker restarted",
    );
    assert_eq!(
        gw.wait_metric(
            "splicegate_workers_alive",
            |v| v == 2.0,
            Duration::from_secs(5)
        ),
        2.0
    );
    assert_eq!(gw.readyz().expect("readyz answers"), 200);
    for i in 0..24u8 {
        let mut s = open_tunnel(gw.addr(), &target);
        echo_roundtrip(&mut s, &[i; 1000]);
    }
}
