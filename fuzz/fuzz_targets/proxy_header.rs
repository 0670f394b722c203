//! The PROXY protocol header parser (`proto::proxy::parse`), fed what a client or a broken
//! balancer could send:
//! - a decided header lies inside the buffer and within the protocol's bounds, and the header
//!   alone parses to the same answer;
//! - every strict prefix of a decided header is incomplete, and any prefix that decides agrees
//!   with the whole input (split invariance);
//! - a header generated from the input, encoded as v1 and v2 with TLVs, parses back to itself.
//!
//! The invariants are in `fuzz/checks/proxy_header.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/proxy_header.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
