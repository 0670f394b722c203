//! Self-tests of the harness pieces that do not need the gateway (DNS stub, metrics parser, TLS
//! upstream, blackhole listener), so a harness bug is not mistaken for a gateway bug.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn dns_query(server: std::net::SocketAddr, id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, qdcount 1
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.send_to(&q, server).unwrap();
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn dns_stub_answers_a_nxdomain_and_stays_silent() {
    let dns = DnsStub::start(
        &[
            ("a.dns.test", DnsAnswer::A(vec![Ipv4Addr::new(10, 0, 0, 5)])),
            ("quiet.dns.test", DnsAnswer::Silent),
        ],
        DnsAnswer::NxDomain,
        60,
    );
    let r = dns_query(dns.addr(), 0x1234, "A.dns.test", 1).expect("answer for A");
    assert_eq!(&r[0..2], &[0x12, 0x34], "id echoed");
    assert_eq!(r[2] & 0x80, 0x80, "QR set");
    assert_eq!(r[3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
    assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 5]);
    assert_eq!(&r[r.len() - 10..r.len() - 6], &60u32.to_be_bytes(), "TTL");

    let r = dns_query(dns.addr(), 7, "a.dns.test", 28).expect("answer for AAAA");
    assert_eq!(r[3] & 0x0f, 0, "NODATA is NOERROR");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0, "no AAAA answers");

    let r = dns_query(dns.addr(), 8, "other.dns.test", 1).expect("answer for unknown");
    assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN");

    assert!(dns_query(dns.addr(), 9, "quiet.dns.test", 1).is_none());
    assert_eq!(dns.query_count("quiet.dns.test"), 1);
    assert_eq!(dns.query_count("a.dns.test"), 2);
}

#[test]
fn dns_stub_ttl_soa_servfail_cname_silence_and_hold() {
    let dns = DnsStub::start(
        &[
            (
                "r.dns.test",
                DnsAnswer::Records {
                    a: vec![Ipv4Addr::new(192, 0, 2, 1)],
                    aaaa: Vec::new(),
                    ttl: 7,
                },
            ),
            ("nx.dns.test", DnsAnswer::NxDomainSoa { minimum: 9 }),
            ("sf.dns.test", DnsAnswer::ServFail),
            (
                "c.dns.test",
                DnsAnswer::Cname {
                    chain: vec!["c.privatelink.dns.test".to_string()],
                    a: vec![Ipv4Addr::new(10, 0, 0, 1)],
                    ttl: 30,
                },
            ),
        ],
        DnsAnswer::NxDomain,
        60,
    );
    let r = dns_query(dns.addr(), 1, "r.dns.test", 1).expect("A");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
    assert_eq!(
        &r[r.len() - 10..r.len() - 6],
        &7u32.to_be_bytes(),
        "chosen TTL"
    );
    let r = dns_query(dns.addr(), 2, "r.dns.test", 28).expect("AAAA");
    assert_eq!(r[3] & 0x0f, 0, "NODATA");
    assert_eq!(
        u16::from_be_bytes([r[8], r[9]]),
        1,
        "an SOA in the authority section"
    );
    assert_eq!(&r[r.len() - 4..], &7u32.to_be_bytes(), "SOA minimum");
    let r = dns_query(dns.addr(), 3, "nx.dns.test", 1).expect("NXDOMAIN");
    assert_eq!(r[3] & 0x0f, 3);
    assert_eq!(u16::from_be_bytes([r[8], r[9]]), 1);
    assert_eq!(&r[r.len() - 4..], &9u32.to_be_bytes());
    let r = dns_query(dns.addr(), 4, "sf.dns.test", 1).expect("SERVFAIL");
    assert_eq!(r[3] & 0x0f, 2);
    let r = dns_query(dns.addr(), 5, "c.dns.test", 1).expect("CNAME");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2, "CNAME + A");
    assert!(r.windows(11).any(|w| w == b"privatelink"));
    assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 1]);
    // Silence per type, then speak again.
    dns.silence("r.dns.test", 28);
    assert!(dns_query(dns.addr(), 6, "r.dns.test", 28).is_none());
    assert!(dns_query(dns.addr(), 7, "r.dns.test", 1).is_some());
    dns.speak("r.dns.test");
    assert!(dns_query(dns.addr(), 8, "r.dns.test", 28).is_some());
    // Hold: counted, answered only on release.
    dns.hold("r.dns.test");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut q = vec![0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["r", "dns", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, dns.addr()).unwrap();
    let mut buf = [0u8; 1500];
    assert!(sock.recv_from(&mut buf).is_err(), "held");
    dns.release("r.dns.test");
    let (n, _) = sock.recv_from(&mut buf).expect("released");
    assert_eq!(&buf[..2], &[0, 9]);
    assert!(n > 12);
    assert_eq!(dns.query_count_type("r.dns.test", QTYPE_A), 3);
    assert_eq!(dns.query_count_type("r.dns.test", QTYPE_AAAA), 3);
}

#[test]
fn metrics_parser_sums_matching_series() {
    let text = "\
# HELP splicegate_bytes Bytes moved.
# TYPE splicegate_bytes counter
splicegate_bytes_total{direction=\"upstream\"} 300
splicegate_bytes_total{direction=\"downstream\"} 5
splicegate_active_client_connections 2
splicegate_tunnel_duration_seconds_bucket{le=\"+Inf\"} 3
# TYPE splicegate_rejections counter
# EOF
";
    assert_eq!(
        metric_from_text(text, "splicegate_bytes_total{direction=\"upstream\"}"),
        300.0
    );
    assert_eq!(metric_from_text(text, "splicegate_bytes_total"), 305.0);
    assert_eq!(
        metric_from_text(text, "splicegate_active_client_connections"),
        2.0
    );
    assert_eq!(
        metric_from_text(
            text,
            "splicegate_tunnel_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_from_text(text, "splicegate_rejections_total{reason=\"x\"}"),
        0.0
    );
    let missing = std::panic::catch_unwind(|| metric_from_text(text, "splicegate_nope"));
    assert!(missing.is_err(), "an unexposed family panics");
}

#[test]
fn tls_upstream_serves_its_page_to_curl() {
    let tls = TlsUpstream::start();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("{TLS_NAME}:{}:127.0.0.1", tls.port()))
        .arg("--cacert")
        .arg(tls.cert())
        .arg(format!("https://{TLS_NAME}:{}/", tls.port()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("s_server -www"));
}

#[test]
fn upstream_counts_accepts_and_echoes() {
    let up = Upstream::echo();
    let mut s = TcpStream::connect(up.addr()).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    assert_eq!(up.wait_accepts(1, Duration::from_secs(2)), 1);
    let idle = Upstream::echo();
    let t0 = Instant::now();
    idle.assert_untouched("fresh upstream");
    assert!(t0.elapsed() >= Duration::from_millis(250));
}

#[test]
fn blackhole_listener_times_out_connects() {
    let Some(hole) = BlackholeListener::new() else {
        panic!("could not fill a listen(0) accept queue on loopback");
    };
    let r = TcpStream::connect_timeout(&hole.addr(), Duration::from_millis(500));
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "connect to a full accept queue should time out: {r:?}"
    );
}

#[test]
fn pattern_and_hash_helpers_agree() {
    let data = Pattern::bytes(42, 200_001);
    let mut sent = Vec::new();
    let d = send_pattern(&mut sent, 200_001, 42).unwrap();
    assert_eq!(sent, data);
    assert_eq!(d, sha256(&data));
    let (n, h) = sink_hash(&mut &data[..]).unwrap();
    assert_eq!((n, h), (200_001, d));
    assert_ne!(Pattern::bytes(1, 64), Pattern::bytes(2, 64));
}
