//! Takeover (`run --takeover`, `splicegate upgrade`), against the real binary: a hand-over under
//! a stream of CONNECTs that refuses and resets nothing, and a new process killed before it
//! confirms, which leaves the old one serving.

mod handover_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use handover_support::{signal, Load, Proc};
use support::*;

const UP: &str = "up.splicegate.test";

/// A wrapper that appends `args` to the gateway's own command line (`exec` keeps the pid).
fn append(args: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("exec \"$0\" \"$@\" {args}"),
    ]
}

fn with_socket(cfg: Config, path: &Path) -> Config {
    cfg.raw(&format!(
        "takeover_socket: {}\n",
        yq(&path.display().to_string())
    ))
}

/// The inodes of the listening TCP sockets on 127.0.0.1:`port` (from /proc/net/tcp).
fn listening_inodes(port: u16) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9).and_then(|i| i.parse().ok()))
                .flatten()
        })
        .collect()
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|t| {
                    t.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

/// Old gateway A (2 workers) hands over to B (3 workers) while six clients open tunnels as
/// fast as they can: 0 refused, 0 reset, B accepts on A's port, A drains and exits, the pid
/// file and the takeover socket move to B.
#[test]
fn a_takeover_under_load_refuses_and_resets_nothing() {
    let up = Upstream::echo();
    let dir = TempDir::new("takeover");
    let sock = dir.path().join("takeover.sock");
    let pid_file = dir.path().join("splicegate.pid");
    let cfg_a = with_socket(Config::new().workers(2).upstream(UP, up.port()), &sock)
        .limit("drain_timeout", "5s");
    let wrap_a = append(&format!("--pid-file {}", pid_file.display()));
    let wrap_a: Vec<&str> = wrap_a.iter().map(String::as_str).collect();
    let Some(mut a) = Gateway::start_wrapped(cfg_a.clone(), &wrap_a) else {
        return;
    };
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        a.pid().to_string()
    );
    let target = format!("{UP}:{}", up.port());
    let sockets_a = listening_inodes(a.addr().port());
    assert_eq!(
        sockets_a.len(),
        2,
        "one SO_REUSEPORT socket per worker of A"
    );
    let load = Load::start(a.addr(), &target, 6, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    let before = load.ok_so_far();
    // B: the same listen entry (port 0: it takes A's port), one more worker, no --pid-file
    // (it adopts A's).
    let cfg_b = cfg_a.clone().workers(3);
    let wrap_b = append(&format!("--takeover {}", sock.display()));
    let wrap_b: Vec<&str> = wrap_b.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let Some(b) = Gateway::start_wrapped(cfg_b, &wrap_b) else {
        load.finish();
        return;
    };
    let took = t0.elapsed();
    assert_eq!(b.addr(), a.addr(), "B accepts on A's socket");
    assert_eq!(
        field_u64(b.started_event(), "takeover_from"),
        Some(u64::from(a.pid()))
    );
    a.expect_event(
        100,
        |e| field_str(e, "message").is_some_and(|m| m.contains("takeover complete")),
        Duration::from_secs(5),
        "A hands over",
    );
    let st = a
        .wait_exit(Duration::from_secs(15))
        .expect("A exits after its drain");
    assert!(st.success(), "{st:?}");
    // The very socket objects live on in B (so nothing queued on them was lost), plus one
    // new socket for B's third worker.
    let sockets_b = listening_inodes(a.addr().port());
    let held_b = socket_inodes(b.pid());
    for s in &sockets_a {
        assert!(
            sockets_b.contains(s),
            "A's socket {s} still listens: {sockets_b:?}"
        );
        assert!(held_b.contains(s), "B holds A's socket {s}");
    }
    assert_eq!(sockets_b.len(), 3, "{sockets_b:?}");
    let at_exit = load.ok_so_far();
    std::thread::sleep(Duration::from_millis(1500));
    let (tally, errors) = load.finish();
    eprintln!(
        "takeover under load: {tally:?}, {:.0} CONNECTs/s, hand-over took {took:?}",
        tally.rate()
    );
    assert!(before > 0 && tally.ok > at_exit, "both served clients");
    assert_eq!(
        (tally.refused, tally.reset, tally.other),
        (0, 0, 0),
        "errors: {errors:?}\nA:\n{}\nB:\n{}",
        a.log_dump(),
        b.log_dump()
    );
    assert!(
        tally.rate() >= 1000.0,
        "the stream must reach 1,000 CONNECTs/s to mean anything: {tally:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        b.pid().to_string(),
        "the pid file names B"
    );
    assert_eq!(b.readyz().unwrap(), 200);
    assert!(sock.exists(), "B serves the takeover socket");
}

/// The new process starts its workers, then is killed before it confirms: the old one logs
/// event 400 `takeover_failed`, keeps serving (every client afterwards gets its tunnel,
/// `/readyz` 200), and a later takeover succeeds.
#[test]
fn a_takeover_that_dies_before_confirming_leaves_the_old_process_serving() {
    let up = Upstream::echo();
    let dir = TempDir::new("takeover-fail");
    let sock = dir.path().join("takeover.sock");
    let cfg = with_socket(Config::new().workers(2).upstream(UP, up.port()), &sock);
    let Some(mut a) = Gateway::start(cfg.clone()) else {
        return;
    };
    let config_b = dir.write("b.yaml", &cfg.render());
    let mut b = Proc::spawn({
        let mut c = Command::new(bin());
        c.args(["run", "--log-format", "json", "--takeover"])
            .arg(&sock)
            .arg("--config")
            .arg(&config_b)
            .env("SPLICEGATE_TEST_TAKEOVER_PAUSE", "20000");
        c
    });
    b.wait_line(
        |l| l.contains("confirming to the old process"),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("B did not start its workers:\n{}", b.dump()));
    signal(b.pid(), libc::SIGKILL);
    b.wait_exit(Duration::from_secs(5)).expect("B killed");
    a.expect_event(
        400,
        |e| field_str(e, "reason").as_deref() == Some("takeover_failed"),
        Duration::from_secs(5),
        "A notices",
    );
    assert!(a.is_running());
    assert_eq!(a.readyz().unwrap(), 200);
    let target = format!("{UP}:{}", up.port());
    for i in 0..50u8 {
        let mut s = open_tunnel(a.addr(), &target);
        echo_roundtrip(&mut s, &[i; 64]);
    }
    // A later takeover (through `splicegate upgrade`) still works.
    let out = run_cli(
        &[
            "--log-format",
            "json",
            "upgrade",
            "--takeover-socket",
            sock.to_str().unwrap(),
            "--timeout",
            "20",
        ],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}\nA:\n{}", a.log_dump());
    let new_pid: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("upgrade output {text:?}"));
    assert_ne!(new_pid, a.pid());
    a.wait_exit(Duration::from_secs(15))
        .expect("A exits after the upgrade");
    for i in 0..20u8 {
        let mut s = open_tunnel(a.addr(), &target);
        echo_roundtrip(&mut s, &[i; 64]);
    }
    signal(new_pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while pid_alive(new_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid_alive(new_pid), "the upgraded process exits on SIGTERM");
}

#[test]
fn takeover_from_nobody_fails_the_start() {
    let dir = TempDir::new("takeover-none");
    let out = run_cli(
        &[
            "run",
            "--takeover",
            dir.path().join("none.sock").to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot take over"));
}

/// Collect notification datagrams until one line equals `want` (or `timeout`).
fn wait_notify(
    rx: &std::os::unix::net::UnixDatagram,
    seen: &mut Vec<String>,
    want: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let hit = |seen: &[String]| seen.iter().any(|m| m.lines().any(|l| l == want));
    while !hit(seen) && Instant::now() < deadline {
        if let Ok(n) = rx.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    hit(seen)
}

/// Under systemd (NOTIFY_SOCKET): the old process names the new one `MAINPID=` and never says
/// `STOPPING=1` (the service goes on); the new process says `READY=1` only after that.
#[test]
fn a_takeover_tells_systemd_the_new_main_pid_and_no_stop() {
    let dir = TempDir::new("takeover-notify");
    let sock = dir.path().join("takeover.sock");
    let notify = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let cfg = with_socket(Config::new(), &sock);
    let env = format!("NOTIFY_SOCKET={}", notify.display());
    let Some(mut a) = Gateway::start_wrapped(cfg.clone(), &["env", &env]) else {
        return;
    };
    let mut seen = Vec::new();
    assert!(wait_notify(
        &rx,
        &mut seen,
        "READY=1",
        Duration::from_secs(5)
    ));
    let n_before = seen.len();
    let wrap = append(&format!("--takeover {}", sock.display()));
    let mut wrap_b: Vec<&str> = vec!["env", &env];
    wrap_b.extend(wrap.iter().map(String::as_str));
    let Some(b) = Gateway::start_wrapped(cfg, &wrap_b) else {
        return;
    };
    let main_pid = format!("MAINPID={}", b.pid());
    assert!(
        wait_notify(&rx, &mut seen, &main_pid, Duration::from_secs(5)),
        "no {main_pid}: {seen:?}"
    );
    a.wait_exit(Duration::from_secs(10)).expect("A exits");
    // B's READY=1 follows the MAINPID= change.
    let after: Vec<String> = seen[n_before..].to_vec();
    let at_main = after
        .iter()
        .position(|m| m.lines().any(|l| l == main_pid))
        .unwrap();
    let mut rest = after[at_main + 1..].to_vec();
    assert!(
        rest.iter().any(|m| m.lines().any(|l| l == "READY=1"))
            || wait_notify(&rx, &mut rest, "READY=1", Duration::from_secs(5)),
        "B is READY after the MAINPID change: {after:?}"
    );
    let all: Vec<&String> = after.iter().chain(rest.iter()).collect();
    assert!(
        !all.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "a takeover is not a stop: {all:?}"
    );
}

/// The new process serves the listener set of its own configuration: an address the old one
/// had and the new one keeps is the same socket, one it dropped is closed, a new one is bound.
#[test]
fn the_new_process_keeps_drops_and_adds_listen_addresses_by_its_config() {
    let up = Upstream::echo();
    let dir = TempDir::new("takeover-set");
    let sock = dir.path().join("takeover.sock");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let base = with_socket(Config::new().workers(2).upstream(UP, up.port()), &sock);
    let Some(mut a) = Gateway::start(base.clone().listen(&[&addr(p1), &addr(p2)])) else {
        return;
    };
    let kept = listening_inodes(p1);
    let wrap = append(&format!("--takeover {}", sock.display()));
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let Some(b) = Gateway::start_wrapped(base.listen(&[&addr(p1), &addr(p3)]), &wrap) else {
        return;
    };
    a.wait_exit(Duration::from_secs(15)).expect("A exits");
    let target = format!("{UP}:{}", up.port());
    for p in [p1, p3] {
        let mut s = open_tunnel(addr(p).parse().unwrap(), &target);
        echo_roundtrip(&mut s, b"served");
    }
    let refused = std::net::TcpStream::connect(addr(p2));
    assert!(
        refused.is_err(),
        "the dropped address is closed:\n{}",
        b.log_dump()
    );
    let now = listening_inodes(p1);
    assert!(kept.iter().all(|s| now.contains(s)), "{kept:?} vs {now:?}");
}

#[test]
fn a_configured_takeover_socket_that_cannot_be_bound_fails_the_start() {
    let cfg = Config::new().raw("takeover_socket: /proc/splicegate-none/takeover.sock\n");
    let dir = TempDir::new("takeover-bad");
    let path = dir.write("splicegate.yaml", &cfg.render());
    let out = run_cli(
        &["run", "--config", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("takeover_socket"),
        "{out:?}"
    );
}
