//! DNS resolution through a stub nameserver and the private-destination guard on resolved
//! addresses.

mod support;

use std::net::Ipv4Addr;
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
