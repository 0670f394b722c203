//! The metrics endpoint: counters and gauges after real tunnels.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;
use support::*;

const UP: &str = "up.splicegate.test";
const N: usize = 5;
const UP_BYTES: usize = 1000;
const DOWN_BYTES: usize = 2000;

#[test]
fn counters_and_gauges_follow_tunnels() {
    let up = Upstream::with_handler(|mut s| {
        let mut buf = vec![0u8; UP_BYTES];
        if s.read_exact(&mut buf).is_ok() {
            let _ = s.write_all(&Pattern::bytes(2, DOWN_BYTES));
        }
        let _ = s.read_to_end(&mut Vec::new());
    });
    let Some(gw) = Gateway::start(Config::new().upstream(UP, up.port())) else {
        return;
    };
    assert_eq!(gw.healthz().unwrap(), 200);
    assert_eq!(gw.metric_value("splicegate_active_client_connections"), 0.0);
    let before = gw.metric_value("splicegate_connect_requests_total");

    let target = format!("{UP}:{}", up.port());
    let mut tunnels: Vec<_> = (0..N).map(|_| open_tunnel(gw.addr(), &target)).collect();
    for s in &mut tunnels {
        s.write_all(&Pattern::bytes(1, UP_BYTES)).unwrap();
        let mut back = vec![0u8; DOWN_BYTES];
        s.read_exact(&mut back).unwrap();
    }
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == N as f64,
        Duration::from_secs(3),
    );
    assert_eq!(active, N as f64, "{}", gw.metrics());
    let clients = gw.metric_value("splicegate_connected_clients");
    assert_eq!(clients, 1.0, "one distinct client address (127.0.0.1)");

    for mut s in tunnels {
        s.shutdown(Shutdown::Write).unwrap();
        assert_closes(&mut s, Duration::from_secs(5));
    }
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == 0.0,
        Duration::from_secs(5),
    );
    assert_eq!(
        active,
        0.0,
        "active connections back to 0:\n{}",
        gw.metrics()
    );
    let clients = gw.wait_metric(
        "splicegate_connected_clients",
        |v| v == 0.0,
        Duration::from_secs(5),
    );
    assert_eq!(clients, 0.0);

    let text = gw.metrics();
    let m = |q: &str| metric_from_text(&text, q);
    assert!(
        m("splicegate_connect_requests_total") - before >= N as f64,
        "connect requests:\n{text}"
    );
    let up_total = m("splicegate_bytes_total{direction=\"upstream\"}");
    let down_total = m("splicegate_bytes_total{direction=\"downstream\"}");
    assert!(
        up_total >= (N * UP_BYTES) as f64,
        "upstream bytes {up_total}\n{text}"
    );
    assert!(
        down_total >= (N * DOWN_BYTES) as f64,
        "downstream bytes {down_total}\n{text}"
    );
    assert!(
        m("splicegate_tunnel_duration_seconds_count") >= N as f64,
        "{text}"
    );
    assert!(
        m("splicegate_upstream_connect_seconds_count") >= N as f64,
        "{text}"
    );
    assert!(
        m("splicegate_tunnel_duration_seconds_bucket{le=\"+Inf\"}") >= N as f64,
        "histogram +Inf bucket\n{text}"
    );
    assert_eq!(gw.readyz().unwrap(), 200);
}

#[test]
fn refusals_and_errors_are_labelled() {
    let closed = ClosedPort::new();
    let port = closed.port();
    let cfg = Config::new().upstream("refused.splicegate.test", port);
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    // Every reason/kind is exposed with a fixed label set (no host names as labels).
    let text = gw.metrics();
    for reason in [
        "host_not_allowed",
        "port_not_allowed",
        "private_destination",
        "not_connect",
        "malformed",
        "header_too_large",
        "header_timeout",
        "over_capacity",
    ] {
        let line = format!("splicegate_rejections_total{{reason=\"{reason}\"}}");
        assert!(
            text.contains(&line),
            "{line} is exposed from the start:\n{text}"
        );
    }
    expect_refusal(
        &gw,
        connect_head(&format!("other.splicegate.test:{port}")).as_bytes(),
        403,
    );
    expect_refusal(
        &gw,
        connect_head(&format!("refused.splicegate.test:{port}")).as_bytes(),
        502,
    );
    expect_rejection_metric(&gw, "host_not_allowed", 1.0);
    expect_error_metric(&gw, "connect_refused", 1.0);
    let text = gw.metrics();
    // A name a client asked for never becomes a label; the only names are the configured
    // allowlist entries, as the `rule` label of the per-rule series.
    assert!(
        !text.contains("other.splicegate.test"),
        "requested host names must never become labels:\n{text}"
    );
    for line in text.lines().filter(|l| l.contains("splicegate.test")) {
        assert!(
            line.starts_with("splicegate_tunnels_total{rule=\"refused.splicegate.test\"}")
                || line
                    .starts_with("splicegate_rule_bytes_total{rule=\"refused.splicegate.test\","),
            "a configured entry appears only as a rule label: {line}"
        );
    }
    // The gauge may trail the close the client saw by a moment.
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == 0.0,
        Duration::from_secs(3),
    );
    assert_eq!(active, 0.0, "refused connections are no longer active");
}

/// `limits.metrics_max_connections` (16 by default): a 17th connection while 16 are open is
/// answered 503 and closed at once, not served and not left waiting; once they close, the
/// endpoint serves again.
#[test]
fn the_metrics_endpoint_serves_at_most_16_connections_at_once() {
    let Some(gw) = Gateway::start(Config::new()) else {
        return;
    };
    // 16 silent clients: each holds a place until it closes (or the 5 s request timeout).
    let held: Vec<std::net::TcpStream> = (0..16)
        .map(|_| {
            std::net::TcpStream::connect_timeout(&gw.metrics_addr(), Duration::from_secs(2))
                .expect("connect to the metrics endpoint")
        })
        .collect();
    let mut extra =
        std::net::TcpStream::connect_timeout(&gw.metrics_addr(), Duration::from_secs(2))
            .expect("the 17th connect completes in the kernel");
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let t0 = std::time::Instant::now();
    let (bytes, _) = read_until_closed(&mut extra, Duration::from_secs(3));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 503 ") && text.contains("too many connections"),
        "the 17th connection must be refused with 503, got {text:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the refusal must not wait for a place: {:?}",
        t0.elapsed()
    );
    drop(held);
    // The places come back as the held connections close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match gw.metrics_get("/healthz") {
            Ok((200, _)) => {
                last = None;
                break;
            }
            other => last = Some(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last, None, "the endpoint serves again after the 16 closed");
    assert!(gw.metrics().contains("splicegate_"));
}

/// The cap is a setting: with `limits.metrics_max_connections: 2`, the third is refused.
#[test]
fn the_metrics_connection_cap_is_configurable() {
    let Some(gw) = Gateway::start(Config::new().limit("metrics_max_connections", "2")) else {
        return;
    };
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            std::net::TcpStream::connect_timeout(&gw.metrics_addr(), Duration::from_secs(2))
                .expect("connect to the metrics endpoint")
        })
        .collect();
    let (code, body) = gw.metrics_get("/readyz").expect("an answer, not a wait");
    assert_eq!((code, body.as_str()), (503, "too many connections\n"));
    drop(held);
}
