//! Data plane: end to end with curl and TLS, half-close, early data, idle timeout, tunnel events.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

const UP: &str = "up.splicegate.test";

fn curl(args: &[&str]) -> std::process::Output {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (is curl installed? see scripts/install-test-deps.sh)");
    eprintln!(
        "curl {args:?} -> {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_s_server_page(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "curl failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("s_server -www") && body.contains("<HTML>"),
        "body does not look like openssl s_server's -www page:\n{body}"
    );
}

#[test]
fn curl_https_through_gateway_to_tls_upstream() {
    let tls = TlsUpstream::start();
    // TLS inspection on, with its defaults: curl's hello passes (TLS 1.3, SNI = CONNECT host).
    let cfg = Config::new()
        .allow_host("*.ods.opinsights.azure.com")
        .map_host(TLS_NAME, "127.0.0.1")
        .port(tls.port())
        .loopback_networks()
        .inspect_tls(&[]);
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let proxy = format!("http://127.0.0.1:{}", gw.addr().port());
    let url = format!("https://{TLS_NAME}:{}/", tls.port());
    let cert = tls.cert().to_str().unwrap().to_string();
    let out = curl(&["-p", "-x", &proxy, "--cacert", &cert, &url]);
    assert_s_server_page(&out);
    let verified = gw.expect_event(
        107,
        |_| true,
        Duration::from_secs(5),
        "TLS session verified",
    );
    assert_eq!(field_str(&verified, "sni").as_deref(), Some(TLS_NAME));

    // The tunnel is logged as established and, once curl is gone, closed with byte counts.
    let closed = gw.expect_event(
        100,
        |e| field_str(e, "message").is_some_and(|m| m.contains("tunnel closed")),
        Duration::from_secs(5),
        "tunnel closed",
    );
    let up = field_u64(&closed, "bytes_up").expect("bytes_up on tunnel closed");
    let down = field_u64(&closed, "bytes_down").expect("bytes_down on tunnel closed");
    assert!(
        up > 100,
        "TLS client hello + request went up, bytes_up={up}"
    );
    assert!(
        down > 1000,
        "certificate + page came down, bytes_down={down}"
    );
    assert!(
        gw.events(100)
            .iter()
            .any(|e| field_str(e, "message").is_some_and(|m| m.contains("tunnel established"))),
        "a `tunnel established` event 100 is logged"
    );
}

#[test]
fn curl_via_ipv6_listener() {
    if !ipv6_available() {
        eprintln!("SKIP: ::1 is not available on this machine");
        return;
    }
    let tls = TlsUpstream::start();
    let cfg = Config::new()
        .listen(&["127.0.0.1:0", "[::1]:0"])
        .allow_host(TLS_NAME)
        .map_host(TLS_NAME, "127.0.0.1")
        .port(tls.port())
        .loopback_networks();
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let v6 = gw.addrs()[1];
    assert!(v6.is_ipv6(), "second listener is the IPv6 one: {v6}");
    assert!(gw.addrs()[0].is_ipv4(), "first listener is the IPv4 one");
    let proxy = format!("http://[::1]:{}", v6.port());
    let url = format!("https://{TLS_NAME}:{}/", tls.port());
    let cert = tls.cert().to_str().unwrap().to_string();
    let out = curl(&["-p", "--proxy", &proxy, "--cacert", &cert, &url]);
    assert_s_server_page(&out);
}

#[test]
fn response_is_exact_200_and_tunnel_echoes() {
    let up = Upstream::echo();
    let Some(gw) = Gateway::start(Config::new().upstream(UP, up.port())) else {
        return;
    };
    let (mut s, r) = connect_request(gw.addr(), &format!("{UP}:{}", up.port()));
    assert_eq!(r.status, 200, "head {:?}", r.head);
    assert_eq!(r.head, "HTTP/1.1 200 Connection established\r\n\r\n");
    for i in 0..20u64 {
        echo_roundtrip(&mut s, &Pattern::bytes(i, 1 + (i as usize) * 997));
    }
    assert_eq!(up.accepts(), 1);
}

#[test]
fn client_half_close_reaches_upstream_and_reply_flows_back() {
    let x = Pattern::bytes(1, 100_000);
    let y = Pattern::bytes(2, 300_000);
    let (tx, rx) = mpsc::channel();
    let reply = y.clone();
    let up = Upstream::with_handler(move |mut s| {
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got); // needs the client's FIN
        let _ = tx.send((r.map(|_| got), Instant::now()));
        let _ = s.write_all(&reply);
        let _ = s.shutdown(Shutdown::Write);
    });
    let Some(gw) = Gateway::start(Config::new().upstream(UP, up.port())) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    s.write_all(&x).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, _) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream did not see EOF after the client's shutdown(WR)");
    let got = got.expect("upstream read error");
    assert_eq!(got.len(), x.len(), "upstream received all of X before EOF");
    assert_eq!(sha256(&got), sha256(&x), "X arrived byte-exact");
    let (back, kind) = read_until_closed(&mut s, Duration::from_secs(10));
    assert_eq!(
        kind,
        CloseKind::Eof,
        "the upstream's FIN reaches the client as EOF"
    );
    assert_eq!(back.len(), y.len(), "client received all of Y");
    assert_eq!(sha256(&back), sha256(&y), "Y arrived byte-exact");
}

#[test]
fn upstream_half_close_reaches_client_and_client_keeps_sending() {
    let x = Pattern::bytes(3, 200_000);
    let y = Pattern::bytes(4, 50_000);
    let (tx, rx) = mpsc::channel();
    let first = y.clone();
    let up = Upstream::with_handler(move |mut s| {
        let _ = s.write_all(&first);
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        let _ = tx.send(r.map(|_| got));
    });
    let Some(gw) = Gateway::start(Config::new().upstream(UP, up.port())) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    // Read Y up to EOF: the upstream's half-close must arrive while our direction stays open.
    let mut back = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_end(&mut back)
        .expect("client sees the upstream's FIN as EOF (not a timeout or reset)");
    assert_eq!(sha256(&back), sha256(&y), "Y arrived byte-exact before EOF");
    // The other direction keeps flowing after the upstream's FIN.
    s.write_all(&x)
        .expect("client can still send after the upstream half-closed");
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream did not get EOF after the client's shutdown(WR)")
        .expect("upstream read error");
    assert_eq!(got.len(), x.len(), "upstream received all of X");
    assert_eq!(sha256(&got), sha256(&x), "X arrived byte-exact");
    // Both directions are closed: the gateway closes the client connection.
    assert_closes(&mut s, Duration::from_secs(5));
}

#[test]
fn early_data_after_connect_head_is_forwarded_first() {
    let early = Pattern::bytes(5, 1500);
    let (tx, rx) = mpsc::channel();
    let up = Upstream::with_handler(move |mut s| {
        let mut first = vec![0u8; 1500];
        let r1 = s.read_exact(&mut first).map(|_| first);
        let mut more = vec![0u8; 4];
        let r2 = s.read_exact(&mut more).map(|_| more);
        let _ = tx.send((r1, r2));
        let _ = s.write_all(b"DONE");
    });
    let Some(gw) = Gateway::start(Config::new().upstream(UP, up.port())) else {
        return;
    };
    let mut raw = connect_head(&format!("{UP}:{}", up.port())).into_bytes();
    raw.extend_from_slice(&early);
    // Head and early data in one write.
    let (mut s, r) = request(gw.addr(), &raw);
    let r = r.expect("response head");
    assert_eq!(r.status, 200, "head {:?}", r.head);
    s.write_all(b"MORE").unwrap();
    let (first, more) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream got the early data and MORE");
    let first = first.expect("upstream read early bytes");
    assert_eq!(
        first, early,
        "the first upstream bytes are exactly the early data"
    );
    assert_eq!(more.expect("upstream read MORE"), b"MORE");
    let mut done = [0u8; 4];
    s.read_exact(&mut done).unwrap();
    assert_eq!(&done, b"DONE");
}

#[test]
fn idle_tunnel_is_closed_after_idle_timeout() {
    let up = Upstream::hold();
    let cfg = Config::new()
        .upstream(UP, up.port())
        .limit("idle_timeout", "1s");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    let t0 = Instant::now();
    let (data, _) = read_until_closed(&mut s, Duration::from_secs(6));
    let took = t0.elapsed();
    assert!(data.is_empty(), "no data expected on an idle tunnel");
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before idle_timeout (1s)"
    );
    assert!(took <= Duration::from_secs(5), "closed only after {took:?}");
}

#[test]
fn active_tunnel_is_not_closed_by_idle_timeout() {
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream(UP, up.port())
        .limit("idle_timeout", "1s");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{UP}:{}", up.port()));
    // 3 s of traffic every 250 ms: three idle timeouts' worth, never idle for one.
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(3) && i < 100 {
        echo_roundtrip(&mut s, &Pattern::bytes(i, 64));
        std::thread::sleep(Duration::from_millis(250));
        i += 1;
    }
    assert!(i >= 8, "made {i} round trips");
}

#[test]
fn tunnel_closed_event_counts_bytes_exactly() {
    let up = Upstream::with_handler(|mut s| {
        let mut buf = vec![0u8; 1000];
        if s.read_exact(&mut buf).is_ok() {
            let _ = s.write_all(&Pattern::bytes(9, 2500));
        }
        // Close after the client's FIN.
        let _ = s.read_to_end(&mut Vec::new());
    });
    let Some(gw) = Gateway::start(Config::new().upstream(UP, up.port())) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    let mut s = open_tunnel(gw.addr(), &target);
    s.write_all(&Pattern::bytes(8, 1000)).unwrap();
    let mut back = vec![0u8; 2500];
    s.read_exact(&mut back).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_closes(&mut s, Duration::from_secs(5));
    let ev = gw.expect_event(
        100,
        |e| field_str(e, "message").is_some_and(|m| m.contains("tunnel closed")),
        Duration::from_secs(5),
        "tunnel closed",
    );
    assert_eq!(field_u64(&ev, "bytes_up"), Some(1000), "event: {ev}");
    assert_eq!(field_u64(&ev, "bytes_down"), Some(2500), "event: {ev}");
    assert!(
        gw.wait_event(
            100,
            |e| field_str(e, "message").is_some_and(|m| m.contains("tunnel established")),
            Duration::from_secs(1)
        )
        .is_some(),
        "tunnel established event 100"
    );
    // CONNECT received is debug level: not shown at the default level.
    assert!(gw.events(103).is_empty(), "event 103 is debug-only");
}
