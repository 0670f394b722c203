// The `users_file` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// The users file (`auth::Users::parse`) and the `Proxy-Authorization: Basic` value
// (`auth::parse_basic`), from any bytes:
// - an accepted file has one valid user name per line that is neither blank nor a comment;
// - a refusal names a line of the file that is neither blank nor a comment;
// - line-prefix invariance: the first k lines of an accepted file are accepted with a subset of
//   its users; the first refusal of a file is the refusal of every prefix that holds its line;
// - CRLF line ends and a trailing comment change nothing;
// - Basic credentials round-trip: what `parse_basic` returns, encoded again, parses the same.
use base64::Engine as _;
use splicegate::auth::{check_name, parse_basic, Users};

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_file(text, data.first().copied().unwrap_or(0));
    }
    check_basic(data);
}

fn check_file(text: &str, selector: u8) {
    let whole = Users::parse(text);
    let lines: Vec<&str> = text.lines().collect();
    let counts = |line: &str| {
        let t = line.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    match &whole {
        Ok(users) => {
            for name in users.names() {
                assert!(check_name(name).is_ok(), "invalid name {name:?} accepted");
            }
            let listed = lines.iter().filter(|l| counts(l)).count();
            assert_eq!(users.len(), listed, "one user per line");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let Some(line) = e.line.checked_sub(1).and_then(|i| lines.get(i)) else {
                panic!("refusal names line {} of {}", e.line, lines.len());
            };
            assert!(counts(line), "refusal at a blank or comment line {line:?}");
        }
    }
    // Line-prefix invariance.
    let k = usize::from(selector) * lines.len() / 256;
    let prefix = lines[..k].join("\n");
    match (&whole, Users::parse(&prefix)) {
        (Ok(all), Ok(some)) => {
            assert!(some.len() <= all.len());
            let names: Vec<&str> = all.names().collect();
            for name in some.names() {
                assert!(names.contains(&name), "{name:?} only in the prefix");
            }
        }
        (Ok(_), Err(e)) => panic!("the first {k} lines of a valid file are refused: {e}"),
        (Err(all), Err(early)) => assert_eq!(all, &early, "first {k} lines"),
        (Err(all), Ok(_)) => assert!(all.line > k, "refusal at line {} inside {k}", all.line),
    }
    // CRLF line ends and a trailing comment change nothing.
    let crlf = format!("{}\r\n# end\r\n\r\n", lines.join("\r\n"));
    assert_eq!(
        Users::parse(&crlf),
        whole,
        "CRLF and a comment changed the result"
    );
}

fn check_basic(data: &[u8]) {
    let Some((user, password)) = parse_basic(data) else {
        return;
    };
    assert!(check_name(&user).is_ok(), "invalid user name {user:?}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    assert_eq!(
        parse_basic(format!("Basic {encoded}").as_bytes()),
        Some((user, password)),
        "credentials do not round-trip"
    );
}
