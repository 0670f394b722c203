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
    assert!(
        !text.contains("splicegate.test"),
        "host names must never become labels:\n{text}"
    );
    // The gauge may trail the close the client saw by a moment.
    let active = gw.wait_metric(
        "splicegate_active_client_connections",
        |v| v == 0.0,
        Duration::from_secs(3),
    );
    assert_eq!(active, 0.0, "refused connections are no longer active");
}
