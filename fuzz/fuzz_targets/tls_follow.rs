//! The TLS inspector while it follows a handshake for the client certificate
//! (`tls.allowed_client_certificates` set): after a valid ClientHello that offers TLS 1.3 and
//! 1.2, the input is the server's flight and the client's second flight.
//!
//! Input: one selector byte (where each side is split), a big-endian u16 length, that many bytes
//! of the server's flight, then the client's bytes.
//!
//! - Split invariance: each side fed in two pieces gives the verdict of each side fed whole, with
//!   the server first and with the client first.
//! - Order: when the server-first and the client-first runs both allow, they agree.
//! - A final verdict never changes, and `verdict()` is the last verdict returned.
//! - An allowed session meets the certificate rule: a leaf subject on the list, or TLS 1.3 under
//!   `tls13_client_certificate: allow`; never "not required"; never below `min_version`.
//!
//! The invariants are in `fuzz/checks/tls_follow.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/tls_follow.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
