//! Live reload: SIGHUP and file changes under load, refused configs, listen/workers changes that
//! keep tunnels up, systemd notifications and the pid file.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const UP: &str = "up.splicegate.test";
const PROBE: &str = "probe.splicegate.test";
const OK: &str = "splicegate_config_reloads_total{result=\"ok\"}";
const FAILED: &str = "splicegate_config_reloads_total{result=\"failed\"}";

/// Replace the file atomically (temporary file + rename), as `splicegate config set` does.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The status of a CONNECT to the probe host through `addr`.
fn probe_status(addr: SocketAddr, port: u16) -> u16 {
    let (_s, r) = connect_request(addr, &format!("{PROBE}:{port}"));
    r.status
}

/// Tunnels that echo pattern data in a loop until stopped, each byte checked.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Result<u64, String>>>,
}

impl Load {
    /// `tunnels` tunnels to `target` through `addr`, spread over `threads` threads.
    fn start(addr: SocketAddr, target: &str, tunnels: usize, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let per = tunnels / threads;
        let mut handles = Vec::new();
        for t in 0..threads {
            let mut streams: Vec<TcpStream> = (0..per).map(|_| open_tunnel(addr, target)).collect();
            let stop = Arc::clone(&stop);
            handles.push(thread::spawn(move || {
                let mut moved = 0u64;
                let mut round = 0u64;
                let mut back = vec![0u8; 32 * 1024];
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    for (i, s) in streams.iter_mut().enumerate() {
                        let seed = (t as u64) << 40 | (i as u64) << 20 | round;
                        let n = 1024 + (seed.wrapping_mul(7919) % (31 * 1024)) as usize;
                        let data = Pattern::bytes(seed, n);
                        s.write_all(&data)
                            .map_err(|e| format!("tunnel {t}/{i}: write: {e}"))?;
                        s.read_exact(&mut back[..n])
                            .map_err(|e| format!("tunnel {t}/{i}: read: {e}"))?;
                        if back[..n] != data[..] {
                            return Err(format!("tunnel {t}/{i}: echoed bytes differ"));
                        }
                        moved += n as u64;
                    }
                    round += 1;
                    if last {
                        break;
                    }
                }
                // Close cleanly: half-close, expect the echo side to close too.
                for (i, s) in streams.iter_mut().enumerate() {
                    s.shutdown(std::net::Shutdown::Write)
                        .map_err(|e| format!("tunnel {t}/{i}: shutdown: {e}"))?;
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest)
                        .map_err(|e| format!("tunnel {t}/{i}: close: {e}"))?;
                    if !rest.is_empty() {
                        return Err(format!("tunnel {t}/{i}: {} stray bytes", rest.len()));
                    }
                }
                Ok(moved)
            }));
        }
        Load {
            stop,
            threads: handles,
        }
    }

    /// Stop, and return the bytes moved by every tunnel; panics on any tunnel's error.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut errors = Vec::new();
        for h in self.threads {
            match h.join() {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("a load thread panicked".into()),
            }
        }
        assert!(
            errors.is_empty(),
            "tunnels dropped or corrupted: {errors:?}"
        );
        total
    }
}

/// New tunnels opened and closed back to back, to catch any connection refused or reset while
/// listeners are handed over.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(u64, Vec<String>)>,
}

impl Churn {
    fn start(addr: SocketAddr, target: &str) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let target = target.to_owned();
        let thread = thread::spawn(move || {
            let mut opened = 0;
            let mut failures = Vec::new();
            while !flag.load(Ordering::Relaxed) && failures.len() < 10 {
                let r = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(connect_head(&target).as_bytes())?;
                    let head = read_response_head(&mut s)?;
                    if head.status != 200 {
                        return Err(std::io::Error::other(format!("status {}", head.status)));
                    }
                    s.write_all(b"ping")?;
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b)?;
                    Ok(())
                })();
                match r {
                    Ok(()) => opened += 1,
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (opened, failures)
        });
        Churn { stop, thread }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or((0, vec!["churn thread panicked".into()]))
    }
}

fn reload_event_with(gw: &Gateway, needle: &str) -> serde_json::Value {
    gw.expect_event(
        100,
        |e| field_str(e, "changes").is_some_and(|c| c.contains(needle)),
        Duration::from_secs(10),
        &format!("reload with changes containing {needle:?}"),
    )
}

#[test]
fn allowlist_changes_under_load_drop_no_tunnel() {
    let up = Upstream::echo();
    let base = Config::new()
        .upstream(UP, up.port())
        .map_host(PROBE, "127.0.0.1");
    let Some(gw) = Gateway::start(base.clone()) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    assert_eq!(probe_status(gw.addr(), up.port()), 403);

    let load = Load::start(gw.addr(), &target, 200, 20);
    for round in 1..=20u32 {
        let marker = format!("h{round}.splicegate.test");
        let mut cfg = base.clone().allow_host(&marker);
        let probe_allowed = round % 2 == 1;
        if probe_allowed {
            cfg = cfg.allow_host(PROBE);
        }
        let text = cfg.render();
        if round % 2 == 0 {
            // A file change alone (an editor writing in place): the inotify watch reloads.
            std::fs::write(gw.config_path(), &text).unwrap();
        } else {
            replace_file(gw.config_path(), &text);
            gw.signal(libc::SIGHUP);
        }
        let ev = reload_event_with(&gw, &format!("+{marker}"));
        assert_eq!(field_str(&ev, "level").as_deref(), Some("INFO"), "{ev}");
        let want = if probe_allowed { 200 } else { 403 };
        assert_eq!(
            probe_status(gw.addr(), up.port()),
            want,
            "round {round}: the new allowlist must apply to new tunnels"
        );
        if round == 10 {
            // A broken file: refused, the old configuration keeps serving.
            replace_file(gw.config_path(), "workers: [not, a, number\n");
            gw.signal(libc::SIGHUP);
            gw.expect_event(401, |_| true, Duration::from_secs(10), "reload refused");
            let failed = gw.wait_metric(FAILED, |v| v >= 1.0, Duration::from_secs(5));
            assert!(failed >= 1.0, "failed reloads counted: {failed}");
            assert_eq!(
                probe_status(gw.addr(), up.port()),
                403,
                "old policy still in force"
            );
        }
    }
    let moved = load.finish();
    assert!(moved > 200 * 1024, "load moved only {moved} bytes");
    assert!(gw.metric_value(OK) >= 20.0, "{}", gw.metrics());
    // Every refused reload is counted once and logged once (at least the broken file of round
    // 10; an in-place write may also be read half-written and refused).
    let bad = gw.events(401);
    assert!(!bad.is_empty(), "the broken file was logged as event 401");
    assert_eq!(
        gw.metric_value(FAILED),
        bad.len() as f64,
        "failed reloads counted as logged: {bad:?}"
    );
    assert!(
        bad.iter().all(|e| field_str(e, "error").is_some()),
        "event 401 carries the errors: {bad:?}"
    );
    let active = gw.wait_metric(
        "splicegate_tunnels_active",
        |v| v == 0.0,
        Duration::from_secs(10),
    );
    assert_eq!(active, 0.0, "{}", gw.metrics());
}

#[test]
fn listen_and_workers_changes_keep_tunnels_up() {
    let up = Upstream::echo();
    let base = Config::new().upstream(UP, up.port()).workers(2);
    let Some(gw) = Gateway::start(base.clone()) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    let first = gw.addr();
    let load = Load::start(first, &target, 40, 4);
    let churn = Churn::start(first, &target);
    let mut old = open_tunnel(first, &target);
    echo_roundtrip(&mut old, b"before");

    // Add a second listener: the first keeps its (ephemeral) port.
    let cfg = base.clone().listen(&["127.0.0.1:0", "127.0.0.1:0"]);
    replace_file(gw.config_path(), &cfg.render());
    gw.signal(libc::SIGHUP);
    let ev = reload_event_with(&gw, "listen ");
    let listen: Vec<SocketAddr> = field_str(&ev, "listen")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(listen.len(), 2, "{ev}");
    assert_eq!(
        listen[0], first,
        "the unchanged listener keeps its port: {ev}"
    );
    let mut via_second = open_tunnel(listen[1], &target);
    echo_roundtrip(&mut via_second, b"second listener");
    let mut via_first = open_tunnel(first, &target);
    echo_roundtrip(&mut via_first, b"first listener, new engine");
    echo_roundtrip(&mut old, b"old tunnel on the retired engine");
    assert_eq!(gw.metric_value("splicegate_engines_retiring"), 1.0);

    // Change the worker count.
    let cfg = cfg.workers(3);
    replace_file(gw.config_path(), &cfg.render());
    gw.signal(libc::SIGHUP);
    let ev = reload_event_with(&gw, "workers 2 -> 3");
    assert_eq!(field_u64(&ev, "workers"), Some(3), "{ev}");
    let mut newest = open_tunnel(first, &target);
    echo_roundtrip(&mut newest, b"three workers");
    echo_roundtrip(&mut old, b"still up");
    echo_roundtrip(&mut via_second, b"still up");

    let moved = load.finish();
    assert!(moved > 0);
    let (opened, failures) = churn.finish();
    assert!(opened > 10, "only {opened} new tunnels during the reloads");
    assert!(
        failures.is_empty(),
        "new connections failed while engines were replaced: {failures:?}"
    );
    let bytes_before = gw.metric_value("splicegate_bytes_total");
    for mut s in [old, via_second, via_first, newest] {
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_closes(&mut s, Duration::from_secs(5));
    }
    // The retired engines finish once their tunnels have closed; their counts stay.
    let retiring = gw.wait_metric(
        "splicegate_engines_retiring",
        |v| v == 0.0,
        Duration::from_secs(10),
    );
    assert_eq!(retiring, 0.0, "{}", gw.log_dump());
    assert!(gw.metric_value("splicegate_bytes_total") >= bytes_before);
    let active = gw.wait_metric(
        "splicegate_tunnels_active",
        |v| v == 0.0,
        Duration::from_secs(10),
    );
    assert_eq!(active, 0.0);
}

#[test]
fn reload_without_changes_and_unreadable_file() {
    let Some(gw) = Gateway::start(Config::new()) else {
        return;
    };
    gw.signal(libc::SIGHUP);
    gw.expect_event(
        100,
        |e| field_str(e, "changes").as_deref() == Some("no changes"),
        Duration::from_secs(5),
        "a reload with no changes",
    );
    assert_eq!(
        gw.wait_metric(OK, |v| v >= 1.0, Duration::from_secs(5)),
        1.0
    );
    std::fs::remove_file(gw.config_path()).unwrap();
    gw.signal(libc::SIGHUP);
    let ev = gw.expect_event(
        401,
        |_| true,
        Duration::from_secs(5),
        "missing file refused",
    );
    assert!(
        field_str(&ev, "error").unwrap().contains("cannot read"),
        "{ev}"
    );
    assert_eq!(
        gw.wait_metric(FAILED, |v| v >= 1.0, Duration::from_secs(5)),
        1.0
    );
}

/// A `splicegate run` child with systemd's notification environment.
fn spawn_notified(cfg: &Config, dir: &TempDir, sock: &Path) -> std::process::Child {
    let path = dir.write("splicegate.yaml", &cfg.render());
    Command::new(bin())
        .args(["run", "--log-format", "json", "--config"])
        .arg(&path)
        .arg("--pid-file")
        .arg(dir.path().join("splicegate.pid"))
        .env("NOTIFY_SOCKET", sock)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn splicegate")
}

/// Collect notification datagrams until `want` has been seen in `count` of them (or 10 s).
fn wait_notify(rx: &UnixDatagram, seen: &mut Vec<String>, want: &str, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    let hits = |seen: &[String]| seen.iter().filter(|m| m.lines().any(|l| l == want)).count();
    while hits(seen) < count && Instant::now() < deadline {
        if let Ok(n) = rx.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    hits(seen) >= count
}

fn kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn systemd_notifications_and_pid_file() {
    let dir = TempDir::new("notify");
    let sock = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // The protocol does not depend on the engine; epoll runs everywhere.
    let mut cfg = Config::new();
    cfg.engine = "epoll".into();
    let mut child = spawn_notified(&cfg, &dir, &sock);
    let mut seen = Vec::new();
    let pid_file = dir.path().join("splicegate.pid");

    let ready = wait_notify(&rx, &mut seen, "READY=1", 1);
    let status = seen.iter().any(|m| m.contains("STATUS=serving on"));
    let watchdog = wait_notify(&rx, &mut seen, "WATCHDOG=1", 2);
    let pid_text = std::fs::read_to_string(&pid_file).unwrap_or_default();
    kill(child.id(), "HUP");
    let reloading = wait_notify(&rx, &mut seen, "RELOADING=1", 1);
    let monotonic = seen
        .iter()
        .any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC="));
    let ready_again = wait_notify(&rx, &mut seen, "READY=1", 2);
    kill(child.id(), "TERM");
    let stopping = wait_notify(&rx, &mut seen, "STOPPING=1", 1);
    let exit = child.wait().unwrap();

    assert!(ready, "READY=1 after start: {seen:?}");
    assert!(status, "STATUS= line: {seen:?}");
    assert!(watchdog, "WATCHDOG=1 every WATCHDOG_USEC/2: {seen:?}");
    assert_eq!(pid_text.trim(), child.id().to_string(), "pid file content");
    assert!(
        reloading && monotonic,
        "RELOADING=1 + MONOTONIC_USEC: {seen:?}"
    );
    assert!(ready_again, "READY=1 after the reload: {seen:?}");
    assert!(stopping, "STOPPING=1 at drain: {seen:?}");
    assert!(exit.success(), "{exit:?}");
    assert!(!pid_file.exists(), "the pid file is removed at exit");
}

// ---------------------------------------------------------------------------------------------
// An emptied, half-written or recreated file never serves the defaults
// ---------------------------------------------------------------------------------------------

/// What a loopback client saw.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Closed at accept without a byte: `allowed_client_networks` refused it.
    Closed,
    /// The status line of an answer: the client was served.
    Answered(String),
    /// Could not connect: the listener moved (as the embedded defaults' `listen` would).
    NoListener(String),
}

fn probe_client(addr: SocketAddr, target: &str) -> Probe {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return Probe::NoListener(e.to_string()),
    };
    // A refused client may be closed before the request is written.
    let _ = s.write_all(connect_head(target).as_bytes());
    let (bytes, _) = read_until_closed_or_answered(&mut s);
    if bytes.is_empty() {
        Probe::Closed
    } else {
        let text = String::from_utf8_lossy(&bytes);
        Probe::Answered(text.lines().next().unwrap_or_default().to_owned())
    }
}

/// Bytes until the peer closes or an answer head is complete (a served tunnel stays open).
fn read_until_closed_or_answered(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    return (out, false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => {}
        }
    }
    panic!("a probe got neither an answer nor a close within 5s: {out:?}");
}

/// Probe every 50 ms until `done` holds (at most `timeout`): each probe must be closed at
/// accept. Returns how many probes were made.
fn refused_until(
    addr: SocketAddr,
    target: &str,
    timeout: Duration,
    done: impl Fn() -> bool,
) -> u32 {
    let deadline = Instant::now() + timeout;
    let mut probes = 0;
    loop {
        let p = probe_client(addr, target);
        probes += 1;
        assert_eq!(
            p,
            Probe::Closed,
            "probe {probes}: a loopback client must stay refused while the file is not valid"
        );
        if done() || Instant::now() >= deadline {
            return probes;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A gateway whose client networks exclude loopback, the final (valid) configuration that
/// admits 127.0.0.1, and the CONNECT target.
fn strict_gateway() -> Option<(Gateway, Upstream, String, String)> {
    let up = Upstream::echo();
    let base = Config::new().upstream(UP, up.port());
    let strict = base
        .clone()
        .raw("allowed_client_networks: [\"10.9.9.0/24\"]");
    // Last line, so a cut in its middle is a YAML syntax error.
    let open = base
        .raw("allowed_client_networks: [\"127.0.0.1/32\", \"10.9.9.0/24\"]")
        .render();
    let gw = Gateway::start(strict)?;
    let target = format!("{UP}:{}", up.port());
    assert_eq!(probe_client(gw.addr(), &target), Probe::Closed);
    Some((gw, up, open, target))
}

/// The final content is applied: event 100 names the new network and the client is served.
fn final_content_applies(gw: &Gateway, target: &str) {
    reload_event_with(gw, "+127.0.0.1/32");
    assert_eq!(
        probe_client(gw.addr(), target),
        Probe::Answered("HTTP/1.1 200 Connection established".to_owned())
    );
    // Every reload that was applied is the final one: nothing in between was.
    for ev in gw.events(100) {
        if let Some(changes) = field_str(&ev, "changes") {
            assert!(
                changes.contains("+127.0.0.1/32") || changes == "no changes",
                "only the final content may be applied, got a reload with {changes:?}"
            );
        }
    }
}

#[test]
fn truncate_then_write_never_serves_the_defaults() {
    let Some((gw, _up, open, target)) = strict_gateway() else {
        return;
    };
    // `: > gw.yaml`, then the editor writes the new content a moment later.
    std::fs::File::create(gw.config_path()).unwrap();
    let probes = refused_until(gw.addr(), &target, Duration::from_secs(10), || {
        !gw.events(401).is_empty()
    });
    let ev = gw.expect_event(401, |_| true, Duration::from_secs(1), "empty file refused");
    assert!(
        field_str(&ev, "error").is_some_and(|e| e.contains("configuration is empty")),
        "{ev}"
    );
    assert!(probes >= 2, "the empty window was probed ({probes} probes)");
    // Still refused after the empty file was refused.
    refused_until(gw.addr(), &target, Duration::from_millis(500), || false);
    std::fs::write(gw.config_path(), &open).unwrap();
    final_content_applies(&gw, &target);
    assert!(gw.metric_value(FAILED) >= 1.0);
}

#[test]
fn a_partial_write_is_refused_until_complete() {
    let Some((gw, _up, open, target)) = strict_gateway() else {
        return;
    };
    let cut = open.find("\"127.0.").expect("the client network line") + 6;
    // `printf "$half" > f; sleep 1; printf "$rest" >> f`: the writer stalls for longer than the
    // debounce with the file closed, so the half document is read, and refused.
    std::fs::write(gw.config_path(), &open.as_bytes()[..cut]).unwrap();
    refused_until(gw.addr(), &target, Duration::from_secs(10), || {
        !gw.events(401).is_empty()
    });
    let ev = gw.expect_event(401, |_| true, Duration::from_secs(1), "half file refused");
    assert!(field_str(&ev, "error").is_some(), "{ev}");
    refused_until(gw.addr(), &target, Duration::from_millis(500), || false);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(gw.config_path())
        .unwrap();
    f.write_all(&open.as_bytes()[cut..]).unwrap();
    drop(f);
    final_content_applies(&gw, &target);
}

#[test]
fn remove_then_create_then_write_never_serves_the_defaults() {
    let Some((gw, _up, open, target)) = strict_gateway() else {
        return;
    };
    std::fs::remove_file(gw.config_path()).unwrap();
    // Gone for a moment: the file watch waits for it to come back, nothing is refused or applied.
    refused_until(gw.addr(), &target, Duration::from_secs(1), || false);
    assert!(gw.events(401).is_empty(), "a removed file is waited for");
    std::fs::File::create(gw.config_path()).unwrap();
    refused_until(gw.addr(), &target, Duration::from_secs(10), || {
        !gw.events(401).is_empty()
    });
    refused_until(gw.addr(), &target, Duration::from_millis(500), || false);
    std::fs::write(gw.config_path(), &open).unwrap();
    final_content_applies(&gw, &target);
}

#[test]
fn an_empty_file_on_sighup_is_refused() {
    let Some((gw, _up, open, target)) = strict_gateway() else {
        return;
    };
    // Written and signalled at once, as `cat /dev/null > f; kill -HUP` would.
    let tmp = gw.config_path().with_extension("yaml.tmp");
    std::fs::write(&tmp, "# nothing here yet\n").unwrap();
    std::fs::rename(&tmp, gw.config_path()).unwrap();
    gw.signal(libc::SIGHUP);
    refused_until(gw.addr(), &target, Duration::from_secs(10), || {
        gw.events(401).len() >= 2
    });
    assert!(
        gw.events(401)
            .iter()
            .all(|e| field_str(e, "error").is_some_and(|x| x.contains("configuration is empty"))),
        "{:?}",
        gw.events(401)
    );
    replace_file(gw.config_path(), &open);
    gw.signal(libc::SIGHUP);
    final_content_applies(&gw, &target);
}

#[test]
fn widening_listen_beyond_loopback_warns_with_both_values() {
    let base = Config::new();
    let Some(gw) = Gateway::start(base.clone()) else {
        return;
    };
    // Another loopback address: no warning.
    replace_file(
        gw.config_path(),
        &base
            .clone()
            .listen(&["127.0.0.1:0", "127.0.0.1:0"])
            .render(),
    );
    gw.signal(libc::SIGHUP);
    reload_event_with(&gw, "listen ");
    // The wildcard: applied, but loudly.
    replace_file(
        gw.config_path(),
        &base.clone().listen(&["0.0.0.0:0"]).render(),
    );
    gw.signal(libc::SIGHUP);
    let ev = gw.expect_event(
        100,
        |e| field_str(e, "new_listen").is_some(),
        Duration::from_secs(10),
        "the widening warning",
    );
    assert_eq!(field_str(&ev, "level").as_deref(), Some("WARN"), "{ev}");
    assert_eq!(
        field_str(&ev, "old_listen").as_deref(),
        Some("127.0.0.1:0,127.0.0.1:0"),
        "{ev}"
    );
    assert_eq!(
        field_str(&ev, "new_listen").as_deref(),
        Some("0.0.0.0:0"),
        "{ev}"
    );
    let warnings: Vec<_> = gw
        .events(100)
        .into_iter()
        .filter(|e| field_str(e, "new_listen").is_some())
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "only the widening reload warns: {warnings:?}"
    );
    // Back to loopback (the test does not keep a wildcard listener open).
    replace_file(gw.config_path(), &base.render());
    gw.signal(libc::SIGHUP);
    gw.expect_event(
        100,
        |e| field_str(e, "changes").is_some_and(|c| c.contains("-> [127.0.0.1:0]")),
        Duration::from_secs(10),
        "back to loopback",
    );
}

#[test]
fn a_signal_during_a_write_waits_for_the_writer() {
    let Some((gw, _up, open, target)) = strict_gateway() else {
        return;
    };
    // The first part alone is a valid document without the client-network rule: applied as it
    // stands, it would admit every client.
    let cut = open
        .find("allowed_client_networks:")
        .expect("the client network line");
    let path = gw.config_path().to_path_buf();
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&open.as_bytes()[..cut]).unwrap();
    gw.signal(libc::SIGHUP);
    let writer = thread::spawn(move || {
        // Still writing for a while after the signal, a line every 20 ms, then the rest.
        for i in 0..30 {
            writeln!(f, "# still writing {i}").unwrap();
            thread::sleep(Duration::from_millis(20));
        }
        f.write_all(&open.as_bytes()[cut..]).unwrap();
    });
    let probes = refused_until(gw.addr(), &target, Duration::from_secs(10), || {
        writer.is_finished()
    });
    writer.join().unwrap();
    assert!(probes >= 5, "the write window was probed ({probes} probes)");
    final_content_applies(&gw, &target);
}

#[test]
fn a_file_that_never_holds_still_is_refused_after_the_retries() {
    let up = Upstream::echo();
    let strict = Config::new()
        .upstream(UP, up.port())
        .raw("allowed_client_networks: [\"10.9.9.0/24\"]")
        .limit("reload_debounce", "50ms")
        .limit("reload_retries", "2");
    let Some(gw) = Gateway::start(strict) else {
        return;
    };
    let target = format!("{UP}:{}", up.port());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(gw.config_path())
        .unwrap();
    writeln!(f, "# a writer that keeps going").unwrap();
    gw.signal(libc::SIGHUP);
    // Appending every 10 ms for 1.5 s: no read ever sees the file 50 ms quiet.
    let writer = thread::spawn(move || {
        for i in 0..150 {
            writeln!(f, "# line {i}").unwrap();
            thread::sleep(Duration::from_millis(10));
        }
    });
    let ev = gw.expect_event(
        401,
        |_| true,
        Duration::from_secs(10),
        "a file that kept changing refused",
    );
    let error = field_str(&ev, "error").unwrap_or_default();
    assert!(
        error.contains("kept changing") && error.contains("3 reads"),
        "{ev}"
    );
    refused_until(gw.addr(), &target, Duration::from_millis(300), || false);
    writer.join().unwrap();
    assert!(gw.metric_value(FAILED) >= 1.0);
}

const GONE: &str = "gone.splicegate.test";

/// Tunnels to `UP` and `GONE` (both to the echo upstream), then a reload that drops `GONE` from
/// the allowlist. Returns the gateway, the upstream and the two tunnels after the reload was
/// applied.
fn revoke_scenario(extra: &str) -> Option<(Gateway, Upstream, TcpStream, TcpStream)> {
    let up = Upstream::echo();
    let port = up.port();
    let keep_cfg = Config::new().upstream(UP, port).raw(extra);
    let gw = Gateway::start(keep_cfg.clone().upstream(GONE, port))?;
    let mut kept = open_tunnel(gw.addr(), &format!("{UP}:{port}"));
    let mut gone = open_tunnel(gw.addr(), &format!("{GONE}:{port}"));
    echo_roundtrip(&mut kept, b"before");
    echo_roundtrip(&mut gone, b"before");
    replace_file(gw.config_path(), &keep_cfg.render());
    gw.signal(libc::SIGHUP);
    reload_event_with(&gw, &format!("-{GONE}"));
    Some((gw, up, kept, gone))
}

/// A reload that removes a host closes the open tunnel to it within 1 s (event 105,
/// `reason="revoked"`, counted), while a tunnel to a host still allowed keeps streaming
/// byte-exact.
#[test]
fn reload_revokes_tunnels_the_new_policy_forbids() {
    let Some((gw, _up, mut kept, mut gone)) = revoke_scenario("") else {
        return;
    };
    let t0 = Instant::now();
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("revoked"),
        Duration::from_secs(1),
        "revocation event within 1 s",
    );
    assert!(
        field_str(&ev, "target").is_some_and(|t| t.starts_with(GONE)),
        "the event names the revoked tunnel: {ev}"
    );
    let closed = assert_closes(&mut gone, Duration::from_secs(1));
    assert!(closed.is_empty(), "nothing more came through: {closed:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"revoked\"}"),
        1.0
    );
    // The allowed tunnel is untouched: 4 MiB byte-exact after the reload.
    let data = Pattern::bytes(7, 4 << 20);
    let reader = {
        let mut r = kept.try_clone().unwrap();
        let n = data.len() as u64;
        thread::spawn(move || read_exact_hash(&mut r, n))
    };
    kept.write_all(&data).unwrap();
    let got = reader.join().unwrap().expect("echo back");
    assert_eq!(got, sha256(&data), "byte-exact through the kept tunnel");
    assert_eq!(
        gw.events(105).len(),
        1,
        "only the revoked tunnel: {:?}",
        gw.events(105)
    );
}

/// `revoke_on_reload: false`: a tunnel to a removed host keeps running; no event.
#[test]
fn reload_with_revoke_off_keeps_open_tunnels() {
    let Some((gw, _up, _kept, mut gone)) = revoke_scenario("revoke_on_reload: false\n") else {
        return;
    };
    thread::sleep(Duration::from_millis(1500));
    echo_roundtrip(&mut gone, b"still here after the reload");
    assert!(gw.events(105).is_empty(), "{:?}", gw.events(105));
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"revoked\"}"),
        0.0
    );
}
