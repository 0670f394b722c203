//! The users file (`auth::Users::parse`) and the `Proxy-Authorization: Basic` value
//! (`auth::parse_basic`), from any bytes:
//! - an accepted file has one valid user name per line that is neither blank nor a comment;
//! - a refusal names a line of the file that is neither blank nor a comment;
//! - line-prefix invariance: the first k lines of an accepted file are accepted with a subset of
//!   its users; the first refusal of a file is the refusal of every prefix that holds its line;
//! - CRLF line ends and a trailing comment change nothing;
//! - Basic credentials round-trip: what `parse_basic` returns, encoded again, parses the same.
//!
//! The invariants are in `fuzz/checks/users_file.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/users_file.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
