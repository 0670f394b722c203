//! Catalogue F1: every decision is one event, and the counters agree with the events.
//!
//! 10,000 mixed CONNECTs (allowed, refused for the host, refused for the port) from four client
//! addresses, with the default refusal rate limit. Then the gateway stops, so every open
//! refusal window is summarised, and the whole event log is read back:
//! - one "tunnel established" and one "tunnel closed" event per allowed CONNECT, the closed
//!   events carrying exactly the bytes each tunnel moved;
//! - per reason, logged refusal events plus the summaries' `suppressed` counts equal both the
//!   number of refusals sent and `splicegate_rejections_total`;
//! - `splicegate_connect_requests_total`, `splicegate_tunnel_duration_seconds_count` and
//!   `splicegate_bytes_total` equal what the events say.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const ALLOWED: &str = "allowed.decisions.test";
const TOTAL: usize = 10_000;
const THREADS: usize = 8;
const CLIENTS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// What CONNECT number `i` asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ask {
    /// An allowed tunnel that echoes `payload(i)` bytes.
    Tunnel,
    /// A host the allowlist does not name.
    Host,
    /// The allowed host on a port it does not allow.
    Port,
}

fn ask(i: usize) -> Ask {
    match i % 4 {
        0 | 1 => Ask::Tunnel,
        2 => Ask::Host,
        _ => Ask::Port,
    }
}

/// Bytes echoed through tunnel `i`: varied, so a miscount of one tunnel shows in the sum.
fn payload(i: usize) -> usize {
    1 + (i * 37) % 700
}

fn connect_from(gw: SocketAddr, source: &str) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&sockaddr(&format!("{source}:0")).into())
        .expect("bind a loopback source");
    sock.connect_timeout(&gw.into(), Duration::from_secs(5))
        .expect("connect to the gateway");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

/// Send CONNECT `i` and check its answer; for a tunnel, echo its payload and close.
fn one(gw: SocketAddr, up_port: u16, other_port: u16, i: usize) {
    let source = CLIENTS[(i / 4) % CLIENTS.len()];
    let target = match ask(i) {
        Ask::Tunnel => format!("{ALLOWED}:{up_port}"),
        Ask::Host => format!("refused-{}.decisions.test:{up_port}", i % 97),
        Ask::Port => format!("{ALLOWED}:{other_port}"),
    };
    let mut s = connect_from(gw, source);
    s.write_all(connect_head(&target).as_bytes())
        .expect("send CONNECT");
    let head = read_response_head(&mut s).unwrap_or_else(|e| panic!("{i} {target}: {e}"));
    match ask(i) {
        Ask::Tunnel => {
            assert_eq!(head.status, 200, "{i} {target}");
            let data = vec![b'a' + (i % 26) as u8; payload(i)];
            echo_roundtrip(&mut s, &data);
            s.shutdown(Shutdown::Write).expect("half-close");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(rest.is_empty(), "{i}: {} bytes after the echo", rest.len());
        }
        Ask::Host | Ask::Port => {
            assert_eq!(head.status, 403, "{i} {target}");
            assert_closes(&mut s, Duration::from_secs(5));
        }
    }
}

#[test]
fn every_decision_is_one_event_and_the_counters_agree() {
    let _heavy = heavy_lock();
    let up = Upstream::echo();
    // Something listens on the refused port too, so only the policy can refuse it.
    let other = Upstream::echo();
    let Some(mut gw) = Gateway::start(
        Config::new()
            .upstream(ALLOWED, up.port())
            .limit("max_connections", "4096"),
    ) else {
        return;
    };
    let addr = gw.addr();
    let (up_port, other_port) = (up.port(), other.port());
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut i = t;
                while i < TOTAL {
                    one(addr, up_port, other_port, i);
                    i += THREADS;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
    let took = started.elapsed();

    let tunnels = (0..TOTAL).filter(|&i| ask(i) == Ask::Tunnel).count();
    let bytes: u64 = (0..TOTAL)
        .filter(|&i| ask(i) == Ask::Tunnel)
        .map(|i| payload(i) as u64)
        .sum();
    let refused_host = (0..TOTAL).filter(|&i| ask(i) == Ask::Host).count();
    let refused_port = (0..TOTAL).filter(|&i| ask(i) == Ask::Port).count();

    // Every tunnel has closed (the clients read to the gateway's FIN) once the duration
    // histogram counts them all.
    let closed = gw.wait_metric(
        "splicegate_tunnel_duration_seconds_count",
        |v| v >= tunnels as f64,
        Duration::from_secs(30),
    );
    assert_eq!(closed, tunnels as f64, "tunnels closed");
    let requests = gw.metric_value("splicegate_connect_requests_total");
    let rejected_host = gw.metric_value("splicegate_rejections_total{reason=\"host_not_allowed\"}");
    let rejected_port = gw.metric_value("splicegate_rejections_total{reason=\"port_not_allowed\"}");
    let bytes_up = gw.metric_value("splicegate_bytes_total{direction=\"upstream\"}");
    let bytes_down = gw.metric_value("splicegate_bytes_total{direction=\"downstream\"}");
    assert_eq!(requests, TOTAL as f64, "CONNECTs counted");
    assert_eq!(rejected_host, refused_host as f64, "host refusals counted");
    assert_eq!(rejected_port, refused_port as f64, "port refusals counted");
    assert_eq!(bytes_up, bytes as f64, "bytes up counted");
    assert_eq!(bytes_down, bytes as f64, "bytes down counted");

    // Stop: every open refusal window is summarised before the last event.
    gw.sigterm();
    gw.expect_event(102, |_| true, Duration::from_secs(15), "stopped");
    assert!(gw.wait_exit(Duration::from_secs(15)).is_some(), "exits");

    let info = gw.events(100);
    let established: Vec<_> = info
        .iter()
        .filter(|e| field_str(e, "address").is_some() && field_u64(e, "bytes_up").is_none())
        .collect();
    let closed: Vec<_> = info
        .iter()
        .filter(|e| field_u64(e, "bytes_up").is_some())
        .collect();
    assert_eq!(
        established.len(),
        tunnels,
        "one established event per tunnel"
    );
    assert_eq!(closed.len(), tunnels, "one closed event per tunnel");
    let sum = |key: &str| -> u64 { closed.iter().filter_map(|e| field_u64(e, key)).sum() };
    assert_eq!(sum("bytes_up"), bytes, "closed events' bytes_up");
    assert_eq!(sum("bytes_down"), bytes, "closed events' bytes_down");
    // Each tunnel's own count is exact: its payload, echoed. Payload lengths are multiset-equal.
    let mut want: Vec<u64> = (0..TOTAL)
        .filter(|&i| ask(i) == Ask::Tunnel)
        .map(|i| payload(i) as u64)
        .collect();
    let mut got: Vec<u64> = closed
        .iter()
        .map(|e| field_u64(e, "bytes_up").unwrap_or(u64::MAX))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    assert!(
        got == want,
        "per-tunnel byte counts differ from the payloads sent"
    );

    // Refusals: per reason, events plus suppressed counts = refusals sent = the counter.
    let mut logged: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for e in gw.events(105) {
        let reason = field_str(&e, "reason").unwrap_or_default();
        let entry = logged.entry(reason).or_default();
        match field_u64(&e, "suppressed") {
            Some(n) => {
                entry.1 += n;
                entry.2 += 1;
            }
            None => entry.0 += 1,
        }
    }
    for (reason, sent) in [
        ("host_not_allowed", refused_host),
        ("port_not_allowed", refused_port),
    ] {
        let (events, suppressed, summaries) = logged.get(reason).copied().unwrap_or_default();
        assert_eq!(
            events + suppressed,
            sent as u64,
            "{reason}: {events} events + {suppressed} suppressed ({summaries} summaries)"
        );
        assert!(
            events < sent as u64 && summaries > 0,
            "{reason}: the rate limit suppressed nothing ({events} events), so this test \
             checks no summary"
        );
    }
    assert_eq!(
        logged.keys().map(String::as_str).collect::<Vec<_>>(),
        ["host_not_allowed", "port_not_allowed"],
        "no other refusal"
    );
    eprintln!(
        "FIGURE: {TOTAL} CONNECTs ({tunnels} tunnels, {refused_host} + {refused_port} refused) in \
         {:.1} s on {}; refusal events {:?} (logged, suppressed, summaries)",
        took.as_secs_f64(),
        test_engine(),
        logged
    );
}
