//! Fuzz target for the CONNECT head parser: no panic on any input, and the result invariants the
//! engine relies on hold for several header-size limits and for a prefix of the input.
//!
//! The invariants are in `fuzz/checks/connect_head.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/connect_head.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
