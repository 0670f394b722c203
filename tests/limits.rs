//! Resource limits: running out of file descriptors is answered with 503, never a crash, hang,
//! busy loop or leaked fd, and the gateway recovers when fds come back.

mod support;

use std::time::{Duration, Instant};
use support::*;

const NAME: &str = "fd.splicegate.test";
/// Soft and hard RLIMIT_NOFILE for the gateway under test: room for a handful of tunnels.
const NOFILE: u32 = 64;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// fds of `pid` numbered below [`NOFILE`]: the slots RLIMIT_NOFILE leaves it (an fd inherited
/// above the limit, such as a build jobserver's pipe, does not take one).
fn slots_used(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&fd| fd < NOFILE)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn fd_exhaustion_answers_503_and_recovers() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    let up = Upstream::echo();
    let cfg = Config::new().workers(1).upstream(NAME, up.port());
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let Some(gw) = Gateway::start_wrapped(cfg, &["prlimit", &limit, "--"]) else {
        return;
    };
    let target = format!("{NAME}:{}", up.port());
    // Warm the worker's pipe pool (it keeps a few empty pipes for reuse), then take the baseline.
    {
        let mut s = open_tunnel(gw.addr(), &target);
        echo_roundtrip(&mut s, &vec![7u8; 256 * 1024]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric_value("splicegate_active_client_connections") > 0.0 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let baseline = gw.fd_count();

    // Open tunnels until the gateway runs out of fds; every answer must be 200 or 503.
    let mut tunnels = Vec::new();
    let mut refused = None;
    for _ in 0..(NOFILE as usize) {
        let (s, r) = request(gw.addr(), connect_head(&target).as_bytes());
        let r = r.expect("every CONNECT gets an answer, even out of fds");
        match r.status {
            200 => tunnels.push(s),
            503 => {
                refused = Some(s);
                break;
            }
            other => panic!(
                "expected 200 or 503 near the fd limit, got {other}: {:?}",
                r.head
            ),
        }
    }
    let mut refused = refused.expect("the gateway never refused although it ran out of fds");
    assert!(
        tunnels.len() >= 5,
        "only {} tunnels before the first 503: the fd budget is mis-accounted",
        tunnels.len()
    );
    assert_closes(&mut refused, Duration::from_secs(5));

    // At the limit the gateway idles: a refused client costs one accept, not a spin.
    let cpu0 = cpu_seconds(gw.pid());
    let t0 = Instant::now();
    for _ in 0..5 {
        let (_s, r) = request(gw.addr(), connect_head(&target).as_bytes());
        assert_eq!(r.expect("answer at the limit").status, 503);
    }
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(gw.pid()) - cpu0;
    let share = used / t0.elapsed().as_secs_f64();
    assert!(
        share < 0.2,
        "gateway used {:.0}% of a core while out of fds",
        share * 100.0
    );

    // Existing tunnels still carry data (pipes fall back to copying when none can be made).
    for s in tunnels.iter_mut().take(3) {
        echo_roundtrip(s, &vec![7u8; 256 * 1024]);
    }

    // Close everything: fds return to the baseline and new tunnels work again.
    drop(tunnels);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.fd_count() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gw.fd_count() <= baseline,
        "fds leaked: {} open after closing every tunnel, {baseline} at start",
        gw.fd_count()
    );
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, b"back in business");
    assert!(
        gw.metric_value("splicegate_errors_total{kind=\"fd_exhausted\"}") >= 1.0,
        "fd exhaustion is counted"
    );
    let (code, _) = gw
        .metrics_get("/healthz")
        .expect("healthz answers after fd exhaustion");
    assert_eq!(code, 200);
}

/// Open silent clients until every fd slot of the gateway is taken (each holds one until the
/// header timeout); bounded by [`NOFILE`] connections and 2 s per connection.
fn fill_fd_table(gw: &Gateway, idle: &mut Vec<std::net::TcpStream>) -> bool {
    // (Not polling /metrics here: its own connection would hold an fd while counting.) A slot
    // free for a moment while the worker or the metrics endpoint swaps its spare fd is not free:
    // only one still free 50 ms later gets a client.
    let full = || {
        slots_used(gw.pid()) >= NOFILE as usize || {
            std::thread::sleep(Duration::from_millis(50));
            slots_used(gw.pid()) >= NOFILE as usize
        }
    };
    for _ in 0..NOFILE {
        if full() {
            return true;
        }
        let before = slots_used(gw.pid());
        idle.push(connect(gw.addr()));
        let deadline = Instant::now() + Duration::from_secs(2);
        while slots_used(gw.pid()) <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    full()
}

/// The metrics endpoint keeps a spare fd: while the worker holds every fd the process may open
/// (silent clients fill the table; new clients get 503 from the worker's own spare), `/metrics`
/// and `/readyz` still answer, each request made with the table full.
#[test]
fn metrics_and_readyz_answer_while_the_workers_are_out_of_fds() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    let cfg = Config::new().workers(1).limit("header_timeout", "60s");
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let Some(gw) = Gateway::start_wrapped(cfg, &["prlimit", &limit, "--"]) else {
        return;
    };
    assert_eq!(gw.metrics_get("/readyz").expect("readyz").0, 200);
    let mut idle = Vec::new();
    assert!(
        fill_fd_table(&gw, &mut idle),
        "the fd table never filled: {} of {NOFILE} slots with {} silent clients",
        slots_used(gw.pid()),
        idle.len()
    );
    // The worker is out of fds: a new client gets its 503.
    let (_s, r) = request(gw.addr(), connect_head("fd.splicegate.test:443").as_bytes());
    assert_eq!(r.expect("an answer at the limit").status, 503);

    for round in 0..3 {
        for path in ["/metrics", "/readyz"] {
            assert!(
                fill_fd_table(&gw, &mut idle),
                "round {round}: the fd table is not full before {path}"
            );
            let (code, body) = gw
                .metrics_get(path)
                .unwrap_or_else(|e| panic!("round {round}: {path} while out of fds: {e}"));
            assert_eq!(code, 200, "round {round}: {path}: {body}");
            if path == "/metrics" {
                assert!(body.contains("splicegate_errors_total"), "{body}");
            }
        }
    }
    // Out of fds, the endpoint idles between requests: accept4's EMFILE must not leave it
    // spinning on a listener whose queue is empty.
    let cpu0 = cpu_seconds(gw.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let share = (cpu_seconds(gw.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        share < 0.2,
        "gateway used {:.0}% of a core while out of fds after serving metrics",
        share * 100.0
    );
    drop(idle);
}

/// A one-worker gateway whose every accept fails with `errno` (test builds only), and three
/// queued clients that trigger the failing accepts; they are never served.
fn failing_accepts(errno: i32) -> Option<(Upstream, Gateway, Vec<std::net::TcpStream>)> {
    let up = Upstream::echo();
    let cfg = Config::new().workers(1).upstream(NAME, up.port());
    let var = format!("SPLICEGATE_TEST_ACCEPT_ERROR={errno}");
    let gw = Gateway::start_wrapped(cfg, &["env", &var])?;
    let clients: Vec<_> = (0..3)
        .filter_map(|_| std::net::TcpStream::connect(gw.addr()).ok())
        .collect();
    assert!(!clients.is_empty(), "the kernel queues the clients");
    Some((up, gw, clients))
}

/// The gateway's CPU over `window`, as a share of one core.
fn cpu_share_over(gw: &Gateway, window: Duration) -> f64 {
    let cpu0 = cpu_seconds(gw.pid());
    let t0 = Instant::now();
    std::thread::sleep(window);
    (cpu_seconds(gw.pid()) - cpu0) / t0.elapsed().as_secs_f64()
}

/// A persistent accept error pauses accepting with an exponential back-off instead of retrying at
/// once: with every accept failing (injected through the test-build-only
/// `SPLICEGATE_TEST_ACCEPT_ERROR`), the gateway stays near idle and counts a bounded number of
/// errors. ENOBUFS is counted as `out_of_memory`, not as fd exhaustion; EINVAL (any other error)
/// as `accept`.
#[test]
fn persistent_accept_errors_back_off_without_spinning() {
    for (errno, kind) in [(libc::EINVAL, "accept"), (libc::ENOBUFS, "out_of_memory")] {
        let Some((_up, gw, _clients)) = failing_accepts(errno) else {
            return;
        };
        let share = cpu_share_over(&gw, Duration::from_secs(2));
        assert!(
            share < 0.2,
            "errno {errno}: gateway used {:.0}% of a core while accept failed",
            share * 100.0
        );
        let query = format!("splicegate_errors_total{{kind=\"{kind}\"}}");
        let errors = gw.metric_value(&query);
        assert!(
            (1.0..100.0).contains(&errors),
            "errno {errno}: {errors} accept errors counted in 2 s (back-off: about 10)"
        );
        assert_eq!(
            gw.metric_value("splicegate_errors_total{kind=\"fd_exhausted\"}"),
            0.0,
            "errno {errno} is not fd exhaustion"
        );
        gw.expect_event(
            400,
            |e| field_str(e, "reason").as_deref() == Some(kind),
            Duration::from_secs(5),
            "accept error event",
        );
        let (code, _) = gw.metrics_get("/healthz").expect("healthz answers");
        assert_eq!(code, 200);
    }
}

/// An accept error that accept(2) calls the client's own (EPERM, ECONNABORTED, ...) is retried at
/// once; when it repeats on every try (EPERM from a seccomp filter or an LSM hook on accept4,
/// which leaves the connection queued) the retries are capped and then pause like any other
/// error: the gateway stays near idle and the errors are counted, not silent.
#[test]
fn persistent_per_client_accept_errors_do_not_spin() {
    for errno in [libc::EPERM, libc::ECONNABORTED] {
        let Some((_up, gw, _clients)) = failing_accepts(errno) else {
            return;
        };
        let share = cpu_share_over(&gw, Duration::from_secs(2));
        assert!(
            share < 0.2,
            "errno {errno}: gateway used {:.0}% of a core while every accept failed",
            share * 100.0
        );
        // Counted and said as accept errors once they proved persistent.
        let errors = gw.metric_value("splicegate_errors_total{kind=\"accept\"}");
        assert!(
            (1.0..100.0).contains(&errors),
            "errno {errno}: {errors} accept errors counted in 2 s (back-off: about 10)"
        );
        gw.expect_event(
            400,
            |e| field_str(e, "reason").as_deref() == Some("accept"),
            Duration::from_secs(5),
            "accept error event",
        );
        let (code, _) = gw.metrics_get("/healthz").expect("healthz answers");
        assert_eq!(code, 200);
        eprintln!(
            "figure: errno {errno} on every accept: {:.1}% of a core, {errors} errors in 2 s",
            share * 100.0
        );
    }
}
