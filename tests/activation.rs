//! systemd socket activation (`LISTEN_FDS`), against the real binary: started by
//! `systemd-socket-activate`, refusing an inherited address the configuration does not list,
//! surviving a worker restart, and a restart on a socket held "as systemd would" that refuses
//! no client.

mod handover_support;
mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use handover_support::{signal, Load, Proc};
use support::*;

const UP: &str = "up.splicegate.test";

fn tool() -> Option<&'static str> {
    let ok = Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some("systemd-socket-activate")
    } else {
        eprintln!("SKIP: systemd-socket-activate is not installed (package systemd)");
        None
    }
}

fn python() -> bool {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import socket, subprocess")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: python3 is not available to hold the listening socket");
    }
    ok
}

fn gateway_cmd(wrapper: &[&str], config: &Path) -> Command {
    let mut c = Command::new(wrapper[0]);
    c.args(&wrapper[1..])
        .arg(bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json");
    c
}

#[test]
fn systemd_socket_activate_serves_a_connect_and_survives_a_worker_restart() {
    let Some(tool) = tool() else { return };
    init();
    let up = Upstream::echo();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = Config::new()
        .listen(&[&addr.to_string()])
        .workers(2)
        .upstream(UP, up.port())
        .raw("takeover_socket: null\n");
    let dir = TempDir::new("activate");
    let config = dir.write("splicegate.yaml", &cfg.render());
    let listen = format!("{addr}");
    let mut p = Proc::spawn(gateway_cmd(
        &[
            tool,
            "-l",
            &listen,
            "--fdname=gateway",
            "-E",
            "SPLICEGATE_TEST_WORKER_EXIT=1",
        ],
        &config,
    ));
    p.wait_line(|l| l.contains("Listening on"), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("systemd-socket-activate did not listen:\n{}", p.dump()));
    // The first client starts the gateway; it waits in the backlog meanwhile.
    let target = format!("{UP}:{}", up.port());
    let mut s = open_tunnel(addr, &target);
    echo_roundtrip(&mut s, b"first client");
    drop(s);
    let started = p
        .wait_line(|l| l.contains("\"event_id\":101"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no event 101:\n{}", p.dump()));
    assert!(
        started.contains(&format!("\"socket_activated\":\"{addr}\"")),
        "event 101 names the inherited socket: {started}"
    );
    assert!(
        p.count(|l| l.contains("inherited socket") && l.contains("gateway")) >= 1,
        "the socket's name is logged:\n{}",
        p.dump()
    );
    // Worker 1 died at start and is restarted on another duplicate of the same socket.
    p.wait_line(|l| l.contains("worker restarted"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("worker not restarted:\n{}", p.dump()));
    for i in 0..20u8 {
        let mut s = open_tunnel(addr, &target);
        echo_roundtrip(&mut s, &[i; 100]);
    }
    // systemd-socket-activate execs the gateway on the first connection: the same pid.
    let gw = p.pid();
    signal(gw, libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(15));
    assert!(st.is_some(), "gateway did not exit:\n{}", p.dump());
}

#[test]
fn an_inherited_address_the_config_does_not_list_fails_the_start() {
    let Some(tool) = tool() else { return };
    init();
    let (p1, p2) = (free_port(), free_port());
    let cfg = Config::new()
        .listen(&[&format!("127.0.0.1:{p2}")])
        .raw("takeover_socket: null\n");
    let dir = TempDir::new("activate-bad");
    let config = dir.write("splicegate.yaml", &cfg.render());
    let listen = format!("127.0.0.1:{p1}");
    let mut p = Proc::spawn(gateway_cmd(&[tool, "-l", &listen], &config));
    p.wait_line(|l| l.contains("Listening on"), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("systemd-socket-activate did not listen:\n{}", p.dump()));
    let _trigger = TcpStream::connect(format!("127.0.0.1:{p1}")).unwrap();
    let ev = p
        .wait_line(|l| l.contains("\"event_id\":401"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no event 401:\n{}", p.dump()));
    assert!(ev.contains("is not in `listen`"), "{ev}");
    let st = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(st.code(), Some(2), "{st:?}\n{}", p.dump());
    // It did not bind the configured address either.
    assert!(TcpStream::connect(format!("127.0.0.1:{p2}")).is_err());
}

/// The holder binds the socket (as systemd's socket unit does), then runs gateway A on it and,
/// once A has exited, gateway B. A client keeps connecting throughout: 0 refused.
const HOLDER: &str = r#"
import os, socket, subprocess, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(4096)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
print("port", s.getsockname()[1], flush=True)
for name in ("A", "B"):
    if not sys.stdin.readline():
        break
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="gateway")
    p = subprocess.Popen(["sh", "-c", 'export LISTEN_PID=$$; exec "$0" "$@"'] + sys.argv[1:],
                         pass_fds=(3,), env=env)
    print("pid", name, p.pid, flush=True)
    p.wait()
    print("exit", name, p.returncode, flush=True)
"#;

#[test]
fn a_restart_on_a_held_socket_refuses_nobody() {
    if !python() {
        return;
    }
    init();
    let up = Upstream::echo();
    let dir = TempDir::new("activate-restart");
    let config = dir.path().join("splicegate.yaml");
    let mut holder = {
        let mut c = Command::new("python3");
        c.arg("-c")
            .arg(HOLDER)
            .arg(bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg("json")
            .stdin(std::process::Stdio::piped());
        // Proc::spawn sets stdin to null; this test needs to write to it.
        let mut child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        (Proc::adopt(child), stdin)
    };
    let port: u16 = holder
        .0
        .wait_line(|l| l.starts_with("port "), Duration::from_secs(5))
        .and_then(|l| l[5..].trim().parse().ok())
        .unwrap_or_else(|| panic!("holder did not bind:\n{}", holder.0.dump()));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = Config::new()
        .listen(&[&addr.to_string()])
        .workers(2)
        .upstream(UP, up.port())
        .limit("drain_timeout", "5s")
        .raw("takeover_socket: null\n");
    std::fs::write(&config, cfg.render()).unwrap();
    use std::io::Write as _;
    // Both starts at once: the holder starts B as soon as A has exited.
    holder.1.write_all(b"start\nstart\n").unwrap();
    holder.1.flush().unwrap();
    let pid_a: u32 = holder
        .0
        .wait_line(|l| l.starts_with("pid A "), Duration::from_secs(5))
        .and_then(|l| l[6..].trim().parse().ok())
        .expect("pid A");
    holder
        .0
        .wait_line(|l| l.contains("\"event_id\":101"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("A did not start:\n{}", holder.0.dump()));
    let target = format!("{UP}:{}", up.port());
    let load = Load::start(addr, &target, 4, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let before = load.ok_so_far();
    signal(pid_a, libc::SIGTERM);
    holder
        .0
        .wait_line(|l| l.starts_with("exit A"), Duration::from_secs(15))
        .unwrap_or_else(|| panic!("A did not exit:\n{}", holder.0.dump()));
    let pid_b: u32 = holder
        .0
        .wait_line(|l| l.starts_with("pid B "), Duration::from_secs(5))
        .and_then(|l| l[6..].trim().parse().ok())
        .expect("pid B");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while holder.0.count(|l| l.contains("\"event_id\":101")) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "B did not start:\n{}",
            holder.0.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_b = load.ok_so_far();
    std::thread::sleep(Duration::from_millis(700));
    let (tally, errors) = load.finish();
    eprintln!(
        "restart on a held socket: {tally:?}, {:.0} CONNECTs/s",
        tally.rate()
    );
    assert!(before > 0, "A served clients");
    assert!(tally.ok > at_b, "B served clients");
    assert_eq!(
        (tally.refused, tally.reset, tally.other),
        (0, 0, 0),
        "errors: {errors:?}\n{}",
        holder.0.dump()
    );
    signal(pid_b, libc::SIGTERM);
    holder
        .0
        .wait_line(|l| l.starts_with("exit B"), Duration::from_secs(15))
        .unwrap_or_else(|| panic!("B did not exit:\n{}", holder.0.dump()));
}

/// The shipped socket unit verifies with its service, and listens exactly on the default
/// configuration's `listen` addresses (a mismatch would fail the start with event 401).
#[test]
fn the_socket_unit_matches_the_default_listen_and_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let socket = std::fs::read_to_string(root.join("systemd/splicegate.socket")).unwrap();
    let streams: Vec<String> = socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .map(str::to_owned)
        .collect();
    let default = std::fs::read_to_string(root.join("src/config/default.yaml")).unwrap();
    let listen: Vec<String> = default
        .split("\nlisten:\n")
        .nth(1)
        .unwrap()
        .lines()
        .map_while(|l| l.strip_prefix("  - "))
        .map(|l| l.trim_matches('"').to_owned())
        .collect();
    assert!(!listen.is_empty());
    assert_eq!(streams, listen, "splicegate.socket vs default listen");
    assert!(socket.contains("BindIPv6Only=ipv6-only"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: systemd-analyze not installed (package systemd)");
        return;
    }
    let dir = TempDir::new("units");
    let service = std::fs::read_to_string(root.join("systemd/splicegate.service")).unwrap();
    let s = dir.write(
        "splicegate.service",
        &service.replace("/usr/bin/splicegate", bin()),
    );
    let k = dir.write("splicegate.socket", &socket);
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&k)
        .arg(&s)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    assert!(!err.contains("splicegate."), "systemd-analyze warns: {err}");
}

/// Reloads on a socket-activated gateway: adding an address binds it beside the inherited
/// socket (a new engine takes the inherited socket over), and dropping the inherited address
/// is refused (event 401) while the old configuration keeps serving.
#[test]
fn reloads_keep_the_inherited_socket_and_refuse_to_drop_it() {
    let Some(tool) = tool() else { return };
    init();
    let up = Upstream::echo();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = Config::new()
        .workers(2)
        .upstream(UP, up.port())
        .raw("takeover_socket: null\n");
    let dir = TempDir::new("activate-reload");
    let config = dir.write(
        "splicegate.yaml",
        &base.clone().listen(&[&addr.to_string()]).render(),
    );
    let listen = addr.to_string();
    let mut p = Proc::spawn(gateway_cmd(&[tool, "-l", &listen], &config));
    p.wait_line(|l| l.contains("Listening on"), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("systemd-socket-activate did not listen:\n{}", p.dump()));
    let target = format!("{UP}:{}", up.port());
    let mut s = open_tunnel(addr, &target);
    echo_roundtrip(&mut s, b"start");
    drop(s);
    p.wait_line(|l| l.contains("\"event_id\":101"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no event 101:\n{}", p.dump()));
    // systemd-socket-activate execs the gateway on the first connection: the same pid.
    let gw = p.pid();

    // Add an address: a new engine, the inherited socket handed over, the new one bound.
    std::fs::write(
        &config,
        base.clone()
            .workers(3)
            .listen(&[&addr.to_string(), &extra.to_string()])
            .render(),
    )
    .unwrap();
    signal(gw, libc::SIGHUP);
    p.wait_line(
        |l| l.contains("configuration reloaded") && l.contains(&extra.to_string()),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("reload not applied:\n{}", p.dump()));
    for (i, a) in [addr, extra, addr, extra].into_iter().enumerate() {
        let mut s = open_tunnel(a, &target);
        echo_roundtrip(&mut s, &[i as u8; 100]);
    }

    // Drop the inherited address: refused, both still served.
    std::fs::write(&config, base.listen(&[&extra.to_string()]).render()).unwrap();
    signal(gw, libc::SIGHUP);
    let ev = p
        .wait_line(|l| l.contains("\"event_id\":401"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no event 401:\n{}", p.dump()));
    assert!(ev.contains("socket-activated"), "{ev}");
    for a in [addr, extra] {
        let mut s = open_tunnel(a, &target);
        echo_roundtrip(&mut s, b"still here");
    }
    signal(gw, libc::SIGTERM);
    assert!(
        p.wait_exit(Duration::from_secs(15)).is_some(),
        "{}",
        p.dump()
    );
}
