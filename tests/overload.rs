//! Catalogue D9, overload: drive the connection or the memory budget to 95% and new CONNECTs
//! get 503 (event 400 reason="overload"), `/readyz` answers 503 and
//! `splicegate_overload_active` is 1, while the tunnels already open keep moving bytes
//! byte-exact; below 90% it is released. Between 90% and 95% the state stays as it was.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const ECHO: &str = "echo.overload.test";
const FLOOD: &str = "flood.overload.test";
/// The tests' sampling interval: short, so a state change shows within a few polls.
const SAMPLE: &str = "50ms";
/// Long enough for several samples at [`SAMPLE`].
const SEVERAL_SAMPLES: Duration = Duration::from_millis(600);
const T: Duration = Duration::from_secs(10);

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A connection that is open but has sent nothing (counts against `max_connections`).
fn idle(gw: &Gateway) -> TcpStream {
    connect(gw.addr())
}

/// Send `n` pattern bytes through an echo tunnel while reading them back; the hashes match.
fn echo_hashed(s: &mut TcpStream, n: u64, seed: u64) {
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || send_pattern(&mut w, n, seed));
    let back = read_exact_hash(s, n).unwrap_or_else(|e| panic!("reading the echo: {e}"));
    let sent = writer.join().unwrap().unwrap();
    assert_eq!(
        hex(&back),
        hex(&sent),
        "the tunnel must carry every byte intact"
    );
}

/// The engage and release events so far.
fn overload_events(gw: &Gateway) -> (usize, usize) {
    let all = gw.all_events();
    let count = |state: &str| {
        all.iter()
            .filter(|e| field_str(e, "overload").as_deref() == Some(state))
            .count()
    };
    (count("engaged"), count("released"))
}

fn expect_overload(gw: &Gateway, on: bool, what: &str) {
    let want = f64::from(u8::from(on));
    let v = gw.wait_metric("splicegate_overload_active", |v| v == want, T);
    assert_eq!(
        v,
        want,
        "{what}: splicegate_overload_active\n{}",
        gw.log_dump()
    );
}

/// Holds for several samples: the state does not move.
fn stays(gw: &Gateway, on: bool, what: &str) {
    let want = f64::from(u8::from(on));
    let until = Instant::now() + SEVERAL_SAMPLES;
    while Instant::now() < until {
        assert_eq!(
            gw.metric_value("splicegate_overload_active"),
            want,
            "{what}\n{}",
            gw.log_dump()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One worker, an echo upstream under `ECHO`, `max_connections` of `max`, idle clients held
/// for a minute (`header_timeout`), and the overload state sampled every `SAMPLE`.
fn budget(up: &Upstream, max: &str) -> Config {
    Config::new()
        .workers(1)
        .upstream(ECHO, up.port())
        .limit("max_connections", max)
        .limit("header_timeout", "60s")
        .limit("overload_sample_interval", SAMPLE)
}

#[test]
fn connection_budget_at_95_percent_refuses_new_clients_and_releases_below_90() {
    let up = Upstream::echo();
    let cfg = budget(&up, "20");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{ECHO}:{}", up.port());
    let mut tunnel = open_tunnel(gw.addr(), &target);
    echo_hashed(&mut tunnel, 1 << 20, 1);

    // 18 of 20 (90%): rising into the band between the thresholds does not engage.
    let mut held: Vec<TcpStream> = (0..17).map(|_| idle(&gw)).collect();
    let n = gw.wait_metric("splicegate_active_client_connections", |v| v == 18.0, T);
    assert_eq!(n, 18.0);
    stays(
        &gw,
        false,
        "18 of 20 connections (90%) is below the engage threshold",
    );
    assert_eq!(gw.readyz().unwrap(), 200);

    // 19 of 20 (95%): engaged.
    held.push(idle(&gw));
    expect_overload(&gw, true, "19 of 20 connections (95%)");
    assert_eq!(
        gw.metric_value("splicegate_overload_resource{resource=\"connections\"}"),
        1.0
    );
    assert_eq!(
        gw.metric_value("splicegate_overload_resource{resource=\"memory\"}"),
        0.0
    );
    let ev = gw.expect_event(
        400,
        |e| field_str(e, "overload").as_deref() == Some("engaged"),
        T,
        "overload engaged",
    );
    assert_eq!(field_str(&ev, "resource").as_deref(), Some("connections"));
    assert_eq!(field_u64(&ev, "connections"), Some(19), "{ev}");
    let (status, body) = gw.metrics_get("/readyz").unwrap();
    assert_eq!((status, body.trim()), (503, "overloaded: connections"));

    // A new CONNECT is refused with 503 (one slot is still free below max_connections) and
    // never reaches the upstream.
    let accepts = up.accepts();
    expect_refusal(&gw, connect_head(&target).as_bytes(), 503);
    let ev = expect_refusal_event(&gw, 400, 503, Some("overload"));
    assert_eq!(field_str(&ev, "resource").as_deref(), Some("connections"));
    assert_client_field(&ev);
    expect_rejection_metric(&gw, "overload", 1.0);
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"over_capacity\"}"),
        0.0,
        "below max_connections the reason is overload, not over_capacity"
    );
    assert_eq!(
        up.accepts(),
        accepts,
        "a refused CONNECT must not reach the upstream"
    );

    // The tunnel already open carries on, byte-exact.
    echo_hashed(&mut tunnel, 8 << 20, 2);

    // 18 of 20 (90%): not below the release threshold, so it stays engaged.
    drop(held.pop());
    let n = gw.wait_metric("splicegate_active_client_connections", |v| v == 18.0, T);
    assert_eq!(n, 18.0);
    stays(
        &gw,
        true,
        "18 of 20 connections (90%) is not below the release threshold",
    );
    expect_refusal(&gw, connect_head(&target).as_bytes(), 503);

    // 17 of 20 (85%): released; new CONNECTs are served again.
    drop(held.pop());
    expect_overload(&gw, false, "17 of 20 connections (85%)");
    assert_eq!(gw.readyz().unwrap(), 200);
    let mut again = open_tunnel(gw.addr(), &target);
    echo_hashed(&mut again, 1 << 20, 3);
    echo_hashed(&mut tunnel, 1 << 20, 4);
    let ev = gw.expect_event(
        100,
        |e| field_str(e, "overload").as_deref() == Some("released"),
        T,
        "overload released",
    );
    assert_eq!(field_str(&ev, "reason").as_deref(), Some("overload"));
    assert_eq!(
        overload_events(&gw),
        (1, 1),
        "one event when it engages and one when it releases, not one per sample"
    );
}

/// The hard limit keeps its own reason: at `max_connections` a new client gets 503
/// `over_capacity` even though the overload state is engaged too.
#[test]
fn at_max_connections_the_reason_stays_over_capacity() {
    let up = Upstream::echo();
    let cfg = budget(&up, "4");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{ECHO}:{}", up.port());
    let _held: Vec<TcpStream> = (0..4).map(|_| idle(&gw)).collect();
    expect_overload(&gw, true, "4 of 4 connections");
    expect_refusal(&gw, connect_head(&target).as_bytes(), 503);
    expect_rejection_metric(&gw, "over_capacity", 1.0);
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"overload\"}"),
        0.0
    );
}

/// The memory budget: a gateway at rest well below it, then tunnels whose client stops reading
/// (each holds a full pipe, counted at its capacity) until it is past 95%: engaged, with
/// resource memory; closing them releases it.
#[test]
fn memory_budget_engages_with_held_pipes_and_releases_when_they_close() {
    let up = Upstream::echo();
    let (tx, _rx) = std::sync::mpsc::channel();
    // Far more than the socket buffers on both sides and a pipe hold: the pipe stays full.
    let flood = Upstream::send_then_close(64 << 20, 9, tx);
    let base = Config::new()
        .workers(1)
        .upstream(ECHO, up.port())
        .upstream(FLOOD, flood.port())
        .limit("overload_sample_interval", SAMPLE);
    let Some(gw) = Gateway::start(base.clone()) else {
        return;
    };
    let echo_target = format!("{ECHO}:{}", up.port());
    let flood_target = format!("{FLOOD}:{}", flood.port());
    let mut tunnel = open_tunnel(gw.addr(), &echo_target);
    echo_hashed(&mut tunnel, 1 << 20, 5);

    // The footprint at rest, as the gateway counts it (sampled even without a budget).
    let rest = gw.wait_metric("splicegate_memory_bytes{part=\"resident\"}", |v| v > 0.0, T);
    assert!(
        rest > 1e6,
        "a running gateway is over 1 MB resident: {rest}"
    );
    assert_eq!(gw.metric_value("splicegate_memory_budget_bytes"), 0.0);
    // A budget with the footprint at 80% of it (the floor is 16 MiB).
    let budget = ((rest / 0.8) as u64).max(16 << 20);
    let cfg = base.clone().limit("memory_budget", &budget.to_string());
    replace_file(gw.config_path(), &cfg.render());
    gw.signal(libc::SIGHUP);
    gw.expect_event(
        100,
        |e| field_str(e, "changes").is_some_and(|c| c.contains("limits.memory_budget")),
        T,
        "reload with the memory budget",
    );
    let b = gw.wait_metric("splicegate_memory_budget_bytes", |v| v == budget as f64, T);
    assert_eq!(b, budget as f64);
    stays(
        &gw,
        false,
        "the footprint at rest is below the budget's release threshold",
    );

    // Stalled tunnels, one at a time, until the budget passes 95% (bounded: 48 tunnels).
    let mut stalled: Vec<TcpStream> = Vec::new();
    let mut engaged = false;
    for i in 0..48 {
        let s = open_tunnel(gw.addr(), &flood_target);
        s.set_nonblocking(false).unwrap();
        stalled.push(s);
        let want = (i + 1) as f64;
        let pipes = gw.wait_metric("splicegate_pipes_in_use", |v| v >= want, T);
        if pipes < want {
            eprintln!(
                "SKIP: tunnel {} holds no pipe (pipes_in_use {pipes}): the kernel refused one",
                i + 1
            );
            return;
        }
        // Past fs.pipe-user-pages-soft (shared by every process of this user) the kernel
        // grants one-page pipes, which cannot fill the budget in a bounded number of tunnels.
        let big = want * f64::from(256u32 << 10);
        let lent = gw.wait_metric("splicegate_memory_bytes{part=\"pipes\"}", |v| v >= big, T);
        if lent < big {
            eprintln!(
                "SKIP: {want} pipes hold {lent} bytes: the kernel shrinks new pipes once this \
                 user's processes pass fs.pipe-user-pages-soft"
            );
            return;
        }
        if gw.wait_metric(
            "splicegate_overload_active",
            |v| v == 1.0,
            Duration::from_millis(300),
        ) == 1.0
        {
            engaged = true;
            break;
        }
    }
    let pipe_bytes = gw.metric_value("splicegate_memory_bytes{part=\"pipes\"}");
    assert!(
        engaged,
        "{} stalled tunnels ({pipe_bytes} bytes of pipes) did not pass 95% of {budget}\n{}",
        stalled.len(),
        gw.log_dump()
    );
    eprintln!(
        "memory budget {budget}: at rest {rest}, engaged with {} stalled tunnels holding {pipe_bytes} bytes of pipes",
        stalled.len()
    );
    let ev = gw.expect_event(
        400,
        |e| field_str(e, "overload").as_deref() == Some("engaged"),
        T,
        "overload engaged",
    );
    assert_eq!(
        field_str(&ev, "resource").as_deref(),
        Some("memory"),
        "{ev}"
    );
    let counted = field_u64(&ev, "memory_bytes").unwrap_or(0);
    assert!(
        counted * 100 >= budget * 95,
        "engaged at {counted} bytes, under 95% of {budget}"
    );
    assert_eq!(
        gw.metric_value("splicegate_overload_resource{resource=\"memory\"}"),
        1.0
    );
    let (status, body) = gw.metrics_get("/readyz").unwrap();
    assert_eq!((status, body.trim()), (503, "overloaded: memory"));
    expect_refusal(&gw, connect_head(&echo_target).as_bytes(), 503);
    expect_refusal_event(&gw, 400, 503, Some("overload"));
    // The open tunnel carries on, byte-exact.
    echo_hashed(&mut tunnel, 4 << 20, 6);

    // The stalled clients go: their pipes are freed and the budget falls below 90%.
    drop(stalled);
    expect_overload(&gw, false, "stalled tunnels closed");
    assert_eq!(gw.readyz().unwrap(), 200);
    let mut again = open_tunnel(gw.addr(), &echo_target);
    echo_hashed(&mut again, 1 << 20, 7);
    assert_eq!(overload_events(&gw), (1, 1));
}

/// A configured budget too small to start under is refused with the key, not started overloaded.
#[test]
fn a_memory_budget_below_the_floor_is_refused() {
    let dir = TempDir::new("overload-floor");
    let path = dir.write("gw.yaml", "limits:\n  memory_budget: 1MiB\n");
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("limits.memory_budget"), "{text}");
    assert!(text.contains("at least 16MiB"), "{text}");
}

/// F1 for overload refusals: they go through the rate limit on refusal events, so the events
/// logged plus the summary's `suppressed` count equal `rejections_total{reason="overload"}`.
#[test]
fn overload_refusals_are_rate_limited_and_add_up_to_the_counter() {
    let up = Upstream::echo();
    let cfg = budget(&up, "4")
        .limit("overload_engage_percent", "50")
        .limit("overload_release_percent", "25")
        .raw("logging:\n  refusal_burst: 5\n  refusal_window: 2s\n");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("{ECHO}:{}", up.port());
    let held: Vec<TcpStream> = (0..2).map(|_| idle(&gw)).collect();
    expect_overload(
        &gw,
        true,
        "2 of 4 connections with overload_engage_percent 50",
    );
    for _ in 0..15 {
        expect_refusal(&gw, connect_head(&target).as_bytes(), 503);
    }
    let refusal = |e: &serde_json::Value| {
        field_str(e, "reason").as_deref() == Some("overload") && field_str(e, "client").is_some()
    };
    let summary = gw.expect_event(
        400,
        |e| refusal(e) && field_u64(e, "suppressed").is_some(),
        Duration::from_secs(6),
        "the summary of the overload refusals' window",
    );
    let suppressed = field_u64(&summary, "suppressed").unwrap_or(0);
    let logged = gw
        .events(400)
        .iter()
        .filter(|e| refusal(e) && field_u64(e, "suppressed").is_none())
        .count();
    assert_eq!((logged, suppressed), (5, 10), "{summary}");
    assert_eq!(
        gw.metric_value("splicegate_rejections_total{reason=\"overload\"}"),
        (logged as u64 + suppressed) as f64
    );
    drop(held);
    expect_overload(&gw, false, "every idle connection closed");
}
