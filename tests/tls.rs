//! TLS inspection inside the tunnel, with real clients and servers: `openssl s_client -proxy`
//! through the gateway to `openssl s_server`, plus hand-made records on raw sockets.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const NAME: &str = "ws1.tls.test";

/// A CA, a server certificate for `NAME`, and client certificates `agent01` and `agent02`.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("pki");
        let p = |f: &str| dir.path().join(f);
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=splicegate-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        dir.write(
            "server.ext",
            &format!("subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\n"),
        );
        dir.write(
            "client.ext",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        for (name, subj, ext) in [
            ("server", format!("/CN={NAME}"), "server.ext"),
            ("agent01", "/CN=agent01".to_owned(), "client.ext"),
            ("agent02", "/CN=agent02".to_owned(), "client.ext"),
        ] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &subj,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        let _ = p;
        Pki { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

/// `openssl s_server` on 127.0.0.1 with the PKI's server certificate; `extra` adds options
/// such as `-Verify 1 -tls1_2`.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(pki: &Pki, extra: &[&str]) -> Server {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("openssl")
                .args([
                    "s_server",
                    "-accept",
                    &format!("127.0.0.1:{port}"),
                    "-naccept",
                    "1000",
                ])
                .arg("-cert")
                .arg(pki.path("server.pem"))
                .arg("-key")
                .arg(pki.path("server.key"))
                .arg("-CAfile")
                .arg(pki.path("ca.pem"))
                .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn openssl s_server");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Server { child, port };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(port: u16, tls_keys: &[&str]) -> Option<Gateway> {
    Gateway::start(
        Config::new()
            .allow_host(NAME)
            .map_host(NAME, "127.0.0.1")
            .port(port)
            .loopback_networks()
            .inspect_tls(tls_keys),
    )
}

/// `openssl s_client` through the gateway; returns its output. Stdin is closed, so a client
/// whose handshake succeeds exits 0 right after it.
fn s_client(gw: &Gateway, port: u16, pki: &Pki, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .args([
            "s_client",
            "-proxy",
            &format!("127.0.0.1:{}", gw.addr().port()),
        ])
        .args(["-connect", &format!("{NAME}:{port}")])
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .args(["-verify_return_error", "-cipher", "DEFAULT:@SECLEVEL=0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    eprintln!(
        "s_client {args:?} -> {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn connected(out: &Output) -> bool {
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && (text.contains("Verify return code: 0") || text.contains("Verification: OK"))
}

fn refusal(gw: &Gateway, id: u64, label: &str) -> serde_json::Value {
    let ev = gw.expect_event(
        id,
        |e| field_str(e, "reason").as_deref() == Some(label),
        Duration::from_secs(10),
        label,
    );
    let counted = gw.wait_metric(
        &format!("splicegate_rejections_total{{reason=\"{label}\"}}"),
        |v| v >= 1.0,
        Duration::from_secs(5),
    );
    assert!(counted >= 1.0, "{label} refusal counted: {counted}");
    ev
}

fn verified(gw: &Gateway, version: &str) -> serde_json::Value {
    let ev = gw.expect_event(
        107,
        |e| field_str(e, "version").as_deref() == Some(version),
        Duration::from_secs(10),
        "TLS session verified",
    );
    let counted = gw.wait_metric(
        &format!("splicegate_tls_sessions_verified_total{{version=\"{version}\"}}"),
        |v| v >= 1.0,
        Duration::from_secs(5),
    );
    assert!(counted >= 1.0, "TLS {version} session counted: {counted}");
    ev
}

#[test]
fn versions_pass_or_are_refused_by_min_version() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let Some(gw) = gateway(server.port, &["min_version: \"1.2\""]) else {
        return;
    };
    for (flag, version) in [("-tls1_2", "1.2"), ("-tls1_3", "1.3")] {
        let out = s_client(&gw, server.port, &pki, &[flag, "-servername", NAME]);
        assert!(connected(&out), "{flag} must pass");
        let ev = verified(&gw, version);
        assert_eq!(field_str(&ev, "sni").as_deref(), Some(NAME));
    }
    for flag in ["-tls1", "-tls1_1"] {
        let out = s_client(&gw, server.port, &pki, &[flag, "-servername", NAME]);
        assert!(!connected(&out), "{flag} must be refused");
    }
    let ev = refusal(&gw, 106, "tls_version");
    assert!(
        matches!(
            field_str(&ev, "version").as_deref(),
            Some("1.0") | Some("1.1")
        ),
        "{ev}"
    );
    let refused = gw.metric_value("splicegate_rejections_total{reason=\"tls_version\"}");
    assert!(refused >= 2.0, "both old versions counted, got {refused}");
    assert!(gw.metric_value("splicegate_tls_inspect_seconds_count") >= 4.0);
}

#[test]
fn old_versions_pass_when_min_version_allows_them() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["-tls1"]);
    let Some(gw) = gateway(server.port, &["min_version: \"1.0\""]) else {
        return;
    };
    let out = s_client(&gw, server.port, &pki, &["-tls1", "-servername", NAME]);
    assert!(connected(&out), "TLS 1.0 allowed by min_version 1.0");
    verified(&gw, "1.0");
}

#[test]
fn sni_wrong_or_absent_is_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let Some(gw) = gateway(server.port, &[]) else {
        return;
    };
    let out = s_client(&gw, server.port, &pki, &["-servername", "other.example"]);
    assert!(!connected(&out));
    let ev = refusal(&gw, 105, "sni_mismatch");
    let text = ev.to_string();
    assert!(
        text.contains("other.example") && text.contains(NAME),
        "both names in the event: {ev}"
    );

    let out = s_client(&gw, server.port, &pki, &["-noservername"]);
    assert!(!connected(&out));
    refusal(&gw, 105, "sni_missing");

    // Case and trailing dot do not matter.
    let out = s_client(&gw, server.port, &pki, &["-servername", "WS1.TLS.TEST"]);
    assert!(connected(&out), "SNI compared case-insensitively");
}

#[test]
fn client_certificate_allowlist_tls12() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["-Verify", "1", "-tls1_2"]);
    let Some(gw) = gateway(
        server.port,
        &["allowed_client_certificates: [\"CN=agent01\"]"],
    ) else {
        return;
    };
    let cert = |n: &str| {
        [
            "-cert".to_owned(),
            pki.path(&format!("{n}.pem")).display().to_string(),
            "-key".to_owned(),
            pki.path(&format!("{n}.key")).display().to_string(),
        ]
    };
    let a1 = cert("agent01");
    let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    let mut args = vec!["-tls1_2", "-servername", NAME];
    args.extend(&a1);
    let out = s_client(&gw, server.port, &pki, &args);
    assert!(connected(&out), "agent01 is on the list");
    let ev = verified(&gw, "1.2");
    assert!(ev.to_string().contains("CN=agent01"), "{ev}");

    let a2 = cert("agent02");
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    let mut args = vec!["-tls1_2", "-servername", NAME];
    args.extend(&a2);
    let out = s_client(&gw, server.port, &pki, &args);
    assert!(!connected(&out), "agent02 is refused");
    let ev = gw.expect_event(
        105,
        |e| {
            e.to_string()
                .contains("Invalid client certificate: CN=agent02")
        },
        Duration::from_secs(10),
        "Invalid client certificate: CN=agent02",
    );
    assert_eq!(field_str(&ev, "reason").as_deref(), Some("client_cert"));

    let out = s_client(&gw, server.port, &pki, &["-tls1_2", "-servername", NAME]);
    assert!(!connected(&out), "no certificate is refused");
    assert!(gw.metric_value("splicegate_rejections_total{reason=\"client_cert\"}") >= 2.0);
}

#[test]
fn client_certificate_check_in_tls13_follows_the_policy() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let Some(gw) = gateway(
        server.port,
        &[
            "allowed_client_certificates: [\"CN=agent01\"]",
            "tls13_client_certificate: deny",
        ],
    ) else {
        return;
    };
    let out = s_client(&gw, server.port, &pki, &["-tls1_3", "-servername", NAME]);
    assert!(
        !connected(&out),
        "TLS 1.3 refused by tls13_client_certificate: deny"
    );
    let ev = refusal(&gw, 105, "client_cert");
    assert!(ev.to_string().contains("tls13_client_certificate"), "{ev}");
    drop(gw);

    let Some(gw) = gateway(
        server.port,
        &[
            "allowed_client_certificates: [\"CN=agent01\"]",
            "tls13_client_certificate: allow",
        ],
    ) else {
        return;
    };
    let out = s_client(&gw, server.port, &pki, &["-tls1_3", "-servername", NAME]);
    assert!(
        connected(&out),
        "TLS 1.3 allowed by tls13_client_certificate: allow"
    );
    let ev = verified(&gw, "1.3");
    assert!(
        ev.to_string().contains("tls13_client_certificate"),
        "the deciding policy is logged: {ev}"
    );
}

/// Raw CONNECT through the gateway to an upstream that counts bytes; returns the stream.
fn raw_tunnel(gw: &Gateway, port: u16) -> TcpStream {
    open_tunnel(gw.addr(), &format!("{NAME}:{port}"))
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn hand_made_records_are_judged() {
    // Each upstream connection reports how many bytes reached it before the gateway closed it.
    let (tx, rx) = std::sync::mpsc::channel();
    let up = Upstream::sink(tx);
    let Some(gw) = gateway(up.port(), &["require_sni_match: false"]) else {
        return;
    };
    // SSLv2-format hello (high bit length, type 1, version 3.1).
    let mut s = raw_tunnel(&gw, up.port());
    s.write_all(&[
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ])
    .unwrap();
    s.write_all(&[0u8; 37]).unwrap();
    assert_closes(&mut s, Duration::from_secs(5));
    refusal(&gw, 106, "tls_version");

    // Garbage and plain HTTP: event 402.
    for junk in [
        &b"\x00\x01\x02\x03garbage"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = raw_tunnel(&gw, up.port());
        s.write_all(junk).unwrap();
        assert_closes(&mut s, Duration::from_secs(5));
    }
    refusal(&gw, 402, "tls_parse");
    // Three tunnels were opened (so three upstream connections) and each was refused at its
    // hello: every one of them closes having received nothing.
    for i in 0..3 {
        let (bytes, _) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("upstream connection {i} not closed: {e}"));
        assert_eq!(bytes, 0, "a refused hello reached the upstream");
    }
    assert_eq!(up.accepts(), 3);
    assert!(
        gw.metric_value("splicegate_rejections_total{reason=\"tls_parse\"}") >= 2.0,
        "both counted"
    );
}

#[test]
fn hello_split_one_byte_per_segment_passes_unchanged() {
    let (tx, rx) = std::sync::mpsc::channel();
    let hello = fixture("hello_tls12.bin");
    let n = hello.len();
    let up = Upstream::with_handler(move |mut s| {
        let mut got = vec![0u8; n];
        if s.read_exact(&mut got).is_ok() {
            let _ = tx.send(got);
        }
    });
    let Some(gw) = gateway(up.port(), &["require_sni_match: false"]) else {
        return;
    };
    let mut s = raw_tunnel(&gw, up.port());
    s.set_nodelay(true).unwrap();
    for b in &hello {
        s.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream got the hello");
    assert_eq!(
        got, hello,
        "the ClientHello reaches the upstream byte for byte"
    );
    verified(&gw, "1.2");
}

#[test]
fn truncated_hello_then_silence_closes_at_hello_timeout() {
    let up = Upstream::hold();
    let Some(gw) = gateway(
        up.port(),
        &["hello_timeout: 1s", "require_sni_match: false"],
    ) else {
        return;
    };
    let hello = fixture("hello_tls13.bin");
    let mut s = raw_tunnel(&gw, up.port());
    let t0 = Instant::now();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    assert_closes(&mut s, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed at hello_timeout (1 s), took {took:?}"
    );
    let ev = refusal(&gw, 402, "tls_parse");
    assert!(ev.to_string().contains("hello_timeout"), "{ev}");
}

#[test]
fn inspection_off_is_a_plain_tunnel() {
    let up = Upstream::echo();
    let Some(gw) = Gateway::start(
        Config::new()
            .allow_host(NAME)
            .map_host(NAME, "127.0.0.1")
            .port(up.port())
            .loopback_networks()
            .raw("# tls.inspect false comes from the harness default\n"),
    ) else {
        return;
    };
    let mut s = raw_tunnel(&gw, up.port());
    echo_roundtrip(&mut s, b"not TLS at all");
    assert!(gw.events(107).is_empty() && gw.events(402).is_empty());
}

/// `openssl s_client` through the gateway to `target` (any authority, e.g. an IP literal).
fn s_client_to(gw: &Gateway, target: &str, pki: &Pki, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .args([
            "s_client",
            "-proxy",
            &format!("127.0.0.1:{}", gw.addr().port()),
        ])
        .args(["-connect", target])
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .args(["-verify_return_error", "-cipher", "DEFAULT:@SECLEVEL=0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    eprintln!(
        "s_client {target} {args:?} -> {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An IP-literal CONNECT passes only without SNI: there is no name to send for an address
/// (`require_sni` does not apply), and a name that is sent is another host's (fronting).
#[test]
fn ip_literal_connect_passes_only_without_sni() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let literal_gateway = |port: u16| {
        Gateway::start(
            Config::new()
                .allow_host("127.0.0.1")
                .port(port)
                .loopback_networks()
                .inspect_tls(&[]),
        )
    };
    let Some(gw) = literal_gateway(server.port) else {
        return;
    };
    let target = format!("127.0.0.1:{}", server.port);
    let out = s_client_to(&gw, &target, &pki, &["-noservername"]);
    assert!(connected(&out), "no SNI for an IP literal passes");
    let ev = gw.expect_event(107, |_| true, Duration::from_secs(10), "verified");
    assert_eq!(field_str(&ev, "sni").as_deref(), Some(""), "{ev}");

    let out = s_client_to(&gw, &target, &pki, &["-servername", NAME]);
    assert!(
        !connected(&out),
        "an SNI on an IP-literal CONNECT is refused"
    );
    let ev = refusal(&gw, 105, "sni_mismatch");
    let text = ev.to_string();
    assert!(
        text.contains(NAME) && text.contains("127.0.0.1"),
        "both the SNI and the literal in the event: {ev}"
    );
    drop(gw);

    // Byte-exact: the refused hello never reaches the upstream; the one without SNI does,
    // unchanged.
    let (tx, rx) = std::sync::mpsc::channel();
    let up = Upstream::sink(tx);
    let Some(gw) = literal_gateway(up.port()) else {
        return;
    };
    let target = format!("127.0.0.1:{}", up.port());
    let with_sni = fixture("hello_tls12.bin");
    let mut s = open_tunnel(gw.addr(), &target);
    s.write_all(&with_sni).unwrap();
    assert_closes(&mut s, Duration::from_secs(5));
    let (n, _) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream connection was closed");
    assert_eq!(n, 0, "no byte of the refused hello reached the upstream");
    let ev = refusal(&gw, 105, "sni_mismatch");
    assert!(ev.to_string().contains("a.example"), "{ev}");

    let no_sni = fixture("hello_nosni.bin");
    let mut s = open_tunnel(gw.addr(), &target);
    s.write_all(&no_sni).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, digest) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream got the hello and the end of stream");
    assert_eq!(n, no_sni.len() as u64);
    assert_eq!(digest, sha256(&no_sni), "forwarded unchanged");
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"sni_mismatch\"}"),
        1.0
    );
}
