//! The relay proxy's answer parser (`relay::parse_answer`), fed what a hostile relay could send:
//! - a complete answer is a head of at most `MAX_ANSWER` bytes inside the buffer, ending with its
//!   blank line, with a three-digit status and a reason of at most 64 characters and no control
//!   characters (it goes into a log line);
//! - only the head decides: the head alone parses to the same answer;
//! - a decided prefix agrees with the whole input (an answer or a refusal does not depend on how
//!   the bytes were split into reads), and `Ok(None)` only below `MAX_ANSWER` bytes.
//!
//! The invariants are in `fuzz/checks/relay_answer.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/relay_answer.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
