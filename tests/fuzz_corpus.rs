//! Replays every fuzz corpus and every kept crash through its target's invariants, so plain
//! `cargo test` (no nightly, no cargo-fuzz) catches a regression the fuzzers once found.
//!
//! Each target's checks live in `fuzz/checks/<target>.rs`, included here and by the fuzz target
//! itself (`fuzz/fuzz_targets/<target>.rs`), so both run the same code. The inputs are
//! `fuzz/corpus/<target>/*` (seeds and what the fuzzer kept) and `fuzz/regressions/<target>/*`
//! (crashes, named `crash-<sha1>-<what>`; see `docs/testing.md`, "Fuzzing").

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/client_hello.rs"]
mod client_hello;
#[path = "../fuzz/checks/connect_head.rs"]
mod connect_head;
#[path = "../fuzz/checks/host_pattern.rs"]
mod host_pattern;
#[path = "../fuzz/checks/proxy_header.rs"]
mod proxy_header;
#[path = "../fuzz/checks/relay_answer.rs"]
mod relay_answer;
#[path = "../fuzz/checks/tls_follow.rs"]
mod tls_follow;
#[path = "../fuzz/checks/users_file.rs"]
mod users_file;

/// Every target; `fuzz/Cargo.toml` has one `[[bin]]` per name, and each has a test below.
const TARGETS: [&str; 7] = [
    "client_hello",
    "connect_head",
    "host_pattern",
    "proxy_header",
    "relay_answer",
    "tls_follow",
    "users_file",
];

/// The files of one directory, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus and regression file of `target`; fails naming the file.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files(&root.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} has no seeds: every target keeps a named seed corpus"
    );
    let regressions = files(&root.join("regressions").join(target));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: {} breaks an invariant", path.display());
        }
    }
    println!(
        "{target}: {} corpus and {} regression files",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn every_target_is_a_fuzz_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap_or_else(|e| panic!("fuzz/Cargo.toml: {e}"));
    let bins = manifest.matches("[[bin]]").count();
    assert_eq!(bins, TARGETS.len(), "a fuzz target without its corpus test");
    for name in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not in fuzz/Cargo.toml"
        );
    }
}

#[test]
fn client_hello_corpus() {
    replay("client_hello", client_hello::check);
}

#[test]
fn connect_head_corpus() {
    replay("connect_head", connect_head::check);
}

#[test]
fn host_pattern_corpus() {
    replay("host_pattern", host_pattern::check);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", proxy_header::check);
}

#[test]
fn relay_answer_corpus() {
    replay("relay_answer", relay_answer::check);
}

#[test]
fn tls_follow_corpus() {
    replay("tls_follow", tls_follow::check);
}

#[test]
fn users_file_corpus() {
    replay("users_file", users_file::check);
}
