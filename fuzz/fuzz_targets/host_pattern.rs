//! Host names, allowlist patterns, entries and port lists, from any UTF-8 text:
//! - `normalize_host` is idempotent, and a normalised name parses as an exact pattern that
//!   matches it and prints as it;
//! - a parsed pattern, entry or port list prints as text that parses back to the same value;
//! - an exact pattern matches its own normalised name; a wildcard matches one label more than its
//!   suffix, never the suffix itself nor a name glued to it;
//! - a one-pattern `Allowlist` allows exactly the normalised names the pattern matches, and an
//!   entry's port rule allows exactly the entry's ports;
//! - a port list is sorted, merged and free of port 0, and equals the union of its items.
//!
//! The invariants are in `fuzz/checks/host_pattern.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/host_pattern.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
