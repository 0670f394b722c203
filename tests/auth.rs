//! Client proxy authentication, with curl's `--proxy-user` and raw sockets, users made by the
//! real `splicegate user` command.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// `splicegate user add NAME --users-file F`, the password on stdin.
fn add_user(file: &Path, name: &str, password: &str) {
    let mut child = Command::new(bin())
        .args(["user", "add", name, "--users-file"])
        .arg(file)
        .args(["--pid-file", "/nonexistent/splicegate.pid"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run splicegate user add");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "user add {name}: {out:?}");
    let text = std::fs::read_to_string(file).unwrap();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("a line for {name}: {text}"));
    assert!(hash.starts_with("$argon2id$"), "{text}");
    assert_ne!(hash, password, "the users file never holds the password");
    // A short password can occur by chance inside a base64 hash; a long one cannot.
    if password.len() >= 12 {
        assert!(
            !text.contains(password),
            "the users file never holds the password"
        );
    }
}

fn auth_yaml(file: &Path, extra: &str) -> String {
    format!(
        "client_auth:\n  users_file: {}\n  realm: \"test-realm\"\n{extra}",
        yq(&file.display().to_string())
    )
}

fn connect_as(
    gw: &Gateway,
    target: &str,
    user: &str,
    password: &str,
) -> (std::net::TcpStream, Response) {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n"
    );
    let (s, r) = request(gw.addr(), head.as_bytes());
    (s, r.expect("an answer"))
}

#[test]
fn curl_proxy_user_right_wrong_and_absent() {
    let tls = TlsUpstream::start();
    let dir = TempDir::new("auth-curl");
    let users = dir.path().join("users");
    add_user(&users, "alice", "correct horse");
    let Some(gw) = Gateway::start(
        Config::new()
            .allow_host("*.ods.opinsights.azure.com")
            .map_host(TLS_NAME, "127.0.0.1")
            .port(tls.port())
            .loopback_networks()
            .raw(&auth_yaml(&users, "")),
    ) else {
        return;
    };
    let proxy = format!("http://127.0.0.1:{}", gw.addr().port());
    let url = format!("https://{TLS_NAME}:{}/", tls.port());
    let cert = tls.cert().to_str().unwrap().to_string();
    let curl = |user: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "20",
            "-p",
            "-x",
            &proxy,
            "--cacert",
            &cert,
        ]);
        if let Some(u) = user {
            c.args(["--proxy-user", u]);
        }
        c.arg(&url).output().expect("run curl")
    };
    let ok = curl(Some("alice:correct horse"));
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("s_server -www"),
        "right password: {ok:?}"
    );
    let bad = curl(Some("alice:wrong"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("407"),
        "{bad:?}"
    );
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("client_auth"),
        Duration::from_secs(10),
        "client_auth refusal",
    );
    assert_eq!(field_str(&ev, "user").as_deref(), Some("alice"));
    expect_rejection_metric(&gw, "client_auth", 1.0);
    assert!(!gw.log_dump().contains("correct horse") && !gw.log_dump().contains("wrong\""));

    // No credentials: the challenge, with the configured realm.
    let r = expect_refusal(
        &gw,
        connect_head(&format!("{TLS_NAME}:{}", tls.port())).as_bytes(),
        407,
    );
    assert_eq!(
        r.header("proxy-authenticate"),
        Some("Basic realm=\"test-realm\""),
        "{:?}",
        r.head
    );
}

#[test]
fn users_get_their_own_hosts_plus_the_global_ones() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-hosts");
    let users = dir.path().join("users");
    add_user(&users, "alice", "pw-alice");
    add_user(&users, "bob", "pw-bob");
    let extra = format!(
        "  user_hosts:\n    alice: [\"alice-only.test:{}\"]\n",
        up.port()
    );
    let Some(gw) = Gateway::start(
        Config::new()
            .upstream("shared.test", up.port())
            .map_host("alice-only.test", "127.0.0.1")
            .raw(&auth_yaml(&users, &extra)),
    ) else {
        return;
    };
    let shared = format!("shared.test:{}", up.port());
    let own = format!("alice-only.test:{}", up.port());
    for (user, pw) in [("alice", "pw-alice"), ("bob", "pw-bob")] {
        let (mut s, r) = connect_as(&gw, &shared, user, pw);
        assert_eq!(r.status, 200, "{user} reaches the global host");
        echo_roundtrip(&mut s, user.as_bytes());
    }
    let (mut s, r) = connect_as(&gw, &own, "alice", "pw-alice");
    assert_eq!(r.status, 200, "alice reaches her own host");
    echo_roundtrip(&mut s, b"mine");
    let (_s, r) = connect_as(&gw, &own, "bob", "pw-bob");
    assert_eq!(r.status, 403, "bob does not see alice's entries");
}

#[test]
fn repeated_failures_from_one_address_are_rate_limited() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-rate");
    let users = dir.path().join("users");
    add_user(&users, "alice", "pw");
    let Some(gw) = Gateway::start(Config::new().upstream("ok.test", up.port()).raw(&auth_yaml(
        &users,
        "  max_failures: 3\n  failure_window: 60s\n",
    ))) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    for _ in 0..3 {
        let (_s, r) = connect_as(&gw, &target, "alice", "guess");
        assert_eq!(r.status, 407);
    }
    let (_s, r) = connect_as(&gw, &target, "alice", "pw");
    assert_eq!(
        r.status, 429,
        "after 3 failures even the right password waits"
    );
    assert!(gw.metric_value("splicegate_rejections_total{reason=\"client_auth\"}") >= 4.0);
}

#[test]
fn a_reload_adds_a_user_while_tunnels_stay_up() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-reload");
    let users = dir.path().join("users");
    add_user(&users, "alice", "pw-alice");
    let Some(gw) = Gateway::start(
        Config::new()
            .upstream("ok.test", up.port())
            .raw(&auth_yaml(&users, "")),
    ) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    let (mut alice, r) = connect_as(&gw, &target, "alice", "pw-alice");
    assert_eq!(r.status, 200);
    let (_s, r) = connect_as(&gw, &target, "carol", "pw-carol");
    assert_eq!(r.status, 407, "carol does not exist yet");

    add_user(&users, "carol", "pw-carol");
    gw.signal(libc::SIGHUP);
    let mut carol_ok = false;
    for _ in 0..50 {
        let (mut s, r) = connect_as(&gw, &target, "carol", "pw-carol");
        if r.status == 200 {
            echo_roundtrip(&mut s, b"carol");
            carol_ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(carol_ok, "carol can log in after the reload");
    echo_roundtrip(&mut alice, b"alice's tunnel survived the reload");
}

#[test]
fn user_cli_lists_and_removes() {
    let dir = TempDir::new("auth-cli");
    let users = dir.path().join("users");
    add_user(&users, "bob", "bobs long password");
    add_user(&users, "alice", "alices long password");
    let out = run_cli(
        &[
            "user",
            "list",
            "--json",
            "--users-file",
            users.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["users"], serde_json::json!(["alice", "bob"]));
    let out = run_cli(
        &[
            "user",
            "remove",
            "bob",
            "--users-file",
            users.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let out = run_cli(
        &[
            "user",
            "remove",
            "bob",
            "--users-file",
            users.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "removing a missing user is refused"
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.contains("alice:") && !text.contains("bob:"));
}

const RELOADS_OK: &str = "splicegate_config_reloads_total{result=\"ok\"}";

/// `splicegate user remove NAME --users-file F` (no pid file: the test sends SIGHUP itself).
fn remove_user(file: &Path, name: &str) {
    let out = run_cli(
        &[
            "user",
            "remove",
            name,
            "--users-file",
            file.to_str().unwrap(),
            "--pid-file",
            "/nonexistent/splicegate.pid",
        ],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "user remove {name}: {out:?}");
}

/// SIGHUP, then wait until the gateway counts reload number `n` as applied.
fn reload(gw: &Gateway, n: u32) {
    gw.signal(libc::SIGHUP);
    let seen = gw.wait_metric(RELOADS_OK, |v| v >= f64::from(n), Duration::from_secs(10));
    assert!(seen >= f64::from(n), "reload {n} applied: {seen}");
}

/// The status a login as `user` gets, read with the long client timeout (a login may wait
/// behind many queued checks).
fn login_status(addr: std::net::SocketAddr, target: &str, user: &str, password: &str) -> u16 {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n"
    );
    let mut s = connect(addr);
    s.write_all(head.as_bytes()).expect("send CONNECT");
    read_response_head(&mut s)
        .unwrap_or_else(|e| panic!("login as {user}: no answer: {e}"))
        .status
}

#[test]
fn a_removed_user_stays_out_across_reloads() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-removed");
    let users = dir.path().join("users");
    add_user(&users, "alice", "pw-alice");
    add_user(&users, "bob", "pw-bob");
    // Failures must not turn the expected 407s into 429s.
    let Some(gw) = Gateway::start(
        Config::new()
            .upstream("ok.test", up.port())
            // One worker: every login meets the same cache.
            .workers(1)
            .raw(&auth_yaml(&users, "  max_failures: 100000\n")),
    ) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    // Reloads before alice logs in, so that the table she is checked against is not the first
    // one: old tables must be freed and their memory reused for this test to mean something.
    for n in 1..=10 {
        reload(&gw, n);
        assert_eq!(login_status(gw.addr(), &target, "bob", "pw-bob"), 200);
    }
    assert_eq!(login_status(gw.addr(), &target, "alice", "pw-alice"), 200);
    remove_user(&users, "alice");
    for n in 11..=30 {
        reload(&gw, n);
        assert_eq!(
            login_status(gw.addr(), &target, "alice", "pw-alice"),
            407,
            "alice was removed; reload {n}"
        );
        // A user still in the file keeps logging in (and is cached under each new table).
        assert_eq!(
            login_status(gw.addr(), &target, "bob", "pw-bob"),
            200,
            "reload {n}"
        );
    }
}

#[test]
fn a_login_storm_during_removal_does_not_let_the_removed_user_back_in() {
    const STORM: usize = 60;
    let up = Upstream::echo();
    let dir = TempDir::new("auth-storm");
    let users = dir.path().join("users");
    add_user(&users, "bob", "pw-bob");
    // alice with a bcrypt hash of cost 6: about 15 ms a check in a debug build, as argon2id is
    // in a release build, so the storm's checks queue on the verifier.
    let alice = bcrypt::hash("pw-alice", 6).expect("bcrypt hash");
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str(&format!("alice:{alice}\n"));
    std::fs::write(&users, text).unwrap();
    let Some(gw) = Gateway::start(
        Config::new()
            .upstream("ok.test", up.port())
            // The rechecks after the reload are for an unknown user (a cost-10 bcrypt each):
            // they must not time out.
            .limit("resolve_timeout", "120s")
            .raw(&auth_yaml(&users, "  max_failures: 100000\n")),
    ) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    let addr = gw.addr();
    let (tx, rx) = std::sync::mpsc::channel();
    let storm: Vec<_> = (0..STORM)
        .map(|_| {
            let tx = tx.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                let status = login_status(addr, &target, "alice", "pw-alice");
                let _ = tx.send(status);
                status
            })
        })
        .collect();
    // The first answer means the checks are running; most are still queued.
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a first login answered");
    assert_eq!(first, 200, "alice exists before the removal");
    remove_user(&users, "alice");
    reload(&gw, 1);
    let answered_before = 1 + rx.try_iter().count();
    assert!(
        answered_before < STORM,
        "the reload must land while logins are queued ({answered_before} of {STORM} answered)"
    );
    let mut storm_statuses = Vec::new();
    for t in storm {
        storm_statuses.push(t.join().expect("storm thread"));
    }
    assert!(
        storm_statuses.iter().all(|s| *s == 200 || *s == 407),
        "each storm login is let in or challenged: {storm_statuses:?}"
    );
    eprintln!(
        "storm: {answered_before} of {STORM} answered when the reload was applied; {} let in, {} challenged",
        storm_statuses.iter().filter(|s| **s == 200).count(),
        storm_statuses.iter().filter(|s| **s == 407).count()
    );
    for round in 1..=3 {
        let logins: Vec<_> = (0..10)
            .map(|_| {
                let target = target.clone();
                std::thread::spawn(move || login_status(addr, &target, "alice", "pw-alice"))
            })
            .collect();
        let statuses: Vec<u16> = logins
            .into_iter()
            .map(|t| t.join().expect("login thread"))
            .collect();
        assert_eq!(
            statuses,
            vec![407; 10],
            "round {round}: alice was removed before these logins"
        );
    }
    assert_eq!(login_status(addr, &target, "bob", "pw-bob"), 200);
}

/// A locked-out address gets 429 also for credentials the worker has cached as good: the
/// lockout is checked before the cache, so a guesser cannot tell a right password (200 from
/// the cache) from a wrong one (429). Found behind HAProxy (tests/ha.rs); one worker makes the
/// cache hit certain.
#[test]
fn a_locked_out_address_is_refused_even_with_cached_credentials() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-lock-cache");
    let users = dir.path().join("users");
    add_user(&users, "alice", "pw");
    let Some(gw) = Gateway::start(Config::new().workers(1).upstream("ok.test", up.port()).raw(
        &auth_yaml(&users, "  max_failures: 3\n  failure_window: 60s\n"),
    )) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    assert_eq!(login_status(gw.addr(), &target, "alice", "pw"), 200);
    for _ in 0..3 {
        assert_eq!(login_status(gw.addr(), &target, "alice", "guess"), 407);
    }
    assert_eq!(
        login_status(gw.addr(), &target, "alice", "pw"),
        429,
        "the cached good password must not pass the lockout"
    );
}

#[test]
fn a_lockout_survives_a_reload() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-lock-reload");
    let users = dir.path().join("users");
    add_user(&users, "alice", "pw");
    let Some(gw) = Gateway::start(Config::new().upstream("ok.test", up.port()).raw(&auth_yaml(
        &users,
        "  max_failures: 3\n  failure_window: 60s\n",
    ))) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    for _ in 0..3 {
        assert_eq!(login_status(gw.addr(), &target, "alice", "guess"), 407);
    }
    assert_eq!(login_status(gw.addr(), &target, "alice", "pw"), 429);
    reload(&gw, 1);
    assert_eq!(
        login_status(gw.addr(), &target, "alice", "pw"),
        429,
        "a reload does not reset the failure count"
    );
}

#[test]
fn a_password_beyond_72_bytes_never_matches_a_bcrypt_hash() {
    let up = Upstream::echo();
    let dir = TempDir::new("auth-bcrypt72");
    let users = dir.path().join("users");
    let base = "p".repeat(72);
    let (own, other) = (format!("{base}-own"), format!("{base}-other"));
    let hash = bcrypt::hash(&own, 4).expect("bcrypt hash");
    std::fs::write(&users, format!("dave:{hash}\n")).unwrap();
    let Some(gw) = Gateway::start(
        Config::new()
            .upstream("ok.test", up.port())
            .raw(&auth_yaml(&users, "  max_failures: 100\n")),
    ) else {
        return;
    };
    let target = format!("ok.test:{}", up.port());
    assert_eq!(
        login_status(gw.addr(), &target, "dave", &other),
        407,
        "shares only the first 72 bytes"
    );
    assert_eq!(
        login_status(gw.addr(), &target, "dave", &own),
        407,
        "bcrypt cannot tell it from the other"
    );
    let short = bcrypt::hash("short-enough", 4).expect("bcrypt hash");
    std::fs::write(&users, format!("dave:{short}\n")).unwrap();
    reload(&gw, 1);
    assert_eq!(
        login_status(gw.addr(), &target, "dave", "short-enough"),
        200
    );
}
