//! Every refusal: status, connection closed afterwards, log event, metric, upstream untouched.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};
use support::*;

const ALLOWED: &str = "allowed.splicegate.test";

/// An echo upstream plus a gateway that allows `ALLOWED` and `*.wild.test` (with `wild.test`,
/// `a.wild.test` and `evilwild.test` all statically mapped to 127.0.0.1) on the upstream's port.
fn setup(extra: impl FnOnce(Config) -> Config) -> Option<(Upstream, Gateway)> {
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream(ALLOWED, up.port())
        .allow_host("*.wild.test")
        .map_host("a.wild.test", "127.0.0.1")
        .map_host("wild.test", "127.0.0.1")
        .map_host("evilwild.test", "127.0.0.1");
    let gw = Gateway::start(extra(cfg))?;
    Some((up, gw))
}

fn assert_target(ev: &serde_json::Value, host: &str) {
    let target = field_str(ev, "target").unwrap_or_else(|| panic!("no `target` in {ev}"));
    assert!(
        target.contains(host),
        "`target` should name {host:?}, got {target:?}"
    );
}

#[test]
fn host_not_in_allowlist_is_403() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    let target = format!("notlisted.splicegate.test:{}", up.port());
    expect_refusal(&gw, connect_head(&target).as_bytes(), 403);
    let ev = expect_refusal_event(&gw, 105, 403, Some("host_not_allowed"));
    assert_client_field(&ev);
    assert_target(&ev, "notlisted.splicegate.test");
    expect_rejection_metric(&gw, "host_not_allowed", 1.0);
    up.assert_untouched("host not allowed");
}

#[test]
fn ip_literal_not_in_allowlist_is_403() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("127.0.0.1:{}", up.port())).as_bytes(),
        403,
    );
    expect_refusal_event(&gw, 105, 403, Some("host_not_allowed"));
    up.assert_untouched("IP literal not allowed");
}

#[test]
fn port_not_allowed_is_403() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    // Something listens on the other port, so only the policy can stop the connection.
    let other = Upstream::echo();
    let target = format!("{ALLOWED}:{}", other.port());
    expect_refusal(&gw, connect_head(&target).as_bytes(), 403);
    let ev = expect_refusal_event(&gw, 105, 403, Some("port_not_allowed"));
    assert_target(&ev, ALLOWED);
    expect_rejection_metric(&gw, "port_not_allowed", 1.0);
    other.assert_untouched("port not allowed");
    up.assert_untouched("port not allowed");
}

#[test]
fn wildcard_matches_subdomains_only() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    let mut ok = open_tunnel(gw.addr(), &format!("a.wild.test:{}", up.port()));
    echo_roundtrip(&mut ok, b"wildcard ok");
    assert_eq!(up.wait_accepts(1, Duration::from_secs(5)), 1);

    for host in ["wild.test", "evilwild.test"] {
        expect_refusal(
            &gw,
            connect_head(&format!("{host}:{}", up.port())).as_bytes(),
            403,
        );
    }
    // Both misses are logged as host_not_allowed (logging may trail the response).
    for host in ["wild.test", "evilwild.test"] {
        let ev = gw.wait_event(
            105,
            |e| {
                field_str(e, "reason").as_deref() == Some("host_not_allowed")
                    && field_str(e, "target")
                        .is_some_and(|t| t.starts_with(host) || t.starts_with(&format!("\"{host}")))
            },
            Duration::from_secs(5),
        );
        assert!(
            ev.is_some(),
            "event 105 host_not_allowed for {host}; log:\n{}",
            gw.log_dump()
        );
    }
    expect_rejection_metric(&gw, "host_not_allowed", 2.0);
    // Only the one allowed tunnel ever reached the upstream.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.accepts(),
        1,
        "refused wildcard misses must not reach the upstream"
    );
}

#[test]
fn get_origin_form_is_405_with_allow_connect() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    let r = expect_refusal(
        &gw,
        format!("GET / HTTP/1.1\r\nHost: {ALLOWED}:{}\r\n\r\n", up.port()).as_bytes(),
        405,
    );
    let allow = r
        .header("allow")
        .unwrap_or_else(|| panic!("405 without an Allow header: {:?}", r.head));
    assert!(allow.contains("CONNECT"), "Allow: {allow}");
    expect_refusal_event(&gw, 104, 405, None);
    expect_rejection_metric(&gw, "not_connect", 1.0);
    up.assert_untouched("GET origin-form");
}

#[test]
fn get_absolute_form_is_405_and_not_proxied() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    let raw = format!(
        "GET http://{ALLOWED}:{port}/ HTTP/1.1\r\nHost: {ALLOWED}:{port}\r\n\r\n",
        port = up.port()
    );
    let r = expect_refusal(&gw, raw.as_bytes(), 405);
    assert!(
        r.header("allow").is_some_and(|a| a.contains("CONNECT")),
        "405 must carry Allow: CONNECT: {:?}",
        r.head
    );
    let ev = expect_refusal_event(&gw, 104, 405, None);
    assert_client_field(&ev);
    up.assert_untouched("GET absolute-form");
}

#[test]
fn malformed_connect_requests_are_400() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    let p = up.port();
    let cases: Vec<(&str, String)> = vec![
        (
            "no port",
            format!("CONNECT {ALLOWED} HTTP/1.1\r\nHost: {ALLOWED}\r\n\r\n"),
        ),
        (
            "port out of range",
            format!("CONNECT {ALLOWED}:99999 HTTP/1.1\r\nHost: {ALLOWED}:99999\r\n\r\n"),
        ),
        (
            "non-numeric port",
            format!("CONNECT {ALLOWED}:https HTTP/1.1\r\nHost: {ALLOWED}:https\r\n\r\n"),
        ),
        (
            "numeric host",
            format!("CONNECT 2130706433:{p} HTTP/1.1\r\nHost: 2130706433:{p}\r\n\r\n"),
        ),
        (
            "Content-Length on CONNECT",
            format!(
                "CONNECT {ALLOWED}:{p} HTTP/1.1\r\nHost: {ALLOWED}:{p}\r\nContent-Length: 5\r\n\r\nhello"
            ),
        ),
        ("garbage", "\u{1}\u{2}\u{3} not http at all\r\n\r\n".to_string()),
    ];
    for (what, raw) in &cases {
        let (mut s, r) = request(gw.addr(), raw.as_bytes());
        let r = r.unwrap_or_else(|e| panic!("{what}: no response head: {e}"));
        assert_eq!(r.status, 400, "{what}: head {:?}", r.head);
        assert_closes(&mut s, Duration::from_secs(5));
    }
    let ev = expect_refusal_event_any(&gw, 400, "malformed");
    assert_eq!(event_id(&ev), Some(104), "400 refusals are event 104: {ev}");
    expect_rejection_metric(&gw, "malformed", cases.len() as f64);
    up.assert_untouched("malformed requests");
}

#[test]
fn duplicate_proxy_authorization_is_400() {
    let Some((up, gw)) = setup(|c| c) else {
        return;
    };
    let target = format!("{ALLOWED}:{}", up.port());
    let raw = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\
         Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\
         proxy-authorization: Basic bWFsbG9yeTp4\r\n\r\n"
    );
    expect_refusal(&gw, raw.as_bytes(), 400);
    let ev = expect_refusal_event(&gw, 104, 400, Some("malformed"));
    assert_eq!(
        field_str(&ev, "detail").as_deref(),
        Some("duplicate_proxy_authorization"),
        "{ev}"
    );
    up.assert_untouched("duplicate Proxy-Authorization");
    // One header is fine (no client_auth here, so it is simply not needed).
    let one = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\
         Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"
    );
    let (mut s, r) = request(gw.addr(), one.as_bytes());
    assert_eq!(r.expect("an answer").status, 200);
    echo_roundtrip(&mut s, b"one header");
}

#[test]
fn oversized_head_is_431_and_head_within_limit_is_accepted() {
    let Some((up, gw)) = setup(|c| c.limit("max_header_bytes", "1024")) else {
        return;
    };
    let target = format!("{ALLOWED}:{}", up.port());
    // A head of about 700 bytes: within the limit.
    let small = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(600)
    );
    let (mut s, r) = request(gw.addr(), small.as_bytes());
    let r = r.expect("response to a head within max_header_bytes");
    assert_eq!(
        r.status,
        200,
        "a {}-byte head is within 1024: {:?}",
        small.len(),
        r.head
    );
    echo_roundtrip(&mut s, b"ok");
    drop(s);

    let big = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2000)
    );
    expect_refusal(&gw, big.as_bytes(), 431);
    let ev = expect_refusal_event_any(&gw, 431, "header_too_large");
    eprintln!("431 refusals are logged with event_id {:?}", event_id(&ev));
    expect_rejection_metric(&gw, "header_too_large", 1.0);
    assert_eq!(
        up.accepts(),
        1,
        "only the accepted tunnel reached the upstream"
    );
}

#[test]
fn incomplete_head_is_408_after_header_timeout() {
    let Some((up, gw)) = setup(|c| c.limit("header_timeout", "1s")) else {
        return;
    };
    let partial = format!("CONNECT {ALLOWED}:{} HTTP/1.1\r\nHost: allo", up.port());
    let t0 = Instant::now();
    let (mut s, r) = request(gw.addr(), partial.as_bytes());
    let took = t0.elapsed();
    let r = r.expect("a 408 response head");
    assert_eq!(r.status, 408, "head {:?}", r.head);
    assert!(
        took >= Duration::from_millis(800),
        "408 after {took:?} < header_timeout"
    );
    assert!(took <= Duration::from_secs(4), "408 only after {took:?}");
    assert_closes(&mut s, Duration::from_secs(5));
    let ev = expect_refusal_event_any(&gw, 408, "header_timeout");
    eprintln!("408 refusals are logged with event_id {:?}", event_id(&ev));
    expect_rejection_metric(&gw, "header_timeout", 1.0);
    up.assert_untouched("header timeout");
}

#[test]
fn slowloris_head_does_not_extend_header_timeout() {
    let Some((up, gw)) = setup(|c| c.limit("header_timeout", "1s")) else {
        return;
    };
    let head = connect_head(&format!("{ALLOWED}:{}", up.port()));
    let mut s = connect(gw.addr());
    let t0 = Instant::now();
    // One byte every 100 ms would need several seconds for the whole head.
    let mut write_failed = false;
    for b in head.as_bytes().iter().take(40) {
        if s.write_all(&[*b]).is_err() {
            write_failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t0.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = read_response_head(&mut s);
    let took = t0.elapsed();
    match r {
        Ok(r) => assert_eq!(r.status, 408, "head {:?}", r.head),
        Err(e) => panic!("no 408 for a trickled head (write failed: {write_failed}): {e}"),
    }
    assert!(took <= Duration::from_secs(4), "408 only after {took:?}");
    up.assert_untouched("slowloris");
}

#[test]
fn upstream_refusing_connection_is_502() {
    let closed = ClosedPort::new(); // connections to it are refused
    let port = closed.port();
    let cfg = Config::new().upstream("refused.splicegate.test", port);
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("refused.splicegate.test:{port}")).as_bytes(),
        502,
    );
    let ev = expect_refusal_event(&gw, 403, 502, Some("connect_refused"));
    assert_target(&ev, "refused.splicegate.test");
    assert_client_field(&ev);
    expect_error_metric(&gw, "connect_refused", 1.0);
}

#[test]
fn upstream_connect_timeout_is_504() {
    let Some(hole) = BlackholeListener::new() else {
        eprintln!("SKIP: could not build a listener with a full accept queue");
        return;
    };
    let cfg = Config::new()
        .upstream("slow.splicegate.test", hole.addr().port())
        .limit("connect_timeout", "1s");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let t0 = Instant::now();
    let r = expect_refusal(
        &gw,
        connect_head(&format!("slow.splicegate.test:{}", hole.addr().port())).as_bytes(),
        504,
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "504 after {took:?} < connect_timeout: {r:?}"
    );
    assert!(took <= Duration::from_secs(5), "504 only after {took:?}");
    let ev = expect_refusal_event(&gw, 403, 504, Some("connect_timeout"));
    assert_target(&ev, "slow.splicegate.test");
    expect_error_metric(&gw, "connect_timeout", 1.0);
}

#[test]
fn over_max_connections_is_503_and_capacity_returns() {
    // Echo: when a client closes, the upstream closes too, so the whole tunnel goes away.
    let up = Upstream::echo();
    let cfg = Config::new()
        .workers(1)
        .upstream(ALLOWED, up.port())
        .limit("max_connections", "2");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{ALLOWED}:{}", up.port());
    let t1 = open_tunnel(gw.addr(), &target);
    let t2 = open_tunnel(gw.addr(), &target);
    assert_eq!(up.wait_accepts(2, Duration::from_secs(5)), 2);
    expect_refusal(&gw, connect_head(&target).as_bytes(), 503);
    let ev = expect_refusal_event_any(&gw, 503, "over_capacity");
    eprintln!("503 refusals are logged with event_id {:?}", event_id(&ev));
    expect_rejection_metric(&gw, "over_capacity", 1.0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        up.accepts(),
        2,
        "the refused connection must not reach the upstream"
    );
    drop(t1);
    // Once a slot is free again a new tunnel is accepted (bounded retries: the close is async).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < deadline {
        let (s, r) = connect_request(gw.addr(), &target);
        if r.status == 200 {
            last = Some(s);
            break;
        }
        assert_eq!(r.status, 503, "only 503 is expected while at capacity");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last.is_some(),
        "a slot freed by closing a tunnel is reused within 5 s"
    );
    drop(t2);
}

#[test]
fn static_host_mapped_to_loopback_is_private_without_networks() {
    let up = Upstream::echo();
    let cfg = Config::new()
        .allow_host("internal.splicegate.test")
        .map_host("internal.splicegate.test", "127.0.0.1")
        .port(up.port());
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("internal.splicegate.test:{}", up.port())).as_bytes(),
        403,
    );
    let ev = expect_refusal_event(&gw, 105, 403, Some("private_destination"));
    assert_target(&ev, "internal.splicegate.test");
    expect_rejection_metric(&gw, "private_destination", 1.0);
    up.assert_untouched("private destination via hosts:");
}

#[test]
fn allow_private_destinations_true_permits_loopback() {
    let up = Upstream::echo();
    let cfg = Config::new()
        .allow_host("internal.splicegate.test")
        .map_host("internal.splicegate.test", "127.0.0.1")
        .port(up.port())
        .allow_private(true);
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let mut s = open_tunnel(
        gw.addr(),
        &format!("internal.splicegate.test:{}", up.port()),
    );
    echo_roundtrip(&mut s, b"private allowed");
}

#[test]
fn ipv4_literal_allowed_by_name_but_private_is_403() {
    let up = Upstream::echo();
    let cfg = Config::new().allow_host("127.0.0.1").port(up.port());
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("127.0.0.1:{}", up.port())).as_bytes(),
        403,
    );
    expect_refusal_event(&gw, 105, 403, Some("private_destination"));
    up.assert_untouched("private IPv4 literal");
}

#[test]
fn ipv6_literal_allowed_by_name_is_private_unless_network_allowed() {
    if !ipv6_available() {
        eprintln!("SKIP: ::1 is not available on this machine");
        return;
    }
    let up = Upstream::echo_on("[::1]:0");
    let target = format!("[::1]:{}", up.port());
    {
        let cfg = Config::new().allow_host("::1").port(up.port());
        let Some(gw) = Gateway::start(cfg) else {
            return;
        };
        expect_refusal(&gw, connect_head(&target).as_bytes(), 403);
        expect_refusal_event(&gw, 105, 403, Some("private_destination"));
        up.assert_untouched("private IPv6 literal");
    }
    let cfg = Config::new()
        .allow_host("::1")
        .port(up.port())
        .destination_network("::1/128");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, b"over ipv6");
    assert_eq!(up.accepts(), 1);
}

/// A CONNECT from `source` (a loopback address) to the gateway; returns the answer's status.
fn refused_from(gw: &Gateway, source: &str, target: &str) -> u16 {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&sockaddr(&format!("{source}:0")).into()).unwrap();
    sock.connect_timeout(&gw.addr().into(), Duration::from_secs(5))
        .unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(connect_head(target).as_bytes()).unwrap();
    let r = read_response_head(&mut s).unwrap_or_else(|e| panic!("{target} from {source}: {e}"));
    assert_closes(&mut s, Duration::from_secs(5));
    r.status
}

fn is_summary(e: &serde_json::Value) -> bool {
    field_u64(e, "suppressed").is_some()
}

fn from_client(e: &serde_json::Value, ip: &str) -> bool {
    field_str(e, "client").is_some_and(|c| c == ip || c.starts_with(&format!("{ip}:")))
}

/// Refusal events per (client address, reason): the first `refusal_burst` of a window are
/// logged, then one summary with `suppressed=N` when the window ends, with no further refusal
/// needed to flush it. Counters count every refusal.
#[test]
fn repeated_refusals_are_rate_limited_per_client_and_reason() {
    let closed = ClosedPort::new();
    let Some((up, gw)) = setup(|c| {
        c.workers(1)
            .upstream("closed.splicegate.test", closed.port())
            .raw("logging:\n  refusal_burst: 10\n  refusal_window: 3s\n")
    }) else {
        return;
    };
    let denied = format!("denied.splicegate.test:{}", up.port());
    let t0 = Instant::now();
    for _ in 0..30 {
        assert_eq!(refused_from(&gw, "127.0.0.1", &denied), 403);
    }
    // Another reason from the same client, and the same reason from another client, have
    // budgets of their own.
    let bad_port = format!("{ALLOWED}:1");
    for _ in 0..3 {
        assert_eq!(refused_from(&gw, "127.0.0.1", &bad_port), 403);
    }
    for _ in 0..12 {
        assert_eq!(refused_from(&gw, "127.0.0.2", &denied), 403);
    }
    // An upstream that cannot be reached (event 403) is limited the same way.
    let unreachable = format!("closed.splicegate.test:{}", closed.port());
    for _ in 0..13 {
        assert_eq!(refused_from(&gw, "127.0.0.1", &unreachable), 502);
    }
    let sent = t0.elapsed();
    assert!(
        sent < Duration::from_millis(2700),
        "the refusals must fit in one 3 s window to test it, took {sent:?}"
    );
    let summary = |ip: &'static str| {
        move |e: &serde_json::Value| {
            is_summary(e)
                && from_client(e, ip)
                && field_str(e, "reason").as_deref() == Some("host_not_allowed")
        }
    };
    let first = gw.expect_event(
        105,
        summary("127.0.0.1"),
        Duration::from_secs(8),
        "the summary of 127.0.0.1's window",
    );
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_millis(2900),
        "the summary comes at the end of the window, came after {at:?}"
    );
    assert_eq!(field_u64(&first, "suppressed"), Some(20), "{first}");
    let second = gw.expect_event(
        105,
        summary("127.0.0.2"),
        Duration::from_secs(3),
        "the summary of 127.0.0.2's window",
    );
    assert_eq!(field_u64(&second, "suppressed"), Some(2), "{second}");
    let third = gw.expect_event(
        403,
        |e| is_summary(e) && field_str(e, "reason").as_deref() == Some("connect_refused"),
        Duration::from_secs(3),
        "the summary of the connect_refused window",
    );
    assert_eq!(field_u64(&third, "suppressed"), Some(3), "{third}");

    // Give a wrongly repeated summary the time to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    let events = gw.events(105);
    let count = |ip: &str, reason: &str, summaries: bool| {
        events
            .iter()
            .filter(|e| {
                from_client(e, ip)
                    && field_str(e, "reason").as_deref() == Some(reason)
                    && is_summary(e) == summaries
            })
            .count()
    };
    assert_eq!(count("127.0.0.1", "host_not_allowed", false), 10);
    assert_eq!(count("127.0.0.1", "host_not_allowed", true), 1);
    assert_eq!(count("127.0.0.1", "port_not_allowed", false), 3);
    assert_eq!(
        count("127.0.0.1", "port_not_allowed", true),
        0,
        "none suppressed"
    );
    assert_eq!(count("127.0.0.2", "host_not_allowed", false), 10);
    assert_eq!(count("127.0.0.2", "host_not_allowed", true), 1);
    // Logged events plus suppressed counts equal the counter.
    let counted = gw.metric_value("splicegate_rejections_total{reason=\"host_not_allowed\"}");
    assert_eq!(counted, 42.0);
    assert_eq!(counted, (10 + 20 + 10 + 2) as f64);
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"port_not_allowed\"}"),
        3.0
    );
    let failed = gw.events(403);
    let logged = failed.iter().filter(|e| !is_summary(e)).count();
    assert_eq!(logged, 10, "{failed:?}");
    assert_eq!(failed.len(), 11, "10 events and one summary");
    assert_eq!(
        gw.metric_value("splicegate_errors_total{kind=\"connect_refused\"}"),
        13.0
    );
    up.assert_untouched("refused requests");
}

/// Peer-supplied strings are cut to 256 bytes in events, ending with "…": here a 253-byte
/// host name (with its port, 259 bytes) that an allowed wildcard matches, and one that is
/// refused.
#[test]
fn long_host_names_are_clipped_in_events() {
    let long = format!(
        "{}.{}.{}.{}.long.test",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(51)
    );
    assert_eq!(long.len(), 253);
    let refused = long.replacen("long.test", "lone.test", 1);
    let Some((up, gw)) = setup(|c| {
        c.allow_host("*.long.test")
            .map_host(&long, "127.0.0.1")
            .map_host(&refused, "127.0.0.1")
    }) else {
        return;
    };
    let target = format!("{long}:{}", up.port());
    assert!(target.len() > 256);
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, b"a long name");
    drop(s);
    let clipped = |e: &serde_json::Value| -> bool {
        field_str(e, "target").is_some_and(|t| {
            t.len() == 256 && t.ends_with('…') && target.starts_with(t.trim_end_matches('…'))
        })
    };
    let established = gw.expect_event(
        100,
        |e| field_str(e, "address").is_some() && field_str(e, "bytes_up").is_none(),
        Duration::from_secs(5),
        "tunnel established",
    );
    assert!(clipped(&established), "{established}");
    let closed = gw.expect_event(
        100,
        |e| field_str(e, "bytes_up").is_some(),
        Duration::from_secs(5),
        "tunnel closed",
    );
    assert!(clipped(&closed), "{closed}");

    let denied = format!("{refused}:{}", up.port());
    expect_refusal(&gw, connect_head(&denied).as_bytes(), 403);
    let ev = expect_refusal_event(&gw, 105, 403, Some("host_not_allowed"));
    let t = field_str(&ev, "target").unwrap();
    assert_eq!(t.len(), 256, "{ev}");
    assert!(t.ends_with('…'), "{ev}");
    assert!(denied.starts_with(t.trim_end_matches('…')), "{ev}");
    assert!(
        ev.to_string().len() < 1024,
        "the whole event stays short: {ev}"
    );
}

/// A window still open when the gateway stops is summarised before it exits.
#[test]
fn open_refusal_windows_are_summarised_at_stop() {
    let Some((up, mut gw)) = setup(|c| {
        c.workers(1)
            .raw("logging:\n  refusal_burst: 1\n  refusal_window: 1h\n")
    }) else {
        return;
    };
    let denied = format!("denied.splicegate.test:{}", up.port());
    for _ in 0..3 {
        assert_eq!(refused_from(&gw, "127.0.0.1", &denied), 403);
    }
    gw.sigterm();
    let summary = gw.expect_event(105, is_summary, Duration::from_secs(10), "summary at stop");
    assert_eq!(field_u64(&summary, "suppressed"), Some(2), "{summary}");
    // Everything the gateway logged, up to its last line.
    gw.expect_event(102, |_| true, Duration::from_secs(10), "stopped");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some(), "exits");
    let events = gw.events(105);
    assert_eq!(events.iter().filter(|e| !is_summary(e)).count(), 1);
    assert_eq!(
        events.iter().filter(|e| is_summary(e)).count(),
        1,
        "{events:?}"
    );
}
