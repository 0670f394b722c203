//! Fuzz target for the TLS inspector: no panic on any input, in either direction, under several
//! settings; the verdict does not depend on how the bytes are split into reads; an early final
//! verdict is the verdict of the whole input; and only a stream that starts like a TLS record
//! can be allowed.
//!
//! The invariants are in `fuzz/checks/client_hello.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/client_hello.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
