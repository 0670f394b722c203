//! `check-config` and `run` with good and bad configuration files.

mod support;

use std::time::Duration;
use support::*;

/// A valid config; the first five lines are fixed so bad lines appended after them have known
/// line numbers (line 6 onwards).
const BASE: &str = "\
listen: [\"127.0.0.1:0\"]
metrics_listen: \"127.0.0.1:0\"
workers: 2
allowed_ports: [443]
allowed_hosts: [\"*.ods.opinsights.azure.com\", \"global.handler.control.monitor.azure.com\"]
";

fn check(contents: &str) -> (bool, String) {
    let dir = TempDir::new("cfg");
    let path = dir.write("splicegate.yaml", contents);
    let out = run_cli(
        &["check-config", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether `text` contains the number `n` as a whole digit run.
fn has_number(text: &str, n: usize) -> bool {
    let want = n.to_string();
    text.split(|c: char| !c.is_ascii_digit())
        .any(|run| run == want)
}

/// A bad config must fail, naming `key` and `line`.
fn expect_bad(contents: &str, key: &str, line: usize) -> String {
    let (ok, text) = check(contents);
    assert!(
        !ok,
        "check-config accepted a bad config:\n{contents}\noutput:\n{text}"
    );
    assert!(
        text.contains(key),
        "the error must name the key {key:?}:\n{text}\nconfig:\n{contents}"
    );
    assert!(
        text.to_ascii_lowercase().contains("line") && has_number(&text, line),
        "the error must name line {line}:\n{text}\nconfig:\n{contents}"
    );
    text
}

#[test]
fn good_config_passes_and_prints_effective_policy() {
    let (ok, text) = check(BASE);
    assert!(ok, "check-config rejected a valid config:\n{text}");
    assert!(
        text.contains("ods.opinsights.azure.com"),
        "the effective policy lists the allowed hosts:\n{text}"
    );
    assert!(
        text.contains("443"),
        "the effective policy lists the ports:\n{text}"
    );
}

#[test]
fn harness_generated_config_passes() {
    let cfg = Config::new()
        .upstream("up.splicegate.test", 8443)
        .allow_host("*.wild.test")
        .data_path("copy")
        .limit("max_connections", "100")
        .limit("header_timeout", "2s")
        .limit("idle_timeout", "30s")
        .nameserver("127.0.0.1:53".parse().unwrap());
    let (ok, text) = check(&cfg.render());
    assert!(
        ok,
        "check-config rejected:\n{}\noutput:\n{text}",
        cfg.render()
    );
}

#[test]
fn listen_as_text_is_rejected() {
    let contents = format!(
        "# comment\n\n\nlisten: \"text\"\n{}",
        &BASE[BASE.find('\n').unwrap() + 1..]
    );
    expect_bad(&contents, "listen", 4);
}

#[test]
fn unknown_key_is_rejected() {
    expect_bad(&format!("{BASE}bogus_key: 1\n"), "bogus_key", 6);
}

#[test]
fn bad_cidr_is_rejected() {
    expect_bad(
        &format!("{BASE}allowed_destination_networks: [\"10.0.0.0/33\"]\n"),
        "allowed_destination_networks",
        6,
    );
}

#[test]
fn zero_timeout_is_rejected() {
    expect_bad(
        &format!("{BASE}limits:\n  connect_timeout: \"0s\"\n"),
        "connect_timeout",
        7,
    );
}

#[test]
fn bad_engine_is_rejected() {
    expect_bad(&format!("{BASE}engine: turbo\n"), "engine", 6);
}

#[test]
fn missing_file_is_an_error() {
    let dir = TempDir::new("cfg");
    let path = dir.path().join("does-not-exist.yaml");
    let out = run_cli(
        &["check-config", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(
        !out.status.success(),
        "check-config on a missing file must fail"
    );
}

#[test]
fn run_with_bad_config_exits_nonzero_without_listening() {
    let port = free_port();
    let dir = TempDir::new("cfg");
    let contents = format!(
        "listen: [\"127.0.0.1:{port}\"]\nmetrics_listen: \"127.0.0.1:0\"\nengine: {}\nbogus_key: 1\n",
        test_engine()
    );
    let path = dir.write("splicegate.yaml", &contents);
    let out = run_cli(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "run with a bad config must fail:\n{stderr}"
    );
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !events.iter().any(|e| event_id(e) == Some(101)),
        "no started event with a bad config:\n{stderr}"
    );
    assert!(
        events.iter().any(|e| event_id(e) == Some(401)),
        "a bad config is logged as event 401:\n{stderr}"
    );
    assert!(
        stderr.contains("bogus_key"),
        "the error names the key:\n{stderr}"
    );
    assert!(
        std::net::TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_millis(500)
        )
        .is_err(),
        "nothing may listen on the configured port"
    );
}

#[test]
fn empty_or_comment_only_file_is_refused() {
    for contents in ["", "\n", "# only a comment\n# and another\n", "---\n"] {
        let dir = TempDir::new("cfg");
        let path = dir.write("splicegate.yaml", contents);
        let out = run_cli(
            &["check-config", path.to_str().unwrap()],
            Duration::from_secs(10),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "check-config on {contents:?} must fail:\n{stdout}{stderr}"
        );
        assert!(
            !stdout.contains("configuration is valid"),
            "{contents:?}: {stdout}"
        );
        assert!(
            stderr.contains("configuration is empty") && stderr.contains("splicegate.yaml"),
            "a clear message naming the file: {stderr}"
        );
    }
    // `{}` says "every default" on purpose, and stays valid.
    let (ok, text) = check("{}\n");
    assert!(ok, "{text}");
}

#[test]
fn run_with_an_empty_file_exits_nonzero_without_listening() {
    let dir = TempDir::new("cfg");
    let path = dir.write("splicegate.yaml", "# emptied by an editor\n");
    let out = run_cli(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !events.iter().any(|e| event_id(e) == Some(101)),
        "an empty file must not start the gateway on the defaults:\n{stderr}"
    );
    assert!(
        events
            .iter()
            .any(|e| event_id(e) == Some(401) && e.to_string().contains("empty")),
        "an empty file is logged as event 401:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

#[test]
fn a_public_metrics_address_needs_the_opt_in() {
    let public = BASE.replace(
        "metrics_listen: \"127.0.0.1:0\"",
        "metrics_listen: \"0.0.0.0:0\"",
    );
    assert_ne!(public, BASE);
    let text = expect_bad(&public, "metrics_listen", 2);
    assert!(text.contains("metrics_public: true"), "{text}");
    let (ok, text) = check(&format!("{public}metrics_public: true\n"));
    assert!(ok, "{text}");
    assert!(text.contains("metrics_public: true"), "{text}");
    let (ok, text) = check(&format!("{BASE}metrics_public: false\n"));
    assert!(ok, "loopback needs no opt-in: {text}");
}
