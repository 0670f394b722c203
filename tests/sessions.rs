//! The live view of a running gateway through its admin socket, with the real binary on both
//! engines: `sessions` (the tunnels the test holds, with their client ports and byte counts),
//! `sessions close` (the client sees the close; event 100 `reason="admin"`), the socket's
//! access control (a non-member is refused by the file mode and, with the mode opened up, by
//! the peer-credential check), `status` on a live gateway, and the per-rule counters
//! (`splicegate_tunnels_total{rule}`, `splicegate_rule_bytes_total`, `allowed-host list --usage`).

mod support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(20);

fn cli(args: &[&str]) -> Output {
    run_cli(args, T)
}

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn gateway(cfg: Config) -> Option<Gateway> {
    let gw = Gateway::start(cfg)?;
    assert!(
        gw.admin_socket().is_some(),
        "event 101 names the admin socket: {}",
        gw.started_event()
    );
    Some(gw)
}

/// `splicegate sessions --json` (with `--config` after the subcommand's arguments).
fn sessions(gw: &Gateway, extra: &[&str]) -> Vec<Value> {
    let cfg = gw.config_path().to_str().unwrap_or_default().to_owned();
    let mut args = vec!["sessions", "--json"];
    args.extend_from_slice(extra);
    args.extend(["--config", cfg.as_str()]);
    match ok_json(&cli(&args), "sessions --json") {
        Value::Array(a) => a,
        other => panic!("sessions --json prints one array, got {other}"),
    }
}

fn find_client<'a>(list: &'a [Value], client: &TcpStream) -> &'a Value {
    let me = client
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    list.iter()
        .find(|s| s["client"] == me.as_str())
        .unwrap_or_else(|| panic!("no session of client {me} in {list:?}"))
}

#[test]
fn sessions_lists_the_tunnel_with_its_client_port_and_moving_byte_counts() {
    let up = Upstream::echo();
    let cfg = Config::new().upstream("echo.test", up.port());
    let Some(gw) = gateway(cfg) else { return };
    let target = format!("echo.test:{}", up.port());
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, &Pattern::bytes(1, 1000));

    let list = sessions(&gw, &[]);
    assert_eq!(list.len(), 1, "one tunnel open: {list:?}");
    let one = find_client(&list, &s);
    let fields: Vec<&str> = match one.as_object() {
        Some(o) => o.keys().map(String::as_str).collect(),
        None => panic!("a session is an object: {one}"),
    };
    assert_eq!(
        fields,
        [
            "id",
            "client",
            "target",
            "address",
            "user",
            "rule",
            "tls_version",
            "sni",
            "age_s",
            "idle_s",
            "bytes_up",
            "bytes_down",
            "state"
        ]
    );
    assert_eq!(one["target"], target.as_str());
    assert_eq!(one["address"], format!("127.0.0.1:{}", up.port()).as_str());
    assert_eq!(one["rule"], "echo.test");
    assert_eq!(one["user"], Value::Null);
    assert_eq!(
        one["tls_version"],
        Value::Null,
        "no inspection in this test"
    );
    assert_eq!(one["state"], "open");
    assert_eq!(one["bytes_up"], 1000);
    assert_eq!(one["bytes_down"], 1000);
    let id = one["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("numeric id: {one}"));

    echo_roundtrip(&mut s, &Pattern::bytes(2, 5000));
    // `--config` before the subcommand works as well.
    let cfg_path = gw.config_path().to_str().unwrap_or_default().to_owned();
    let again = match ok_json(
        &cli(&["--config", &cfg_path, "sessions", "--json"]),
        "--config first",
    ) {
        Value::Array(a) => a,
        other => panic!("array expected: {other}"),
    };
    let later = find_client(&again, &s);
    assert_eq!(later["id"].as_u64(), Some(id), "the id is stable");
    assert_eq!(later["bytes_up"], 6000, "bytes up moved");
    assert_eq!(later["bytes_down"], 6000, "bytes down moved");
    assert!(later["age_s"].as_f64() >= one["age_s"].as_f64());

    // Filters.
    assert_eq!(sessions(&gw, &["--client", "127.0.0.0/8"]).len(), 1);
    assert_eq!(sessions(&gw, &["--client", "10.0.0.0/8"]).len(), 0);
    assert_eq!(sessions(&gw, &["--host", "*.test"]).len(), 1);
    assert_eq!(sessions(&gw, &["--host", "other.test"]).len(), 0);
    assert_eq!(sessions(&gw, &["--user", "alice"]).len(), 0);
    let bad = cli(&["sessions", "--client", "10.0.0.0/33", "--config", &cfg_path]);
    assert_eq!(bad.status.code(), Some(1), "a bad CIDR is a usage error");

    // The text form shows the client's port.
    let text = cli(&["sessions", "--config", &cfg_path]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
    assert!(text.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("127.0.0.1:{port}")) && stdout.contains("1 tunnel(s)"),
        "{stdout}"
    );
}

#[test]
fn sessions_close_ends_the_chosen_tunnels_and_the_clients_see_it() {
    let up = Upstream::echo();
    let cfg = Config::new().upstream("echo.test", up.port());
    let Some(gw) = gateway(cfg) else { return };
    let cfg_path = gw.config_path().to_str().unwrap_or_default().to_owned();
    let target = format!("echo.test:{}", up.port());
    let mut a = open_tunnel(gw.addr(), &target);
    let mut b = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut a, b"a");
    echo_roundtrip(&mut b, b"b");
    let list = sessions(&gw, &[]);
    assert_eq!(list.len(), 2, "{list:?}");
    let id_a = find_client(&list, &a)["id"].as_u64().unwrap_or(0);
    let id_b = find_client(&list, &b)["id"].as_u64().unwrap_or(0);
    assert_ne!(id_a, id_b, "ids are unique");

    let none = cli(&["sessions", "close", "--config", &cfg_path]);
    assert_eq!(
        none.status.code(),
        Some(1),
        "close without a selector refuses"
    );
    assert_eq!(sessions(&gw, &[]).len(), 2, "and closes nothing");

    let id = id_a.to_string();
    let out = cli(&["sessions", "close", &id, "--config", &cfg_path]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout} {:?}", out.stderr);
    assert!(stdout.contains("closed 1 tunnel(s)"), "{stdout}");
    assert_closes(&mut a, Duration::from_secs(5));
    let ev = gw.expect_event(
        100,
        |e| field_str(e, "reason").as_deref() == Some("admin"),
        T,
        "tunnel closed by the admin",
    );
    let me = a.local_addr().map(|x| x.to_string()).unwrap_or_default();
    assert_eq!(field_str(&ev, "client").as_deref(), Some(me.as_str()));
    // The other tunnel still relays.
    echo_roundtrip(&mut b, b"still here");
    let left = sessions(&gw, &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"].as_u64(), Some(id_b));

    // By host pattern, with --json.
    let out = ok_json(
        &cli(&[
            "sessions", "close", "--host", "*.test", "--json", "--config", &cfg_path,
        ]),
        "close --host",
    );
    assert_eq!(out["closed"], 1, "{out}");
    assert_closes(&mut b, Duration::from_secs(5));
    assert!(sessions(&gw, &[]).is_empty());
    // Nothing left to match.
    let out = ok_json(
        &cli(&[
            "sessions",
            "close",
            "--client",
            "127.0.0.1",
            "--json",
            "--config",
            &cfg_path,
        ]),
        "close --client",
    );
    assert_eq!(out["closed"], 0, "{out}");
}

/// Run `splicegate ARGS` as `nobody:nogroup` with no supplementary groups.
fn as_nobody(args: &[&str]) -> Option<Output> {
    let probe = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("SKIP: setpriv cannot switch to nobody here (needs root): {other:?}");
            return None;
        }
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("setpriv: {e}"));
    Some(out)
}

#[test]
fn the_admin_socket_refuses_a_user_outside_its_group() {
    let Some(gw) = gateway(Config::new()) else {
        return;
    };
    let sock = gw.admin_socket().unwrap_or_default();
    let cfg_path = gw.config_path().to_str().unwrap_or_default().to_owned();
    let mode = std::fs::metadata(&sock)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o660, "the socket's mode");
    // The config file must be readable by nobody for it to find the socket.
    let _ = std::fs::set_permissions(gw.config_path(), std::fs::Permissions::from_mode(0o644));
    let Some(out) = as_nobody(&["status", "--config", &cfg_path]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody is refused: {stderr}");
    assert!(
        stderr.contains("Permission denied"),
        "by the file mode: {stderr}"
    );

    // With the mode opened up, the peer-credential check still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", sock.display()));
    let out = as_nobody(&["sessions", "--config", &cfg_path]).unwrap_or_else(|| unreachable!());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody is refused: {stderr}");
    assert!(
        stderr.contains("permission denied: root or a member"),
        "by SO_PEERCRED: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no sessions leak: {:?}", out.stdout);
    gw.expect_event(
        100,
        |e| field_str(e, "reason").as_deref() == Some("admin_denied"),
        T,
        "the refusal is logged",
    );
    // Root is served.
    let st = ok_json(&cli(&["status", "--json", "--config", &cfg_path]), "root");
    assert_eq!(st["tunnels_open"], 0);
}

#[test]
fn status_gives_the_live_numbers() {
    let up = Upstream::echo();
    let cfg = Config::new().upstream("echo.test", up.port());
    let Some(gw) = gateway(cfg) else { return };
    let cfg_path = gw.config_path().to_str().unwrap_or_default().to_owned();
    let target = format!("echo.test:{}", up.port());
    let mut held: Vec<TcpStream> = (0..3).map(|_| open_tunnel(gw.addr(), &target)).collect();
    for (i, s) in held.iter_mut().enumerate() {
        echo_roundtrip(s, &Pattern::bytes(i as u64, 2000));
    }
    for _ in 0..2 {
        expect_refusal(&gw, connect_head("denied.test:443").as_bytes(), 403);
    }
    let st = ok_json(&cli(&["status", "--json", "--config", &cfg_path]), "status");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["engine"], test_engine().as_str());
    assert_eq!(st["workers"], 2);
    assert_eq!(st["workers_alive"], 2);
    assert_eq!(st["tunnels_open"], 3, "{st}");
    assert_eq!(st["tunnels_total"], 3, "{st}");
    assert_eq!(st["config"], cfg_path.as_str());
    assert_eq!(st["last_reload"], Value::Null);
    assert_eq!(
        st["refusals_last_minute"],
        serde_json::json!({"host_not_allowed": 2}),
        "{st}"
    );
    let uptime = st["uptime_s"].as_f64().unwrap_or(-1.0);
    let window = st["window_s"].as_f64().unwrap_or(-1.0);
    assert!(uptime > 0.0 && uptime < 120.0, "{st}");
    assert!(window > 0.0 && window <= uptime + 0.01, "{st}");
    // 3 tunnels since start within the window.
    let rate = st["tunnels_per_s"].as_f64().unwrap_or(-1.0);
    assert!((rate * window - 3.0).abs() < 0.1, "{st}");
    let up_rate = st["bytes_up_per_s"].as_f64().unwrap_or(-1.0);
    assert!((up_rate * window - 6000.0).abs() < 10.0, "{st}");
    let open = st["fds_open"].as_u64().unwrap_or(0) as usize;
    let fds = gw.fd_count();
    assert!(open.abs_diff(fds) <= 4, "fds_open {open} vs /proc {fds}");
    assert!(st["fds_limit"].as_u64().unwrap_or(0) > open as u64);

    drop(held.pop());
    gw.wait_metric("splicegate_tunnels_active", |v| v == 2.0, T);
    let text = cli(&["status", "--config", &cfg_path]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{stdout}");
    assert!(stdout.contains("tunnels open 2"), "{stdout}");
    assert!(stdout.contains("host_not_allowed 2"), "{stdout}");
    assert!(stdout.contains("workers 2/2 alive"), "{stdout}");
}

#[test]
fn rule_counters_move_for_the_entry_that_allowed_the_tunnel_only() {
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream("echo.test", up.port())
        .allow_host("*.other.test");
    let Some(gw) = gateway(cfg) else { return };
    let cfg_path = gw.config_path().to_str().unwrap_or_default().to_owned();
    let target = format!("echo.test:{}", up.port());
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, &Pattern::bytes(9, 4000));
    drop(s);
    gw.wait_metric("splicegate_tunnels_active", |v| v == 0.0, T);
    let m = gw.metrics();
    let v = |q: &str| metric_from_text(&m, q);
    assert_eq!(
        v("splicegate_tunnels_total{rule=\"echo.test\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(v("splicegate_tunnels_total{rule=\"*.other.test\"}"), 0.0);
    let up_bytes = v("splicegate_rule_bytes_total{rule=\"echo.test\",direction=\"upstream\"}");
    assert_eq!(up_bytes, 4000.0, "{m}");
    assert_eq!(
        v("splicegate_rule_bytes_total{rule=\"echo.test\",direction=\"downstream\"}"),
        4000.0
    );
    assert_eq!(
        v("splicegate_rule_bytes_total{rule=\"*.other.test\",direction=\"upstream\"}"),
        0.0
    );
    // A refused request counts for no entry.
    expect_refusal(&gw, connect_head("denied.test:443").as_bytes(), 403);
    assert_eq!(
        metric_from_text(&gw.metrics(), "splicegate_tunnels_total"),
        1.0
    );

    let usage = ok_json(
        &cli(&[
            "allowed-host",
            "list",
            "--usage",
            "--json",
            "--config",
            &cfg_path,
        ]),
        "allowed-host list --usage",
    );
    let entries = usage["usage"].as_array().cloned().unwrap_or_default();
    let get = |h: &str| {
        entries
            .iter()
            .find(|e| e["host"] == h)
            .cloned()
            .unwrap_or_else(|| panic!("{h} in {usage}"))
    };
    assert_eq!(get("echo.test")["tunnels"], 1);
    assert!(get("echo.test")["last_used"].as_u64().is_some());
    assert_eq!(get("*.other.test")["tunnels"], 0);
    assert_eq!(get("*.other.test")["last_used"], Value::Null);
    let text = cli(&["allowed-host", "list", "--usage", "--config", &cfg_path]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("*.other.test") && l.ends_with("never")),
        "{stdout}"
    );
}

#[test]
fn a_chosen_admin_socket_path_that_fails_stops_the_start_the_default_only_warns() {
    init();
    let dir = TempDir::new("admin-path");
    let cfg = Config::new().raw("admin_socket: \"/nonexistent-splicegate-dir/admin.sock\"\n");
    let path = dir.write("splicegate.yaml", &cfg.render());
    let p = path.to_str().unwrap_or_default();
    let out = run_cli(&["run", "--config", p, "--log-format", "json"], T);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a chosen path that fails: {stderr}");
    assert!(
        stderr.contains("admin socket /nonexistent-splicegate-dir/admin.sock"),
        "{stderr}"
    );

    if std::path::Path::new("/run/splicegate").exists() {
        eprintln!("SKIP (default path part): /run/splicegate exists on this machine");
        return;
    }
    let cfg = Config::new().raw("admin_socket: \"/run/splicegate/admin.sock\"\n");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    assert_eq!(gw.admin_socket(), None, "{}", gw.started_event());
    gw.expect_event(
        100,
        |e| {
            e.to_string()
                .contains("admin socket unavailable at its default path")
        },
        T,
        "the warning",
    );
    let out = cli(&[
        "status",
        "--config",
        gw.config_path().to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(3), "nothing to reach");
}

/// The figure in BENCHMARKS.md ("`splicegate sessions` with 9,000 tunnels open"): 9,000 idle
/// tunnels held by this process, then the admin socket's answer timed on its own and through
/// the CLI. Run with `--ignored --nocapture` (the debug build of the binary).
#[test]
#[ignore = "benchmark: holds 9,000 tunnels (18,000 fds here, 18,000 in the gateway)"]
fn sessions_answers_within_a_second_with_9000_tunnels_open() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;
    const N: usize = 9_000;
    let limit = nofile_limit();
    if limit < (2 * N + 500) as u64 {
        eprintln!("SKIP: RLIMIT_NOFILE {limit} is below {}", 2 * N + 500);
        return;
    }
    let up = Upstream::hold();
    let cfg = Config::new()
        .upstream("hold.test", up.port())
        .limit("max_connections", "20000");
    let Some(gw) = gateway(cfg) else { return };
    let target = format!("hold.test:{}", up.port());
    let t0 = Instant::now();
    let held: Vec<TcpStream> = (0..N).map(|_| open_tunnel(gw.addr(), &target)).collect();
    eprintln!("{N} tunnels open in {:.2} s", t0.elapsed().as_secs_f64());
    let sock = gw.admin_socket().unwrap_or_default();
    let mut direct = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{e}"));
        s.write_all(b"{\"cmd\":\"sessions\"}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap_or_else(|e| panic!("{e}"));
        direct.push(t.elapsed().as_secs_f64());
        let v: Value = serde_json::from_slice(&answer).unwrap_or_default();
        assert_eq!(v["sessions"].as_array().map(Vec::len), Some(N));
        assert_eq!(v["missing_workers"], 0);
    }
    let cfg_path = gw.config_path().to_str().unwrap_or_default().to_owned();
    let mut cli_times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = cli(&["sessions", "--json", "--config", &cfg_path]);
        cli_times.push(t.elapsed().as_secs_f64());
        let list = ok_json(&out, "sessions");
        assert_eq!(list.as_array().map(Vec::len), Some(N));
    }
    let t = Instant::now();
    let out = cli(&["sessions", "--config", &cfg_path]);
    let text_s = t.elapsed().as_secs_f64();
    assert!(out.status.success());
    direct.sort_by(f64::total_cmp);
    cli_times.sort_by(f64::total_cmp);
    eprintln!(
        "sessions with {N} tunnels: admin socket answer median {:.3} s (min {:.3}, max {:.3}); \
         `splicegate sessions --json` median {:.3} s; text table {:.3} s; binary {}",
        direct[2],
        direct[0],
        direct[4],
        cli_times[1],
        text_s,
        bin()
    );
    assert!(direct[2] < 1.0, "the answer takes {:.3} s", direct[2]);
    drop(held);
}

/// `openssl s_server` on 127.0.0.1 with a throw-away self-signed certificate for `name`.
struct TlsServer {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl TlsServer {
    fn start(name: &str) -> TlsServer {
        use std::process::{Command, Stdio};
        let dir = TempDir::new("sessions-tls");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                "k.pem",
                "-out",
                "c.pem",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("openssl req: {e}"));
        assert!(out.status.success(), "openssl req: {out:?}");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("openssl")
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
                .args(["-cert", "c.pem", "-key", "k.pem", "-naccept", "10"])
                .current_dir(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("openssl s_server: {e}"));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsServer {
                        child,
                        port,
                        _dir: dir,
                    };
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

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_show_the_tls_version_and_sni_inspection_saw() {
    use std::process::{Command, Stdio};
    const NAME: &str = "tls.sessions.test";
    let server = TlsServer::start(NAME);
    let cfg = Config::new().upstream(NAME, server.port).inspect_tls(&[]);
    let Some(gw) = gateway(cfg) else { return };
    // A client that stays connected: its stdin stays open until it is killed.
    let mut client = Command::new("timeout")
        .args(["30", "openssl", "s_client", "-tls1_3", "-servername", NAME])
        .args(["-proxy", &format!("127.0.0.1:{}", gw.addr().port())])
        .args(["-connect", &format!("{NAME}:{}", server.port)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl s_client: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let seen = loop {
        let list = sessions(&gw, &[]);
        if let Some(s) = list.iter().find(|s| s["tls_version"] != Value::Null) {
            break Some(s.clone());
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = client.kill();
    let _ = client.wait();
    let s = seen.unwrap_or_else(|| panic!("no inspected session listed; log:\n{}", gw.log_dump()));
    assert_eq!(s["tls_version"], "1.3", "{s}");
    assert_eq!(s["sni"], NAME, "{s}");
    assert_eq!(s["state"], "open", "{s}");
    assert_eq!(s["rule"], NAME, "{s}");
}

#[test]
fn a_reload_moves_the_admin_socket_and_refuses_a_path_that_fails() {
    let Some(gw) = gateway(Config::new()) else {
        return;
    };
    let old = gw.admin_socket().unwrap_or_default();
    let cfg_path = gw.config_path().to_owned();
    let text = std::fs::read_to_string(&cfg_path).unwrap_or_default();
    let moved = old.with_file_name("moved.sock");
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("admin_socket:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let write = |path: &str| {
        std::fs::write(&cfg_path, format!("{without}admin_socket: {}\n", yq(path)))
            .unwrap_or_else(|e| panic!("{e}"));
        gw.signal(libc::SIGHUP);
    };
    // A path that cannot be created: refused, the old socket keeps serving.
    write("/nonexistent-splicegate-dir/admin.sock");
    gw.expect_event(401, |_| true, T, "reload refused");
    assert!(old.exists(), "the old socket stays");
    let p = cfg_path.to_str().unwrap_or_default().to_owned();
    // (The CLI reads the file, which now names the bad path: ask the old socket directly.)
    let mut s =
        std::os::unix::net::UnixStream::connect(&old).unwrap_or_else(|e| panic!("old socket: {e}"));
    std::io::Write::write_all(&mut s, b"{\"cmd\":\"status\"}\n").unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap_or_else(|e| panic!("{e}"));
    assert!(answer.contains("\"ok\":true"), "{answer}");

    write(moved.to_str().unwrap_or_default());
    gw.expect_event(
        100,
        |e| e.to_string().contains("admin_socket"),
        T,
        "reload that moves the socket",
    );
    assert!(!old.exists(), "the old socket file is removed");
    let st = ok_json(&cli(&["status", "--json", "--config", &p]), "status");
    assert_eq!(
        st["admin_socket"],
        moved.to_str().unwrap_or_default(),
        "{st}"
    );
    assert_eq!(st["reloads_ok"], 1, "{st}");
    // The file watch and the SIGHUP may both have read the refused file.
    assert!(st["reloads_refused"].as_u64() >= Some(1), "{st}");
    assert_eq!(st["last_reload"]["result"], "ok", "{st}");
}
