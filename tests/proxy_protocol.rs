//! PROXY protocol listeners and the per-client connection limit against the real binary.
//!
//! The "balancer" is this test: it sends hand-written v1 and v2 headers (and curl sends its
//! own with `--haproxy-protocol`) from 127.0.0.1, the listener's `proxy_from`; 127.0.0.2 is
//! "another host" (all of 127.0.0.0/8 is loopback). The addresses the headers name
//! (192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32) exist only in the headers: the gateway must
//! use them for events, client networks, the login lockout, the per-client limit and
//! `splicegate_connected_clients`.

mod support;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::*;

const T: Duration = Duration::from_secs(10);

const RELOADS_OK: &str = "splicegate_config_reloads_total{result=\"ok\"}";

/// A listener with the PROXY protocol, trusting 127.0.0.1 only.
const PROXY_LISTENER: &str =
    "{address: \"127.0.0.1:0\", proxy_protocol: true, proxy_from: [\"127.0.0.1/32\"]}";

/// Listeners: [0] plain, [1] PROXY protocol from 127.0.0.1.
fn config() -> Config {
    Config::new().listen(&["127.0.0.1:0", PROXY_LISTENER])
}

fn v1(source: &str, dest: SocketAddr) -> Vec<u8> {
    let source: SocketAddr = source.parse().expect("source address");
    let (family, dest_ip) = match (source.ip(), dest.ip()) {
        (IpAddr::V4(_), d) => ("TCP4", d),
        (IpAddr::V6(_), IpAddr::V4(d)) => ("TCP6", IpAddr::V6(d.to_ipv6_mapped())),
        (IpAddr::V6(_), d) => ("TCP6", d),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        dest_ip,
        source.port(),
        dest.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` header for a TCP client, written out byte by byte.
fn v2(source: &str, dest: SocketAddr) -> Vec<u8> {
    let source: SocketAddr = source.parse().expect("source address");
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), d) => {
            let d = match d {
                IpAddr::V4(d) => d.to_ipv6_mapped(),
                IpAddr::V6(d) => d,
            };
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        _ => panic!("an IPv4 source needs an IPv4 destination here"),
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&dest.port().to_be_bytes());
    h
}

/// A v2 `LOCAL` header: the balancer's own connection.
fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

fn connect_from(from: &str, to: SocketAddr) -> io::Result<TcpStream> {
    let local: SocketAddr = format!("{from}:0")
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{from}: {e}")))?;
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&local.into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// `header` and `rest` in one write (so the gateway reads both in one go), then the answer.
fn send(to: SocketAddr, header: &[u8], rest: &[u8]) -> (TcpStream, io::Result<Response>) {
    let mut s = connect(to);
    let mut all = header.to_vec();
    all.extend_from_slice(rest);
    s.write_all(&all).expect("write header and request");
    let r = read_response_head(&mut s);
    (s, r)
}

/// A tunnel through the PROXY listener for the client `source` (v1 header), echo-checked.
fn tunnel_as(gw: &Gateway, source: &str, target: &str) -> TcpStream {
    let (mut s, r) = send(
        gw.addrs()[1],
        &v1(source, gw.addrs()[1]),
        connect_head(target).as_bytes(),
    );
    let r = r.unwrap_or_else(|e| panic!("{source}: no answer: {e}\nlog:\n{}", gw.log_dump()));
    assert_eq!(
        r.status,
        200,
        "{source}: {:?}\nlog:\n{}",
        r.head,
        gw.log_dump()
    );
    echo_roundtrip(&mut s, source.as_bytes());
    s
}

/// Reads until the peer closes; `Ok(bytes)` on EOF or reset, `Err` if it is still open after
/// `timeout`.
fn bytes_until_closed(s: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("still open after {timeout:?}, read {out:?}"));
        }
        s.set_read_timeout(Some(deadline - now))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn closed_unanswered(gw: &Gateway, s: &mut TcpStream, what: &str) {
    let got = bytes_until_closed(s, T)
        .unwrap_or_else(|e| panic!("{what}: should be closed: {e}\nlog:\n{}", gw.log_dump()));
    assert!(
        got.is_empty(),
        "{what}: closed without an answer, got {:?}",
        String::from_utf8_lossy(&got)
    );
}

fn tunnel_closed_for(gw: &Gateway, client: &str) -> serde_json::Value {
    gw.expect_event(
        100,
        |e| {
            field_str(e, "client").as_deref() == Some(client)
                && e.to_string().contains("tunnel closed")
        },
        T,
        &format!("tunnel closed for {client}"),
    )
}

#[test]
fn v1_and_v2_headers_name_the_agent_in_events() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(config().upstream("ok.test", up.port())) else {
        return;
    };
    let to = gw.addrs()[1];
    // Header and CONNECT in one write: the bytes after the header are the head.
    for (header, client) in [
        (v1("192.0.2.10:40001", to), "192.0.2.10:40001"),
        (v2("192.0.2.11:40002", to), "192.0.2.11:40002"),
        (v2("[2001:db8::7]:40003", to), "[2001:db8::7]:40003"),
        (v1("[2001:db8::8]:40004", to), "[2001:db8::8]:40004"),
    ] {
        let (mut s, r) = send(to, &header, connect_head(&target).as_bytes());
        let r = r.unwrap_or_else(|e| panic!("{client}: {e}\nlog:\n{}", gw.log_dump()));
        assert_eq!(r.status, 200, "{client}: {:?}", r.head);
        echo_roundtrip(&mut s, b"through the balancer");
        drop(s);
        tunnel_closed_for(&gw, client);
    }
    // A header and a request that arrive in pieces, early tunnel bytes included.
    let mut s = connect(to);
    let _ = s.set_nodelay(true);
    let header = v2("192.0.2.12:40005", to);
    let mut rest = connect_head(&target).into_bytes();
    rest.extend_from_slice(b"early");
    for piece in [
        &header[..5],
        &header[5..13],
        &header[13..],
        &rest[..7],
        &rest[7..],
    ] {
        s.write_all(piece).expect("write a piece");
        s.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = read_response_head(&mut s).expect("answer to a header sent in pieces");
    assert_eq!(r.status, 200, "{:?}", r.head);
    let mut early = [0u8; 5];
    s.read_exact(&mut early).expect("early bytes echoed");
    assert_eq!(&early, b"early", "bytes after the head reach the upstream");
    drop(s);
    tunnel_closed_for(&gw, "192.0.2.12:40005");
    // The plain listener beside it still takes plain CONNECTs.
    let mut plain = open_tunnel(gw.addrs()[0], &target);
    echo_roundtrip(&mut plain, b"plain");
}

/// curl 7.88 sends `--haproxy-protocol`'s header to the server it connects to, not to a proxy
/// given with `-x` (there it would precede the tunnelled request); so curl talks to the
/// gateway as its server and sends the CONNECT itself (`-X CONNECT --request-target`).
#[test]
fn curl_haproxy_protocol_is_a_client() {
    let up = Upstream::with_handler(|mut s| {
        let _ = s.write_all(b"hello from upstream");
    });
    let Some(gw) = Gateway::start(config().upstream("ok.test", up.port())) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    let url = format!("http://127.0.0.1:{}/", gw.addrs()[1].port());
    let curl = |header: bool| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            "CONNECT",
            "--request-target",
            &target,
        ]);
        if header {
            c.arg("--haproxy-protocol");
        }
        c.arg(&url).output().expect("run curl")
    };
    let out = curl(true);
    assert!(
        out.status.success() && out.stdout == b"hello from upstream",
        "curl --haproxy-protocol through the PROXY listener: {out:?}\nlog:\n{}",
        gw.log_dump()
    );
    // curl names its own socket's address in a v1 header: a 127.0.0.1 client.
    gw.expect_event(
        100,
        |e| {
            field_str(e, "client").is_some_and(|c| c.starts_with("127.0.0.1:"))
                && e.to_string().contains("tunnel closed")
        },
        T,
        "tunnel closed for curl",
    );
    // Without the header curl's CONNECT is refused: 104, closed unanswered.
    let plain = curl(false);
    assert!(
        !plain.status.success() && plain.stdout.is_empty(),
        "{plain:?}"
    );
    gw.expect_event(
        104,
        |e| field_str(e, "reason").as_deref() == Some("proxy_protocol"),
        T,
        "proxy_protocol refusal",
    );
}

#[test]
fn missing_malformed_and_late_headers_are_104_and_closed() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(
        config()
            .upstream("ok.test", up.port())
            .limit("header_timeout", "1s"),
    ) else {
        return;
    };
    let to = gw.addrs()[1];
    let head = connect_head(&target);
    let mut bad_version = v2("192.0.2.1:1", to);
    bad_version[12] = 0x11;
    let mut huge = v2("192.0.2.1:1", to);
    huge[14..16].copy_from_slice(&[0xff, 0xff]);
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("no header", Vec::new(), "no PROXY protocol header"),
        (
            "v1 without ports",
            b"PROXY TCP4 192.0.2.1 127.0.0.1\r\n".to_vec(),
            "malformed PROXY v1",
        ),
        ("v2 version 1", bad_version, "unsupported version"),
        ("v2 of 64 KiB", huge, "longer than the 1024 bytes"),
        (
            "v1 without CRLF",
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat(),
            "longer than 107",
        ),
    ];
    for (what, header, detail) in cases {
        let (mut s, r) = send(to, &header, head.as_bytes());
        if let Ok(r) = &r {
            panic!("{what}: no answer expected, got {:?}", r.head);
        }
        closed_unanswered(&gw, &mut s, what);
        gw.expect_event(
            104,
            |e| {
                field_str(e, "reason").as_deref() == Some("proxy_protocol")
                    && field_str(e, "detail").is_some_and(|d| d.contains(detail))
            },
            T,
            what,
        );
    }
    // Half a header, then nothing: closed at header_timeout, unanswered.
    let started = Instant::now();
    let mut s = connect(to);
    s.write_all(b"PROXY TCP4 192.0").expect("write");
    closed_unanswered(&gw, &mut s, "half a header");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed at header_timeout (1s), took {took:?}"
    );
    gw.expect_event(
        104,
        |e| field_str(e, "detail").is_some_and(|d| d.contains("within header_timeout")),
        T,
        "header_timeout",
    );
    expect_rejection_metric(&gw, "proxy_protocol", 6.0);
}

#[test]
fn an_untrusted_source_is_closed_unanswered_105() {
    if let Err(e) = std::net::TcpListener::bind("127.0.0.2:0") {
        eprintln!("SKIP: cannot bind 127.0.0.2 on this machine ({e})");
        return;
    }
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(config().upstream("ok.test", up.port())) else {
        return;
    };
    let to = gw.addrs()[1];
    for header in [v1("192.0.2.1:1", to), v2("192.0.2.1:1", to)] {
        let mut s = connect_from("127.0.0.2", to).expect("connect from 127.0.0.2");
        let mut all = header.clone();
        all.extend_from_slice(connect_head(&target).as_bytes());
        let _ = s.write_all(&all);
        closed_unanswered(&gw, &mut s, "untrusted source");
    }
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("proxy_protocol_untrusted"),
        T,
        "proxy_protocol_untrusted",
    );
    assert!(
        field_str(&ev, "client").is_some_and(|c| c.starts_with("127.0.0.2:")),
        "the event names the socket's peer: {ev}"
    );
    expect_rejection_metric(&gw, "proxy_protocol_untrusted", 2.0);
    // The same header from the trusted source goes through.
    let _s = tunnel_as(&gw, "192.0.2.1:1", &target);
}

#[test]
fn client_networks_apply_to_the_header_address() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(
        config()
            .upstream("ok.test", up.port())
            .raw("allowed_client_networks: [\"192.0.2.0/24\"]"),
    ) else {
        return;
    };
    let to = gw.addrs()[1];
    let _admitted = tunnel_as(&gw, "192.0.2.20:5000", &target);
    let (mut s, r) = send(
        to,
        &v2("198.51.100.20:5000", to),
        connect_head(&target).as_bytes(),
    );
    assert!(r.is_err(), "refused client gets no answer: {r:?}");
    closed_unanswered(
        &gw,
        &mut s,
        "header address outside allowed_client_networks",
    );
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("client_network"),
        T,
        "client_network refusal",
    );
    assert_eq!(
        field_str(&ev, "client").as_deref(),
        Some("198.51.100.20:5000"),
        "{ev}"
    );
    // The balancer itself (127.0.0.1) is not in the list: a plain connection from it is refused.
    let mut plain = connect(gw.addrs()[0]);
    let _ = plain.write_all(connect_head(&target).as_bytes());
    closed_unanswered(&gw, &mut plain, "balancer on the plain listener");
}

#[test]
fn five_bad_logins_lock_out_only_that_header_address() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let dir = TempDir::new("proxy-auth");
    let users = dir.path().join("users");
    // bcrypt at its lowest cost: each check is quick even on a loaded machine (argon2 from
    // `splicegate user add` takes seconds there, past the password check's timeout).
    let hash = bcrypt::hash("pw", 4).expect("bcrypt hash");
    std::fs::write(&users, format!("alice:{hash}\n")).expect("write users file");
    let Some(gw) = Gateway::start(config().upstream("ok.test", up.port()).raw(&format!(
        "client_auth:\n  users_file: {}\n  max_failures: 5\n  failure_window: 60s\n",
        yq(&users.display().to_string())
    ))) else {
        return;
    };
    let to = gw.addrs()[1];
    let login = |source: &str, password: &str| -> u16 {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
        let head = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n"
        );
        let (_s, r) = send(to, &v1(source, to), head.as_bytes());
        r.unwrap_or_else(|e| panic!("{source}: {e}\nlog:\n{}", gw.log_dump()))
            .status
    };
    for i in 0..5 {
        assert_eq!(login("192.0.2.30:1000", "guess"), 407, "bad login {i}");
    }
    assert_eq!(
        login("192.0.2.30:1001", "pw"),
        429,
        "after five failures the agent is locked out, whatever its port"
    );
    assert_eq!(
        login("192.0.2.31:1000", "pw"),
        200,
        "another agent behind the same balancer is not"
    );
}

#[test]
fn connected_clients_counts_header_addresses_and_not_local() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(config().upstream("ok.test", up.port())) else {
        return;
    };
    let to = gw.addrs()[1];
    let a1 = tunnel_as(&gw, "192.0.2.40:1", &target);
    let a2 = tunnel_as(&gw, "192.0.2.40:2", &target);
    let b = tunnel_as(&gw, "192.0.2.41:1", &target);
    // A LOCAL connection (a health check that also tunnels) is served with the socket's
    // address and not counted.
    let (mut local, r) = send(to, &v2_local(), connect_head(&target).as_bytes());
    assert_eq!(r.expect("LOCAL answered").status, 200);
    echo_roundtrip(&mut local, b"local");
    let n = gw.wait_metric("splicegate_connected_clients", |v| v == 2.0, T);
    assert_eq!(
        n, 2.0,
        "two agents (192.0.2.40, 192.0.2.41), the balancer not counted"
    );
    drop((a1, a2, b, local));
    let n = gw.wait_metric("splicegate_connected_clients", |v| v == 0.0, T);
    assert_eq!(
        n, 0.0,
        "counts undone with the addresses they were made with"
    );
    tunnel_closed_for(&gw, "192.0.2.41:1");
}

/// Opens `n` connections from `open`, returning the statuses; the open tunnels are kept.
fn statuses(
    n: usize,
    open: impl Fn() -> (TcpStream, io::Result<Response>),
) -> (Vec<u16>, Vec<TcpStream>) {
    let mut codes = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..n {
        let (s, r) = open();
        let code = r.map_or(0, |r| r.status);
        codes.push(code);
        if code == 200 {
            kept.push(s);
        }
    }
    (codes, kept)
}

#[test]
fn per_client_limit_holds_across_workers() {
    if let Err(e) = std::net::TcpListener::bind("127.0.0.2:0") {
        eprintln!("SKIP: cannot bind 127.0.0.2 on this machine ({e})");
        return;
    }
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(
        config()
            .workers(2)
            .upstream("ok.test", up.port())
            .limit("max_connections_per_client", "2"),
    ) else {
        return;
    };
    let plain = gw.addrs()[0];
    // Six connections from one address over two SO_REUSEPORT workers: a count per worker
    // would let three or four through.
    let (codes, kept) = statuses(6, || request(plain, connect_head(&target).as_bytes()));
    assert_eq!(
        codes.iter().filter(|&&c| c == 200).count(),
        2,
        "{codes:?}\nlog:\n{}",
        gw.log_dump()
    );
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 4, "{codes:?}");
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("client_limit"),
        T,
        "client_limit",
    );
    assert_eq!(field_u64(&ev, "status"), Some(429), "{ev}");
    expect_rejection_metric(&gw, "client_limit", 4.0);
    // Another address still gets in.
    let other = connect_from("127.0.0.2", plain).expect("connect from 127.0.0.2");
    let mut other_s = other;
    other_s
        .write_all(connect_head(&target).as_bytes())
        .expect("write");
    let r = read_response_head(&mut other_s).expect("answer for 127.0.0.2");
    assert_eq!(r.status, 200, "{:?}", r.head);
    // Closing one gives its place back (released once: exactly one more fits).
    let mut kept = kept;
    drop(kept.pop());
    let deadline = Instant::now() + T;
    let again = loop {
        let (s, r) = request(plain, connect_head(&target).as_bytes());
        match r.map(|r| r.status) {
            Ok(200) => break s,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("after a close, one more should fit: {other:?}"),
        }
    };
    let (s, r) = request(plain, connect_head(&target).as_bytes());
    assert_eq!(r.map(|r| r.status).ok(), Some(429), "and only one");
    drop((again, s, kept));
}

#[test]
fn per_client_limit_uses_the_header_address_and_ipv6_64() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let Some(gw) = Gateway::start(
        config()
            .upstream("ok.test", up.port())
            .limit("max_connections_per_client", "1"),
    ) else {
        return;
    };
    let to = gw.addrs()[1];
    let head = connect_head(&target);
    let open = |header: Vec<u8>| send(to, &header, head.as_bytes());
    let (a, r) = open(v1("192.0.2.50:1", to));
    assert_eq!(r.map(|r| r.status).ok(), Some(200));
    let (_a2, r) = open(v2("192.0.2.50:2", to));
    let r = r.expect("an answer");
    assert_eq!(
        r.status, 429,
        "the second connection of 192.0.2.50: {:?}",
        r.head
    );
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("client_limit"),
        T,
        "client_limit behind the balancer",
    );
    assert_eq!(
        field_str(&ev, "client").as_deref(),
        Some("192.0.2.50:2"),
        "{ev}"
    );
    let (b, r) = open(v1("192.0.2.51:1", to));
    assert_eq!(
        r.map(|r| r.status).ok(),
        Some(200),
        "another agent, same balancer"
    );
    // LOCAL connections are the balancer's, not a client's: not limited.
    let (l1, r1) = open(v2_local());
    let (l2, r2) = open(v2_local());
    assert_eq!(r1.map(|r| r.status).ok(), Some(200));
    assert_eq!(r2.map(|r| r.status).ok(), Some(200));
    // IPv6 clients count per /64.
    let (c, r) = open(v2("[2001:db8:0:1::1]:1", to));
    assert_eq!(r.map(|r| r.status).ok(), Some(200));
    let (_c2, r) = open(v2("[2001:db8:0:1::2]:1", to));
    assert_eq!(
        r.map(|r| r.status).ok(),
        Some(429),
        "another address of the same /64 is the same client"
    );
    let (d, r) = open(v2("[2001:db8:0:2::1]:1", to));
    assert_eq!(
        r.map(|r| r.status).ok(),
        Some(200),
        "the next /64 is another"
    );
    drop((a, b, c, d, l1, l2));
}

/// A reload that changes only a listener's PROXY settings takes effect on the same port: the
/// new engine takes the socket over with the new `proxy_from`, then without the protocol.
#[test]
fn a_reload_changes_proxy_settings_on_the_same_port() {
    let up = Upstream::echo();
    let target = format!("ok.test:{}", up.port());
    let untrusting =
        "{address: \"127.0.0.1:0\", proxy_protocol: true, proxy_from: [\"127.0.0.2/32\"]}";
    let cfg = |proxy: &str| {
        Config::new()
            .listen(&["127.0.0.1:0", proxy])
            .upstream("ok.test", up.port())
    };
    let Some(gw) = Gateway::start(cfg(untrusting)) else {
        return;
    };
    let to = gw.addrs()[1];
    let (mut s, r) = send(
        to,
        &v1("192.0.2.60:1", to),
        connect_head(&target).as_bytes(),
    );
    assert!(r.is_err(), "127.0.0.1 is not in proxy_from yet: {r:?}");
    closed_unanswered(&gw, &mut s, "before the reload");

    // The file watch and SIGHUP both reload; wait for the reload that made this change.
    std::fs::write(gw.config_path(), cfg(PROXY_LISTENER).render()).expect("write config");
    gw.signal(libc::SIGHUP);
    reloaded_with(
        &gw,
        "from [127.0.0.2/32]] -> [127.0.0.1:0 from [127.0.0.1/32]]",
    );
    let (mut s, r) = send(
        to,
        &v1("192.0.2.60:2", to),
        connect_head(&target).as_bytes(),
    );
    let r = r.unwrap_or_else(|e| panic!("after the reload: {e}\nlog:\n{}", gw.log_dump()));
    assert_eq!(
        r.status, 200,
        "after the reload 127.0.0.1 is trusted: {:?}",
        r.head
    );
    echo_roundtrip(&mut s, b"trusted now");

    // Off again: the same port takes plain CONNECTs.
    std::fs::write(gw.config_path(), cfg("127.0.0.1:0").render()).expect("write config");
    gw.signal(libc::SIGHUP);
    reloaded_with(&gw, "from [127.0.0.1/32]] -> []");
    let mut plain = open_tunnel(to, &target);
    echo_roundtrip(&mut plain, b"plain again");
    assert!(gw.metric_value(RELOADS_OK) >= 2.0);
}

/// Waits for the reload event (100) whose `changes` contain `change`.
fn reloaded_with(gw: &Gateway, change: &str) {
    gw.expect_event(
        100,
        |e| field_str(e, "changes").is_some_and(|c| c.contains(change)),
        T,
        &format!("reload with {change}"),
    );
}
