//! The relay (upstream) proxy, against a real Squid with basic authentication started on
//! loopback by the test (Debian's `squid` and `apache2-utils`, installed by
//! scripts/install-test-deps.sh).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

const USER: &str = "agent-gw";
const PASSWORD: &str = "s3cret pass";
/// Allowed by the gateway and by Squid; Squid resolves it through its own hosts file.
const NAME: &str = "ws1.relay.test";
/// Allowed by the gateway, refused by Squid's ACL.
const BLOCKED: &str = "blocked.relay.test";

/// A Squid on 127.0.0.1 that requires basic auth, resolves `NAME`, `BLOCKED` and `TLS_NAME` to
/// 127.0.0.1 from its own hosts file, allows CONNECT only to `ports`, and refuses `BLOCKED`.
struct Squid {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Squid {
    fn start(ports: &[u16]) -> Option<Squid> {
        let squid = ["/usr/sbin/squid", "/usr/bin/squid"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let auth = "/usr/lib/squid/basic_ncsa_auth";
        let (Some(squid), true) = (squid, Path::new(auth).exists()) else {
            eprintln!("SKIP: squid is not installed (scripts/install-test-deps.sh installs it)");
            return None;
        };
        let dir = TempDir::new("squid");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-b", "-c", "-B"])
            .arg(&htpasswd)
            .args([USER, PASSWORD])
            .output()
            .expect("run htpasswd (apache2-utils)");
        assert!(out.status.success(), "htpasswd: {out:?}");
        std::fs::set_permissions(&htpasswd, std::fs::Permissions::from_mode(0o644)).unwrap();
        let hosts = dir.write("hosts", &format!("127.0.0.1 {NAME} {BLOCKED} {TLS_NAME}\n"));
        let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        let ports = ports.join(" ");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename none\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             cache_log {d}/cache.log\n\
             access_log {d}/access.log\n\
             coredump_dir {d}\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.0.1\n\
             shutdown_lifetime 0 seconds\n\
             auth_param basic program {auth} {htpasswd}\n\
             auth_param basic realm splicegate-test\n\
             acl authed proxy_auth REQUIRED\n\
             acl tunnel_ports port {ports}\n\
             acl CONNECT method CONNECT\n\
             acl blocked dstdomain {BLOCKED}\n\
             http_access deny !CONNECT\n\
             http_access deny !tunnel_ports\n\
             http_access deny blocked\n\
             http_access allow authed\n\
             http_access deny all\n",
            hosts = hosts.display(),
            htpasswd = htpasswd.display(),
        );
        let conf_path = dir.write("squid.conf", &conf);
        let child = Command::new(squid)
            .args(["-N", "-f"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn squid");
        let squid = Squid { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "squid did not listen on {port} within 20 s; cache.log:\n{}",
                std::fs::read_to_string(squid.dir.path().join("cache.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(squid)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A password file readable only by its owner.
fn password_file(dir: &TempDir, password: &str) -> PathBuf {
    let p = dir.write("relay-password", &format!("{password}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn relay_yaml(address: &str, password_file: Option<&Path>) -> String {
    let mut y = format!("relay_proxy:\n  address: {}\n", yq(address));
    if let Some(p) = password_file {
        y.push_str(&format!(
            "  username: {}\n  password_file: {}\n",
            yq(USER),
            yq(&p.display().to_string())
        ));
    }
    y
}

/// A gateway that allows `NAME` and `BLOCKED` on `port` and relays through `relay`. No `hosts:`
/// entry and no loopback exemption: the relay resolves the names, not the gateway.
fn gateway(port: u16, relay: &str, extra: impl FnOnce(Config) -> Config) -> Option<Gateway> {
    let cfg = Config::new()
        .allow_host(NAME)
        .allow_host(BLOCKED)
        .port(port)
        .raw(relay);
    Gateway::start(extra(cfg))
}

fn network_error(gw: &Gateway, kind: &str) -> serde_json::Value {
    gw.expect_event(
        403,
        |e| field_str(e, "reason").as_deref() == Some(kind),
        Duration::from_secs(10),
        kind,
    )
}

#[test]
fn curl_through_gateway_and_squid_reaches_tls_upstream() {
    let tls = TlsUpstream::start();
    let Some(squid) = Squid::start(&[tls.port()]) else {
        return;
    };
    let dir = TempDir::new("relay-curl");
    let pw = password_file(&dir, PASSWORD);
    let relay = relay_yaml(&squid.url(), Some(&pw));
    // TLS inspection on: the hello is judged on the gateway, then relayed through Squid.
    let Some(gw) = gateway(tls.port(), &relay, |c| {
        c.allow_host(TLS_NAME).inspect_tls(&[])
    }) else {
        return;
    };
    let proxy = format!("http://127.0.0.1:{}", gw.addr().port());
    let url = format!("https://{TLS_NAME}:{}/", tls.port());
    let cert = tls.cert().to_str().unwrap().to_string();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-p",
            "-x",
            &proxy,
            "--cacert",
            &cert,
            &url,
        ])
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("s_server -www"),
        "curl through gateway and squid failed: {:?}\nstderr: {}\nbody: {body}\nsquid access.log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(squid.dir.path().join("access.log")).unwrap_or_default()
    );
    let ev = gw.expect_event(
        100,
        |e| field_str(e, "message").is_some_and(|m| m.contains("tunnel established")),
        Duration::from_secs(5),
        "tunnel established",
    );
    assert_eq!(field_str(&ev, "via").as_deref(), Some("relay"));
    let verified = gw.expect_event(107, |_| true, Duration::from_secs(5), "TLS verified");
    assert_eq!(field_str(&verified, "sni").as_deref(), Some(TLS_NAME));
    // Squid writes the access log entry when the tunnel ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(squid.dir.path().join("access.log")).unwrap_or_default();
        if log.contains(USER) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log.contains(USER) && log.contains("CONNECT"),
        "squid logged the authenticated CONNECT: {log}"
    );
    assert!(
        !gw.log_dump().contains(PASSWORD),
        "the relay password must never be logged"
    );
}

#[test]
fn bytes_are_exact_through_gateway_and_squid_64_mib() {
    let _heavy = heavy_lock();
    const N: u64 = 64 << 20;
    let (tx, rx) = mpsc::channel();
    let sink = Upstream::sink(tx);
    let (dtx, drx) = mpsc::channel();
    let source = Upstream::send_then_close(N, 7, dtx);
    let Some(squid) = Squid::start(&[sink.port(), source.port()]) else {
        return;
    };
    let dir = TempDir::new("relay-bytes");
    let pw = password_file(&dir, PASSWORD);
    let relay = relay_yaml(&squid.url(), Some(&pw));
    let Some(gw) = gateway(sink.port(), &relay, |c| c) else {
        return;
    };
    // Client -> upstream.
    let mut s = open_tunnel(gw.addr(), &format!("{NAME}:{}", sink.port()));
    let sent = send_pattern(&mut s, N, 11).expect("send 64 MiB");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, got) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("sink result");
    assert_eq!(n, N, "byte count upstream");
    assert_eq!(got, sent, "SHA-256 upstream");
    drop(s);

    // Upstream -> client.
    let Some(gw) = gateway(source.port(), &relay, |c| c) else {
        return;
    };
    let mut s = open_tunnel(gw.addr(), &format!("{NAME}:{}", source.port()));
    let got = read_exact_hash(&mut s, N).expect("read 64 MiB");
    let sent = drx
        .recv_timeout(Duration::from_secs(120))
        .expect("source digest");
    assert_eq!(got, sent, "SHA-256 downstream");
}

#[test]
fn wrong_password_is_502_with_event_403() {
    let up = Upstream::echo();
    let Some(squid) = Squid::start(&[up.port()]) else {
        return;
    };
    let dir = TempDir::new("relay-wrong");
    let pw = password_file(&dir, "not the password");
    let relay = relay_yaml(&squid.url(), Some(&pw));
    let Some(gw) = gateway(up.port(), &relay, |c| c) else {
        return;
    };
    let r = expect_refusal(
        &gw,
        connect_head(&format!("{NAME}:{}", up.port())).as_bytes(),
        502,
    );
    assert_eq!(r.status, 502);
    let ev = network_error(&gw, "relay_auth");
    let detail = field_str(&ev, "detail").unwrap_or_default();
    assert!(
        detail.contains("rejected the credentials") && detail.contains("407"),
        "event names the relay's 407: {ev}"
    );
    expect_error_metric(&gw, "relay_auth", 1.0);
    up.assert_untouched("relay refused our credentials");
    assert!(!gw.log_dump().contains("not the password"));
}

#[test]
fn relay_refusing_the_target_is_502_with_its_status() {
    let up = Upstream::echo();
    let Some(squid) = Squid::start(&[up.port()]) else {
        return;
    };
    let dir = TempDir::new("relay-refuse");
    let pw = password_file(&dir, PASSWORD);
    let relay = relay_yaml(&squid.url(), Some(&pw));
    let Some(gw) = gateway(up.port(), &relay, |c| c) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("{BLOCKED}:{}", up.port())).as_bytes(),
        502,
    );
    let ev = network_error(&gw, "relay_refused");
    let detail = field_str(&ev, "detail").unwrap_or_default();
    assert!(
        detail.contains("403"),
        "the relay's status is in the event: {ev}"
    );
    expect_error_metric(&gw, "relay_refused", 1.0);
    up.assert_untouched("relay refused the target");
}

#[test]
fn relay_down_is_502() {
    let up = Upstream::echo();
    let closed = ClosedPort::new(); // connections to it are refused
    let relay = relay_yaml(&format!("http://127.0.0.1:{}", closed.port()), None);
    let Some(gw) = gateway(up.port(), &relay, |c| c) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("{NAME}:{}", up.port())).as_bytes(),
        502,
    );
    network_error(&gw, "connect_refused");
    up.assert_untouched("relay down");
}

#[test]
fn silent_relay_is_504_at_connect_timeout() {
    let up = Upstream::echo();
    // Accepts TCP (the kernel completes the handshake) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = silent.local_addr().unwrap();
    let relay = relay_yaml(&format!("http://{addr}"), None);
    let Some(gw) = gateway(up.port(), &relay, |c| c.limit("connect_timeout", "1s")) else {
        return;
    };
    let t0 = Instant::now();
    let mut s = connect(gw.addr());
    s.write_all(connect_head(&format!("{NAME}:{}", up.port())).as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response_head(&mut s).expect("an answer");
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{:?}", r.head);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "504 at connect_timeout (1 s), took {took:?}"
    );
    network_error(&gw, "connect_timeout");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    drop(silent);
}

#[test]
fn world_readable_password_file_is_refused_at_start() {
    let dir = TempDir::new("relay-perm");
    let pw = dir.write("relay-password", "secret\n");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = format!(
        "allowed_hosts: [{NAME}]\n{}",
        relay_yaml("http://127.0.0.1:3128", Some(&pw))
    );
    let cfg = dir.write("splicegate.yaml", &yaml);
    let out = run_cli(
        &["check-config", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "check-config must fail: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay_proxy.password_file") && err.contains("line"),
        "the error names the key and line: {err}"
    );
    assert!(
        !err.contains("secret\n") && !err.contains(": secret"),
        "{err}"
    );
    let out = run_cli(
        &["run", "--config", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "run must refuse to start: {out:?}");

    // Fixed permissions: valid, and check-config does not print the password.
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_cli(
        &["check-config", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("relay_proxy:") && text.contains("127.0.0.1:3128"));
    assert!(
        !text.contains("secret"),
        "check-config must not print the password: {text}"
    );
}

/// A TLS front (stunnel) on 127.0.0.1 before a Squid: an `https://` relay. Its certificate is
/// for IP 127.0.0.1 and is given to the gateway as `ca_file`.
struct TlsFront {
    child: Child,
    port: u16,
    /// The CA that signed the front's certificate.
    cert: PathBuf,
    _dir: TempDir,
}

impl TlsFront {
    fn start(squid_port: u16) -> Option<TlsFront> {
        if Command::new("stunnel").arg("-version").output().is_err() {
            eprintln!("SKIP: stunnel is not installed (scripts/install-test-deps.sh installs it)");
            return None;
        }
        let dir = TempDir::new("stunnel");
        // A CA and a leaf it signs for IP 127.0.0.1 (webpki refuses a CA certificate used as
        // the server's own).
        let ca = dir.path().join("ca.pem");
        let ca_key = dir.path().join("ca.key");
        let cert = dir.path().join("front.pem");
        let key = dir.path().join("front.key");
        let csr = dir.path().join("front.csr");
        let ext = dir.write(
            "ext.cnf",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        );
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        openssl(&[
            &os("req"),
            &os("-x509"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-days"),
            &os("2"),
            &os("-subj"),
            &os("/CN=splicegate-test-ca"),
            &os("-keyout"),
            ca_key.as_os_str(),
            &os("-out"),
            ca.as_os_str(),
        ]);
        openssl(&[
            &os("req"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-subj"),
            &os("/CN=relay.test"),
            &os("-keyout"),
            key.as_os_str(),
            &os("-out"),
            csr.as_os_str(),
        ]);
        openssl(&[
            &os("x509"),
            &os("-req"),
            &os("-in"),
            csr.as_os_str(),
            &os("-CA"),
            ca.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-CAcreateserial"),
            &os("-days"),
            &os("2"),
            &os("-extfile"),
            ext.as_os_str(),
            &os("-out"),
            cert.as_os_str(),
        ]);
        let port = free_port();
        let conf = dir.write(
            "stunnel.conf",
            &format!(
                "foreground = yes\npid =\n[relay]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{squid_port}\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        );
        let child = Command::new("stunnel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stunnel");
        let front = TlsFront {
            child,
            port,
            cert: ca,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(front)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https_relay_yaml(front: &TlsFront, password_file: &Path) -> String {
    format!(
        "{}  ca_file: {}\n",
        relay_yaml(
            &format!("https://127.0.0.1:{}", front.port),
            Some(password_file)
        ),
        yq(&front.cert.display().to_string())
    )
}

#[test]
fn https_relay_carries_curl_and_exact_bytes() {
    let _heavy = heavy_lock();
    let tls = TlsUpstream::start();
    const N: u64 = 16 << 20;
    let (tx, rx) = mpsc::channel();
    let sink = Upstream::sink(tx);
    let Some(squid) = Squid::start(&[tls.port(), sink.port()]) else {
        return;
    };
    let Some(front) = TlsFront::start(squid.port) else {
        return;
    };
    let dir = TempDir::new("relay-https");
    let pw = password_file(&dir, PASSWORD);
    let relay = https_relay_yaml(&front, &pw);
    let ports = [tls.port(), sink.port()];
    let Some(gw) = Gateway::start(
        Config::new()
            .allow_host(NAME)
            .allow_host(TLS_NAME)
            .port(ports[0])
            .port(ports[1])
            .raw(&relay),
    ) else {
        return;
    };
    // curl over HTTPS, through the gateway (inspecting the hello), TLS to the relay, Squid, to
    // the TLS upstream.
    let Some(inspecting) = Gateway::start(
        Config::new()
            .allow_host(TLS_NAME)
            .port(tls.port())
            .raw(&relay)
            .inspect_tls(&[]),
    ) else {
        return;
    };
    let proxy = format!("http://127.0.0.1:{}", inspecting.addr().port());
    let url = format!("https://{TLS_NAME}:{}/", tls.port());
    let cert = tls.cert().to_str().unwrap().to_string();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-p",
            "-x",
            &proxy,
            "--cacert",
            &cert,
            &url,
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("s_server -www"),
        "curl through an https relay failed: {:?} {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        inspecting.log_dump()
    );
    inspecting.expect_event(107, |_| true, Duration::from_secs(5), "TLS verified");
    // 16 MiB byte-exact through the TLS leg.
    let mut s = open_tunnel(gw.addr(), &format!("{NAME}:{}", sink.port()));
    let sent = send_pattern(&mut s, N, 5).expect("send");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, got) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("sink result");
    assert_eq!((n, got), (N, sent), "bytes through the https relay");
    assert!(!gw.log_dump().contains(PASSWORD));
}

#[test]
fn https_relay_with_an_untrusted_certificate_is_502() {
    let up = Upstream::echo();
    let Some(squid) = Squid::start(&[up.port()]) else {
        return;
    };
    let Some(front) = TlsFront::start(squid.port) else {
        return;
    };
    // Trust a different CA than the one that signed the front's certificate.
    let other = TlsUpstream::start();
    let dir = TempDir::new("relay-untrusted");
    let pw = password_file(&dir, PASSWORD);
    let relay = format!(
        "{}  ca_file: {}\n",
        relay_yaml(&format!("https://127.0.0.1:{}", front.port), Some(&pw)),
        yq(&other.cert().display().to_string())
    );
    let Some(gw) = gateway(up.port(), &relay, |c| c) else {
        return;
    };
    expect_refusal(
        &gw,
        connect_head(&format!("{NAME}:{}", up.port())).as_bytes(),
        502,
    );
    let ev = network_error(&gw, "relay_refused");
    let detail = field_str(&ev, "detail").unwrap_or_default();
    assert!(
        detail.contains("TLS"),
        "the event says the TLS handshake failed: {ev}"
    );
    up.assert_untouched("untrusted relay");
}

#[test]
fn readyz_checks_the_relay_when_asked() {
    let up = Upstream::echo();
    let Some(squid) = Squid::start(&[up.port()]) else {
        return;
    };
    let check = |address: &str| {
        format!(
            "relay_proxy:\n  address: {}\n  health_check: true\n",
            yq(address)
        )
    };
    let Some(gw) = gateway(up.port(), &check(&squid.url()), |c| c) else {
        return;
    };
    assert_eq!(gw.readyz().expect("readyz"), 200, "relay up: ready");
    drop(gw);

    let closed = ClosedPort::new();
    let dead = format!("http://127.0.0.1:{}", closed.port());
    let Some(gw) = gateway(up.port(), &check(&dead), |c| c) else {
        return;
    };
    let (code, body) = gw.metrics_get("/readyz").expect("readyz");
    assert_eq!(code, 503, "relay down: not ready ({body})");
    assert!(body.contains("relay proxy"), "{body}");
    assert_eq!(gw.healthz().expect("healthz"), 200, "still alive");
    drop(gw);

    // Without health_check a dead relay does not make the gateway unready.
    let Some(gw) = gateway(up.port(), &relay_yaml(&dead, None), |c| c) else {
        return;
    };
    assert_eq!(gw.readyz().expect("readyz"), 200);
}

/// An `https://` relay whose TLS set-up fails (it answers the ClientHello in plain HTTP): the
/// client gets 502, and the relay socket is closed for real — the relay sees EOF at once (an fd
/// closed with its io_uring poll still armed would stay open in the kernel) — and the gateway's
/// fd count returns to its baseline. No Squid or stunnel needed.
#[test]
fn https_relay_tls_setup_failure_closes_the_relay_socket() {
    let (tx, rx) = mpsc::channel::<Option<Duration>>();
    let tx = std::sync::Mutex::new(tx);
    let fake = Upstream::with_handler(move |mut s| {
        let mut buf = [0u8; 4096];
        // The gateway's ClientHello, answered with something that is not TLS.
        if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        let answered = Instant::now();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        // Read until EOF (or the timeout): bounded by 5 s and 1000 reads.
        let mut eof = None;
        for _ in 0..1000 {
            match s.read(&mut buf) {
                Ok(0) => {
                    eof = Some(answered.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    eof = Some(answered.elapsed());
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = tx.lock().map(|t| t.send(eof));
    });
    let ca = TlsUpstream::start();
    let relay = format!(
        "{}  ca_file: {}\n",
        relay_yaml(&format!("https://127.0.0.1:{}", fake.port()), None),
        yq(&ca.cert().display().to_string())
    );
    let Some(gw) = gateway(443, &relay, |c| c) else {
        return;
    };
    // The metrics endpoint opens its spare fd when its task first runs, which can be after the
    // start event: one scrape makes sure it has, then the count must hold still (bounded).
    let _ = gw.metrics();
    let mut baseline = gw.fd_count();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        let now = gw.fd_count();
        if now == baseline {
            break;
        }
        baseline = now;
    }
    expect_refusal(&gw, connect_head(&format!("{NAME}:443")).as_bytes(), 502);
    let ev = network_error(&gw, "relay_refused");
    assert!(
        field_str(&ev, "detail").unwrap_or_default().contains("TLS"),
        "the event says the TLS set-up failed: {ev}"
    );
    let eof = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the fake relay reports");
    assert!(
        eof.is_some_and(|t| t < Duration::from_secs(1)),
        "the relay socket was not closed within 1 s ({eof:?})\n{}",
        gw.log_dump()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.fd_count() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.fd_count(), baseline, "fds back to the baseline");
}
