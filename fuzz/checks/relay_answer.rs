// The `relay_answer` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// The relay proxy's answer parser (`relay::parse_answer`), fed what a hostile relay could send:
// - a complete answer is a head of at most `MAX_ANSWER` bytes inside the buffer, ending with its
//   blank line, with a three-digit status and a reason of at most 64 characters and no control
//   characters (it goes into a log line);
// - only the head decides: the head alone parses to the same answer;
// - a decided prefix agrees with the whole input (an answer or a refusal does not depend on how
//   the bytes were split into reads), and `Ok(None)` only below `MAX_ANSWER` bytes.
use splicegate::relay::{parse_answer, MAX_ANSWER};

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    let whole = parse_answer(data);
    match &whole {
        Ok(Some(answer)) => {
            assert!(answer.head_len <= data.len(), "head_len past the buffer");
            assert!(
                answer.head_len <= MAX_ANSWER,
                "head over MAX_ANSWER accepted"
            );
            assert!(answer.status <= 999, "status {}", answer.status);
            assert!(answer.reason.chars().count() <= 64, "reason too long");
            assert!(
                !answer.reason.chars().any(char::is_control),
                "control character in {:?}",
                answer.reason
            );
            let head = &data[..answer.head_len];
            assert!(
                head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                "{head:?}"
            );
            assert_eq!(
                parse_answer(head),
                whole,
                "the head alone decides differently"
            );
        }
        Ok(None) => assert!(data.len() < MAX_ANSWER, "Ok(None) at the size limit"),
        Err(why) => assert!(!why.is_empty()),
    }
    let first = usize::from(data.first().copied().unwrap_or(0));
    let split = first * data.len() / 256;
    for cut in [split, data.len().saturating_sub(1)] {
        let Some(prefix) = data.get(..cut) else {
            continue;
        };
        match parse_answer(prefix) {
            Ok(None) => {}
            Ok(Some(early)) => assert_eq!(
                whole.as_ref().ok().and_then(Option::as_ref),
                Some(&early),
                "prefix {cut} decided differently"
            ),
            Err(why) => assert!(
                whole.is_err(),
                "prefix {cut} refused ({why}) but the whole input was not"
            ),
        }
    }
}
