//! The log writer (`src/logwriter.rs`): its queue length setting and its dropped-line counter.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn an_invalid_log_queue_length_refuses_to_start_with_exit_code_2() {
    let dir = TempDir::new("logqueue");
    let cfg = dir.write("gw.yaml", &Config::new().render());
    for bad in ["abc", "15", "0", "", "16777217"] {
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("SPLICEGATE_LOG_QUEUE", bad)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn splicegate");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("stderr");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "SPLICEGATE_LOG_QUEUE={bad:?} must refuse to start; stderr:\n{err}"
        );
        assert!(err.contains("SPLICEGATE_LOG_QUEUE"), "{err}");
    }
}

#[test]
fn the_dropped_line_counter_is_exposed_from_the_start() {
    let Some(gw) = Gateway::start(Config::new()) else {
        return;
    };
    assert_eq!(gw.metric_value("splicegate_log_lines_dropped_total"), 0.0);
}
