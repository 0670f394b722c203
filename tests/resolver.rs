//! DNS resolution through a stub nameserver and the private-destination guard on resolved
//! addresses; the hosts file, the cache, coalescing, serve-stale, A and AAAA in parallel and
//! Private Link.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use support::*;

fn stub() -> DnsStub {
    DnsStub::start(
        &[
            ("svc.dns.test", DnsAnswer::A(vec![Ipv4Addr::LOCALHOST])),
            (
                "private.dns.test",
                DnsAnswer::A(vec![Ipv4Addr::new(10, 0, 0, 5)]),
            ),
            ("nx.dns.test", DnsAnswer::NxDomain),
            ("silent.dns.test", DnsAnswer::Silent),
        ],
        DnsAnswer::NxDomain,
        300,
    )
}

fn gateway(dns: &DnsStub, port: u16, extra: impl FnOnce(Config) -> Config) -> Option<Gateway> {
    let cfg = Config::new()
        .allow_host("*.dns.test")
        .port(port)
        .nameserver(dns.addr());
    Gateway::start(extra(cfg))
}

#[test]
fn resolved_loopback_name_tunnels_when_network_allowed() {
    let dns = stub();
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| c.loopback_networks()) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("svc.dns.test:{}", up.port()));
    echo_roundtrip(&mut s, b"resolved through the stub");
    assert!(
        dns.query_count("svc.dns.test") >= 1,
        "the gateway asked the configured nameserver; queries: {:?}",
        dns.queries()
    );
    assert_eq!(up.accepts(), 1);
}

#[test]
fn name_resolving_to_private_address_is_403() {
    let dns = stub();
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| c) else {
        return;
    };
    let t0 = Instant::now();
    expect_refusal(
        &gw,
        connect_head(&format!("private.dns.test:{}", up.port())).as_bytes(),
        403,
    );
    let took = t0.elapsed();
    let ev = expect_refusal_event(&gw, 105, 403, Some("private_destination"));
    assert!(
        field_str(&ev, "target").is_some_and(|t| t.contains("private.dns.test")),
        "target names the host: {ev}"
    );
    expect_rejection_metric(&gw, "private_destination", 1.0);
    assert!(
        dns.query_count("private.dns.test") >= 1,
        "{:?}",
        dns.queries()
    );
    // No connection attempt to 10.0.0.5: that would hang, time out or fail with event 403.
    assert!(took < Duration::from_secs(3), "refusal took {took:?}");
    assert!(
        gw.events(403).is_empty(),
        "no network error expected, no connection may be attempted: {:?}",
        gw.events(403)
    );
}

#[test]
fn name_resolving_to_loopback_without_networks_is_403_and_untouched() {
    let dns = stub();
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| c) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("svc.dns.test:{}", up.port())).as_bytes(),
        403,
    );
    expect_refusal_event(&gw, 105, 403, Some("private_destination"));
    up.assert_untouched("resolved loopback address without allowed_destination_networks");
}

#[test]
fn nxdomain_is_502_dns_failure() {
    let dns = stub();
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| c.loopback_networks()) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("nx.dns.test:{}", up.port())).as_bytes(),
        502,
    );
    let ev = expect_refusal_event(&gw, 403, 502, Some("dns_failure"));
    assert_client_field(&ev);
    expect_error_metric(&gw, "dns_failure", 1.0);
    assert!(dns.query_count("nx.dns.test") >= 1, "{:?}", dns.queries());
    up.assert_untouched("NXDOMAIN");
}

#[test]
fn silent_nameserver_hits_resolve_timeout() {
    let dns = stub();
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks().limit("resolve_timeout", "1s")
    }) else {
        return;
    };
    let t0 = Instant::now();
    let (mut s, r) = request(
        gw.addr(),
        connect_head(&format!("silent.dns.test:{}", up.port())).as_bytes(),
    );
    let took = t0.elapsed();
    let r = r.unwrap_or_else(|e| panic!("no response after {took:?}: {e}"));
    assert!(
        r.status == 504 || r.status == 502,
        "resolver timeout answers 504 (or 502), got {:?}",
        r.head
    );
    assert!(
        took >= Duration::from_millis(800),
        "answered after {took:?} < resolve_timeout"
    );
    assert!(
        took <= Duration::from_secs(4),
        "answered only after {took:?}"
    );
    assert_closes(&mut s, Duration::from_secs(5));
    let ev = expect_refusal_event(&gw, 403, r.status, None);
    let reason = field_str(&ev, "reason").unwrap_or_default();
    assert!(
        reason == "resolve_timeout" || reason == "dns_failure",
        "reason {reason:?} in {ev}"
    );
    expect_error_metric(&gw, &reason, 1.0);
    assert!(
        dns.query_count("silent.dns.test") >= 1,
        "{:?}",
        dns.queries()
    );
    up.assert_untouched("resolver timeout");
}

// ---------------------------------------------------------------------------------------------
// Hosts file, cache, coalescing, serve-stale, A/AAAA in parallel, Private Link (issue 11)
// ---------------------------------------------------------------------------------------------

/// Send one CONNECT; returns the status and how long the answer took.
fn connect_status(gw: &Gateway, target: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let (_s, r) = request(gw.addr(), connect_head(target).as_bytes());
    let took = t0.elapsed();
    let r = r.unwrap_or_else(|e| panic!("CONNECT {target}: no answer after {took:?}: {e}"));
    (r.status, took)
}

/// A stub that answers nothing unless told otherwise.
fn silent_stub(records: &[(&str, DnsAnswer)]) -> DnsStub {
    DnsStub::start(records, DnsAnswer::Silent, 60)
}

fn records(a: &[Ipv4Addr], ttl: u32) -> DnsAnswer {
    DnsAnswer::Records {
        a: a.to_vec(),
        aaaa: Vec::new(),
        ttl,
    }
}

/// Sleep until `t`, in bounded steps.
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Wait (bounded) for the event saying the hosts file was read with `names` names.
fn wait_hosts_read(gw: &Gateway, names: u64, timeout: Duration) -> Option<serde_json::Value> {
    gw.wait_event(
        100,
        |e| {
            field_str(e, "message").is_some_and(|m| m.starts_with("hosts file read"))
                && field_u64(e, "names") == Some(names)
        },
        timeout,
    )
}

/// `splicegate_dns_lookup_seconds_count`: lookups the resolver task answered (a round trip
/// from a worker to the control thread and back).
fn task_lookups(gw: &Gateway) -> f64 {
    gw.metric_value("splicegate_dns_lookup_seconds_count")
}

fn dns_queries(gw: &Gateway) -> f64 {
    gw.metric_value("splicegate_dns_queries_total")
}

fn hosts_file_answers(gw: &Gateway) -> f64 {
    gw.metric_value("splicegate_dns_cache_total{outcome=\"hosts_file\"}")
}

#[test]
fn hosts_file_name_is_answered_on_the_worker_with_a_silent_nameserver() {
    let dns = silent_stub(&[]);
    let up = Upstream::echo();
    let dir = TempDir::new("hosts");
    let hosts = dir.write(
        "hosts",
        "# test hosts file\n127.0.0.1 pinned.dns.test\n::1 localhost\n",
    );
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks()
            .resolver("hosts_file", &yq(&hosts.display().to_string()))
    }) else {
        return;
    };
    let target = format!("pinned.dns.test:{}", up.port());
    for i in 0..300 {
        let (status, took) = connect_status(&gw, &target);
        assert_eq!(status, 200, "CONNECT #{i} after {took:?}");
        assert!(took < Duration::from_secs(2), "CONNECT #{i} took {took:?}");
    }
    assert!(
        dns.queries().is_empty(),
        "no DNS query for a hosts-file name: {:?}",
        dns.queries()
    );
    // Answered where it was asked: counted as a hosts-file answer, never a lookup the
    // resolver task answered (its latency histogram counts every one of those).
    assert!(hosts_file_answers(&gw) >= 300.0, "{}", gw.metrics());
    assert_eq!(task_lookups(&gw), 0.0, "{}", gw.metrics());
    assert_eq!(dns_queries(&gw), 0.0, "{}", gw.metrics());
}

#[test]
fn hosts_file_name_is_answered_with_no_nameserver_and_no_round_trip() {
    let up = Upstream::echo();
    let dir = TempDir::new("hosts-nodns");
    let hosts = dir.write("hosts", "127.0.0.1 pinned.dns.test\n");
    // Nothing listens where the name server should be.
    let closed = ClosedPort::new();
    let cfg = Config::new()
        .allow_host("*.dns.test")
        .port(up.port())
        .nameserver(SocketAddr::from((Ipv4Addr::LOCALHOST, closed.port())))
        .loopback_networks()
        .limit("resolve_timeout", "1s")
        .resolver("hosts_file", &yq(&hosts.display().to_string()));
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("pinned.dns.test:{}", up.port());
    let before = (hosts_file_answers(&gw), task_lookups(&gw), dns_queries(&gw));
    for i in 0..50 {
        let mut s = open_tunnel(gw.addr(), &target);
        echo_roundtrip(&mut s, format!("pinned #{i}").as_bytes());
    }
    let after = (hosts_file_answers(&gw), task_lookups(&gw), dns_queries(&gw));
    assert_eq!(after.0 - before.0, 50.0, "{}", gw.metrics());
    assert_eq!(after.1, before.1, "no lookup reached the resolver task");
    assert_eq!(after.2, before.2, "no DNS query");
    // A name the file does not list still goes to the resolver task (and fails: no server).
    let (status, _) = connect_status(&gw, &format!("other.dns.test:{}", up.port()));
    assert!(status == 502 || status == 504, "got {status}");
    // The task answers it (a failure) once the query's own bound has passed.
    let lookups = gw.wait_metric(
        "splicegate_dns_lookup_seconds_count",
        |v| v > before.1,
        Duration::from_secs(10),
    );
    assert_eq!(lookups, before.1 + 1.0, "{}", gw.metrics());
}

#[test]
fn hosts_file_rewritten_in_place_or_renamed_is_taken_and_a_removed_name_goes_to_dns() {
    // Every name not in the file is NXDOMAIN: a pinned name that fell to DNS would be a 502.
    let dns = DnsStub::start(&[], DnsAnswer::NxDomain, 60);
    let up = Upstream::echo();
    let dir = TempDir::new("hosts-rewrite");
    let hosts = dir.write("hosts", "127.0.0.1 a.dns.test\n");
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks()
            .resolver("hosts_file", &yq(&hosts.display().to_string()))
    }) else {
        return;
    };
    let at = |name: &str| format!("{name}.dns.test:{}", up.port());
    assert!(wait_hosts_read(&gw, 1, Duration::from_secs(5)).is_some());
    assert_eq!(connect_status(&gw, &at("a")).0, 200);

    // An editor that truncates and rewrites in place, with the file empty for less than a
    // re-check (the writer is a thread of its own, so slow CONNECTs cannot stretch that): the
    // pinned name keeps its pin throughout (never a query, never a 502).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&hosts)
        .unwrap();
    let writer = std::thread::spawn(move || {
        let mut f = f;
        std::thread::sleep(Duration::from_millis(600));
        f.write_all(b"127.0.0.1 a.dns.test\n127.0.0.1 b.dns.test\n")
    });
    let window_end = Instant::now() + Duration::from_secs(2);
    while !writer.is_finished() && Instant::now() < window_end {
        assert_eq!(connect_status(&gw, &at("a")).0, 200, "during the rewrite");
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap().unwrap();
    let bound = Duration::from_secs(6);
    let read = wait_hosts_read(&gw, 2, bound);
    assert!(read.is_some(), "rewrite not taken within {bound:?}");
    assert_eq!(connect_status(&gw, &at("b")).0, 200);
    assert_eq!(dns.query_count("a.dns.test"), 0, "{:?}", dns.queries());
    assert_eq!(dns.query_count("b.dns.test"), 0, "{:?}", dns.queries());

    // A new file renamed over it, as `sed -i` or a configuration manager does: `b` is gone.
    let t_change = Instant::now();
    let tmp = dir.write("hosts.new", "127.0.0.1 c.dns.test x.dns.test y.dns.test\n");
    std::fs::rename(&tmp, &hosts).unwrap();
    let read = wait_hosts_read(&gw, 3, bound);
    assert!(read.is_some(), "rename not taken within {bound:?}");
    let took = t_change.elapsed();
    assert_eq!(connect_status(&gw, &at("c")).0, 200, "after {took:?}");
    // A name no longer listed goes to DNS, which says NXDOMAIN: 502, not the old pin.
    assert_eq!(connect_status(&gw, &at("b")).0, 502);
    assert!(dns.query_count("b.dns.test") >= 1, "{:?}", dns.queries());
}

#[test]
fn concurrent_lookups_of_one_name_share_one_query_per_type() {
    let name = "crowd.dns.test";
    let dns = silent_stub(&[(name, records(&[Ipv4Addr::new(10, 0, 0, 7)], 60))]);
    dns.hold(name);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| c.limit("resolve_timeout", "20s")) else {
        return;
    };
    // 500 clients send their CONNECT before any answer can come back.
    let head = connect_head(&format!("{name}:{}", up.port()));
    let mut clients = Vec::with_capacity(500);
    for i in 0..500 {
        let mut s = connect(gw.addr());
        s.write_all(head.as_bytes())
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        clients.push(s);
    }
    let arrived = gw.wait_metric(
        "splicegate_dns_cache_total",
        |v| v >= 500.0,
        Duration::from_secs(20),
    );
    assert_eq!(arrived, 500.0, "every lookup reached the resolver");
    dns.release(name);
    for (i, s) in clients.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = read_response_head(s).unwrap_or_else(|e| panic!("client {i}: {e}"));
        // 10.0.0.7 is private and not allowed: every client got the answer and was refused.
        assert_eq!(r.status, 403, "client {i}: {:?}", r.head);
    }
    assert_eq!(
        dns.query_count_type(name, QTYPE_A),
        1,
        "{:?}",
        dns.queries()
    );
    assert_eq!(
        dns.query_count_type(name, QTYPE_AAAA),
        1,
        "{:?}",
        dns.queries()
    );
    let m = gw.metrics();
    assert_eq!(
        metric_from_text(&m, "splicegate_dns_cache_total{outcome=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_from_text(&m, "splicegate_dns_cache_total{outcome=\"coalesced\"}"),
        499.0,
        "{m}"
    );
    assert_eq!(
        metric_from_text(&m, "splicegate_dns_queries_total{result=\"answer\"}"),
        1.0
    );
    assert_eq!(
        metric_from_text(&m, "splicegate_dns_queries_total{result=\"nodata\"}"),
        1.0
    );
    assert_eq!(
        metric_from_text(&m, "splicegate_dns_lookup_seconds_count"),
        500.0
    );
    up.assert_untouched("private answer");
}

#[test]
fn answers_are_cached_for_their_ttl_then_asked_again() {
    let name = "ttl.dns.test";
    let dns = silent_stub(&[(name, records(&[Ipv4Addr::LOCALHOST], 2))]);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks().resolver("min_ttl", "1s")
    }) else {
        return;
    };
    let target = format!("{name}:{}", up.port());
    let t0 = Instant::now();
    assert_eq!(connect_status(&gw, &target).0, 200);
    assert_eq!(dns.query_count_type(name, QTYPE_A), 1);
    // Within the TTL: answered from the cache, no query.
    sleep_until(t0 + Duration::from_millis(500));
    assert_eq!(connect_status(&gw, &target).0, 200);
    sleep_until(t0 + Duration::from_millis(1700));
    assert_eq!(
        dns.query_count_type(name, QTYPE_A),
        1,
        "no query before the TTL: {:?}",
        dns.queries()
    );
    assert!(gw.metric_value("splicegate_dns_cache_total{outcome=\"hit\"}") >= 1.0);
    // After the TTL: asked again.
    sleep_until(t0 + Duration::from_millis(2300));
    assert_eq!(connect_status(&gw, &target).0, 200);
    assert_eq!(
        dns.query_count_type(name, QTYPE_A),
        2,
        "a new query after the TTL: {:?}",
        dns.queries()
    );
}

#[test]
fn a_busy_name_is_refreshed_before_it_expires() {
    let name = "busy.dns.test";
    let dns = silent_stub(&[(name, records(&[Ipv4Addr::LOCALHOST], 2))]);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks().resolver("min_ttl", "1s")
    }) else {
        return;
    };
    let target = format!("{name}:{}", up.port());
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(connect_status(&gw, &target).0, 200);
    }
    assert_eq!(dns.query_count_type(name, QTYPE_A), 1);
    // Refreshed at 90% of the 2 s TTL without any CONNECT.
    sleep_until(t0 + Duration::from_millis(2300));
    assert_eq!(
        dns.query_count_type(name, QTYPE_A),
        2,
        "background refresh: {:?}",
        dns.queries()
    );
    let misses = gw.metric_value("splicegate_dns_cache_total{outcome=\"miss\"}");
    assert_eq!(connect_status(&gw, &target).0, 200);
    assert_eq!(
        gw.metric_value("splicegate_dns_cache_total{outcome=\"miss\"}"),
        misses,
        "the refreshed answer is a hit"
    );
}

#[test]
fn expired_answer_is_served_stale_when_the_server_goes_silent_or_fails() {
    let (silent, failing) = ("stale.dns.test", "servfail.dns.test");
    let dns = silent_stub(&[
        (silent, records(&[Ipv4Addr::LOCALHOST], 1)),
        (failing, records(&[Ipv4Addr::LOCALHOST], 1)),
    ]);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks()
            .limit("resolve_timeout", "3s")
            .resolver("min_ttl", "0s")
            .resolver("stale_after", "300ms")
    }) else {
        return;
    };
    let t0 = Instant::now();
    for n in [silent, failing] {
        assert_eq!(connect_status(&gw, &format!("{n}:{}", up.port())).0, 200);
    }
    dns.silence(silent, 0);
    dns.set(failing, DnsAnswer::ServFail);
    sleep_until(t0 + Duration::from_millis(1300));
    let queries_before = dns.query_count_type(silent, QTYPE_A);
    let (status, took) = connect_status(&gw, &format!("{silent}:{}", up.port()));
    assert_eq!(status, 200, "stale answer; log:\n{}", gw.log_dump());
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "served after stale_after, before resolve_timeout: {took:?}"
    );
    assert!(
        dns.query_count_type(silent, QTYPE_A) > queries_before,
        "the refresh was tried"
    );
    let ev = gw.expect_event(
        403,
        |e| field_str(e, "stale").as_deref() == Some("true"),
        Duration::from_secs(3),
        "stale answer event",
    );
    assert_eq!(field_str(&ev, "name").as_deref(), Some(silent), "{ev}");
    // A second CONNECT while the name server stays silent: still served.
    let (status, _) = connect_status(&gw, &format!("{silent}:{}", up.port()));
    assert_eq!(status, 200);
    // SERVFAIL: served stale at once, without waiting for stale_after.
    let (status, took) = connect_status(&gw, &format!("{failing}:{}", up.port()));
    assert_eq!(status, 200, "log:\n{}", gw.log_dump());
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let m = gw.metrics();
    assert!(
        metric_from_text(&m, "splicegate_dns_cache_total{outcome=\"stale\"}") >= 3.0,
        "{m}"
    );
    assert!(metric_from_text(&m, "splicegate_dns_queries_total{result=\"servfail\"}") >= 1.0);
    assert!(up.accepts() >= 5);
}

#[test]
fn without_stale_answers_a_silent_server_is_504() {
    let name = "nostale.dns.test";
    let dns = silent_stub(&[(name, records(&[Ipv4Addr::LOCALHOST], 1))]);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks()
            .limit("resolve_timeout", "1500ms")
            .resolver("min_ttl", "0s")
            .resolver("stale_after", "300ms")
            .resolver("stale_ttl", "0")
    }) else {
        return;
    };
    let target = format!("{name}:{}", up.port());
    let t0 = Instant::now();
    assert_eq!(connect_status(&gw, &target).0, 200);
    dns.silence(name, 0);
    sleep_until(t0 + Duration::from_millis(1300));
    let (status, took) = connect_status(&gw, &target);
    assert_eq!(
        status, 504,
        "no stale answer with stale_ttl: 0 (after {took:?})"
    );
    expect_refusal_event(&gw, 403, 504, Some("resolve_timeout"));
    assert!(
        !gw.events(403)
            .iter()
            .any(|e| field_str(e, "stale").as_deref() == Some("true")),
        "{:?}",
        gw.events(403)
    );
    assert_eq!(
        gw.metric_value("splicegate_dns_cache_total{outcome=\"stale\"}"),
        0.0
    );
}

#[test]
fn nxdomain_is_cached_up_to_negative_ttl_then_asked_again() {
    let name = "gone.dns.test";
    let dns = silent_stub(&[(name, DnsAnswer::NxDomainSoa { minimum: 3600 })]);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks().resolver("negative_ttl", "2s")
    }) else {
        return;
    };
    let target = format!("{name}:{}", up.port());
    let t0 = Instant::now();
    assert_eq!(connect_status(&gw, &target).0, 502);
    assert_eq!(dns.query_count_type(name, QTYPE_A), 1);
    sleep_until(t0 + Duration::from_millis(700));
    assert_eq!(connect_status(&gw, &target).0, 502);
    sleep_until(t0 + Duration::from_millis(1700));
    assert_eq!(
        dns.query_count_type(name, QTYPE_A),
        1,
        "NXDOMAIN kept (the SOA says 1 h, negative_ttl caps it at 2 s): {:?}",
        dns.queries()
    );
    sleep_until(t0 + Duration::from_millis(2300));
    assert_eq!(connect_status(&gw, &target).0, 502);
    assert_eq!(
        dns.query_count_type(name, QTYPE_A),
        2,
        "asked again after negative_ttl: {:?}",
        dns.queries()
    );
    assert!(gw.metric_value("splicegate_dns_queries_total{result=\"nxdomain\"}") >= 2.0);
    up.assert_untouched("NXDOMAIN");
}

#[test]
fn a_silent_aaaa_does_not_delay_a_good_a_answer() {
    let name = "v4only.dns.test";
    let dns = silent_stub(&[(name, records(&[Ipv4Addr::LOCALHOST], 60))]);
    dns.silence(name, QTYPE_AAAA);
    let up = Upstream::echo();
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks().limit("resolve_timeout", "4s")
    }) else {
        return;
    };
    let (status, took) = connect_status(&gw, &format!("{name}:{}", up.port()));
    assert_eq!(status, 200, "log:\n{}", gw.log_dump());
    // The AAAA query gets 2 s per attempt; the A answer goes out after the 50 ms resolution delay.
    assert!(
        took < Duration::from_millis(1000),
        "took {took:?}: waited for the silent AAAA"
    );
    assert!(
        dns.query_count_type(name, QTYPE_AAAA) >= 1,
        "{:?}",
        dns.queries()
    );
}

#[test]
fn a_silent_a_does_not_delay_a_good_aaaa_answer() {
    if !ipv6_available() {
        eprintln!("skipped: no IPv6 on loopback");
        return;
    }
    let name = "v6only.dns.test";
    let dns = silent_stub(&[(
        name,
        DnsAnswer::Records {
            a: Vec::new(),
            aaaa: vec![std::net::Ipv6Addr::LOCALHOST],
            ttl: 60,
        },
    )]);
    dns.silence(name, QTYPE_A);
    let up = Upstream::echo_on("[::1]:0");
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks().limit("resolve_timeout", "4s")
    }) else {
        return;
    };
    let (status, took) = connect_status(&gw, &format!("{name}:{}", up.port()));
    assert_eq!(status, 200, "log:\n{}", gw.log_dump());
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    assert!(
        dns.query_count_type(name, QTYPE_A) >= 1,
        "{:?}",
        dns.queries()
    );
}

#[test]
fn private_link_allows_a_private_answer_only_through_a_privatelink_cname() {
    let dns = silent_stub(&[
        (
            "ws1.pl.dns.test",
            DnsAnswer::Cname {
                chain: vec!["ws1.privatelink.pl.dns.test".to_string()],
                a: vec![Ipv4Addr::LOCALHOST],
                ttl: 60,
            },
        ),
        ("ws2.pl.dns.test", records(&[Ipv4Addr::LOCALHOST], 60)),
        (
            "ws3.pl.dns.test",
            DnsAnswer::Cname {
                chain: vec!["ws3.elsewhere.dns.test".to_string()],
                a: vec![Ipv4Addr::LOCALHOST],
                ttl: 60,
            },
        ),
    ]);
    let up = Upstream::echo();
    let dir = TempDir::new("pl-hosts");
    let hosts = dir.write("hosts", "127.0.0.1 pinned.pl.dns.test\n");
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.loopback_networks()
            .resolver("private_link", "true")
            .resolver("hosts_file", &yq(&hosts.display().to_string()))
    }) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("ws1.pl.dns.test:{}", up.port()));
    echo_roundtrip(&mut s, b"through privatelink");
    for refused in ["ws2.pl.dns.test", "ws3.pl.dns.test"] {
        let (status, _) = connect_status(&gw, &format!("{refused}:{}", up.port()));
        assert_eq!(status, 403, "{refused}: private answer without privatelink");
    }
    let ev = expect_refusal_event(&gw, 105, 403, Some("private_destination"));
    assert!(
        field_str(&ev, "target").is_some_and(|t| t.contains(".pl.dns.test")),
        "{ev}"
    );
    // The hosts file is the operator's own pin: the network allowlist alone decides.
    assert_eq!(
        connect_status(&gw, &format!("pinned.pl.dns.test:{}", up.port())).0,
        200
    );
    // The 200 can reach the client before the upstream's accept thread counts the connection.
    assert_eq!(
        up.wait_accepts(2, Duration::from_secs(5)),
        2,
        "the privatelink name and the pinned name reached the upstream; the refused ones did not"
    );
}

#[test]
fn hosts_file_addresses_still_pass_the_private_destination_guard() {
    let dns = silent_stub(&[]);
    let up = Upstream::echo();
    let dir = TempDir::new("hosts-guard");
    let hosts = dir.write("hosts", "10.0.0.9 pinned-private.dns.test\n");
    let Some(gw) = gateway(&dns, up.port(), |c| {
        c.resolver("hosts_file", &yq(&hosts.display().to_string()))
    }) else {
        return;
    };
    let (status, took) = connect_status(&gw, &format!("pinned-private.dns.test:{}", up.port()));
    assert_eq!(status, 403, "after {took:?}");
    let ev = expect_refusal_event(&gw, 105, 403, Some("private_destination"));
    assert_eq!(
        field_str(&ev, "address").as_deref(),
        Some("10.0.0.9"),
        "{ev}"
    );
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());
}
