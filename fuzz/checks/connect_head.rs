// The `connect_head` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// Fuzz target for the CONNECT head parser: no panic on any input, and the result invariants the
// engine relies on hold for several header-size limits and for a prefix of the input.
use splicegate::proto::connect::{header, parse_head, Head};

/// Limits to try: none, tiny, around the input's own length, and the usual production ones.
fn limits(len: usize) -> [usize; 8] {
    [0, 1, 16, len.saturating_sub(1), len, 4096, 8192, usize::MAX]
}

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    for max in limits(data.len()) {
        let full = parse_head(data, max);
        match &full {
            Ok(Some(head)) => check_head(data, max, head),
            Ok(None) => assert!(data.len() < max, "Ok(None) with the limit reached"),
            Err(err) => {
                assert!(!err.as_str().is_empty());
            }
        }
        // A decided prefix must agree with the whole input (split invariance).
        let split = usize::from(data.first().copied().unwrap_or(0)) * data.len() / 256;
        if let Some(prefix) = data.get(..split) {
            let early = parse_head(prefix, max);
            if early != Ok(None) {
                assert_eq!(early, full, "prefix {split} decided differently");
            }
        }
    }
}

fn check_head(data: &[u8], max: usize, head: &Head) {
    assert!(head.head_len <= data.len(), "head_len past the buffer");
    assert!(head.head_len <= max, "head_len past the limit");
    let bytes = &data[..head.head_len];
    assert!(bytes.starts_with(b"CONNECT "));
    assert!(bytes.ends_with(b"\r\n\r\n"));
    // Only the head decides: early data after it does not matter.
    assert_eq!(
        parse_head(bytes, max)
            .as_ref()
            .ok()
            .and_then(Option::as_ref),
        Some(head)
    );
    let _ = header(data, head, "Proxy-Authorization");
    // The normalised authority is itself valid and a fixed point.
    let again = format!("CONNECT {} HTTP/1.1\r\n\r\n", head.authority);
    match parse_head(again.as_bytes(), usize::MAX) {
        Ok(Some(reparsed)) => assert_eq!(reparsed.authority, head.authority),
        other => panic!(
            "normalised authority {} reparsed as {other:?}",
            head.authority
        ),
    }
    assert!(!head.authority.host.as_policy_str().is_empty());
}
