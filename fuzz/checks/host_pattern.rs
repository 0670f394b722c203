// The `host_pattern` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// Host names, allowlist patterns, entries and port lists, from any UTF-8 text:
// - `normalize_host` is idempotent, and a normalised name parses as an exact pattern that
//   matches it and prints as it;
// - a parsed pattern, entry or port list prints as text that parses back to the same value;
// - an exact pattern matches its own normalised name; a wildcard matches one label more than its
//   suffix, never the suffix itself nor a name glued to it;
// - a one-pattern `Allowlist` allows exactly the normalised names the pattern matches, and an
//   entry's port rule allows exactly the entry's ports;
// - a port list is sorted, merged and free of port 0, and equals the union of its items.
use splicegate::policy::{normalize_host, Allowlist, HostEntry, HostPattern, PortList, PortSet};

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_normalize(text);
    check_pattern(text);
    check_entry(text);
    check_ports(text);
}

fn check_normalize(text: &str) {
    let Some(name) = normalize_host(text) else {
        return;
    };
    assert_eq!(
        normalize_host(&name).as_deref(),
        Some(name.as_str()),
        "normalize_host is not idempotent"
    );
    assert!(!name.ends_with('.'), "{name:?} keeps its trailing dot");
    assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
    match HostPattern::parse(&name) {
        Ok(pattern) => {
            assert!(!pattern.is_wildcard());
            assert!(pattern.matches(&name), "{pattern} does not match {name:?}");
            assert_eq!(pattern.to_string(), name);
        }
        Err(e) => panic!("normalised name {name:?} is not a pattern: {e}"),
    }
}

fn check_pattern(text: &str) {
    let Ok(pattern) = HostPattern::parse(text) else {
        return;
    };
    let shown = pattern.to_string();
    assert_eq!(
        HostPattern::parse(&shown).as_ref(),
        Ok(&pattern),
        "{shown:?} does not parse back"
    );
    let list = Allowlist::from_patterns([&pattern]);
    let mut probes = vec![format!("a.{shown}"), format!("a{shown}"), shown.clone()];
    if let Some(suffix) = shown.strip_prefix("*.") {
        assert!(pattern.is_wildcard());
        assert_eq!(normalize_host(text), None, "a wildcard is not a host name");
        let one_more = format!("a.{suffix}");
        if normalize_host(&one_more).as_deref() == Some(one_more.as_str()) {
            assert!(pattern.matches(&one_more), "{pattern} misses {one_more:?}");
        }
        assert!(!pattern.matches(suffix), "{pattern} matches its own suffix");
        assert!(
            !pattern.matches(&format!("a{suffix}")),
            "{pattern} off a label boundary"
        );
        probes.extend([one_more, suffix.to_owned(), format!("a.b.{suffix}")]);
    } else {
        assert!(!pattern.is_wildcard());
        assert_eq!(
            normalize_host(text).as_deref(),
            Some(shown.as_str()),
            "an exact pattern prints as its normalised name"
        );
        assert!(pattern.matches(&shown), "{pattern} does not match itself");
        assert!(!pattern.matches(&format!("a.{shown}")));
    }
    // The allowlist and the pattern agree on every normalised name.
    for host in &probes {
        if normalize_host(host).as_deref() == Some(host.as_str()) {
            assert_eq!(
                list.is_allowed(host),
                pattern.matches(host),
                "allowlist and pattern {pattern} disagree on {host:?}"
            );
        }
    }
}

fn check_entry(text: &str) {
    let Ok(entry) = HostEntry::parse(text) else {
        return;
    };
    let shown = entry.to_string();
    assert_eq!(
        HostEntry::parse(&shown).as_ref(),
        Ok(&entry),
        "{shown:?} does not parse back"
    );
    let pattern = entry.pattern().to_string();
    let host = match pattern.strip_prefix("*.") {
        Some(suffix) => format!("a.{suffix}"),
        None => pattern,
    };
    let list = Allowlist::from_entries([&entry]);
    let Some(rule) = list.lookup(&host) else {
        panic!("{entry}: {host:?} is not found in the entry's own allowlist");
    };
    let global: PortSet = [443].into_iter().collect();
    let mut probes = vec![0, 1, 80, 443, 65535];
    if let Some(ports) = entry.ports() {
        for &(a, b) in ports.ranges() {
            probes.extend([a.saturating_sub(1), a, b, b.saturating_add(1)]);
        }
    }
    for port in probes {
        let expected = match entry.ports() {
            Some(ports) => ports.contains(port),
            None => port == 443,
        };
        assert_eq!(
            rule.allows(port, &global),
            expected,
            "{entry} on port {port}"
        );
    }
    assert_eq!(rule.uses_global(), entry.ports().is_none());
}

fn check_ports(text: &str) {
    let Ok(list) = PortList::parse(text) else {
        return;
    };
    let shown = list.to_string();
    assert_eq!(
        PortList::parse(&shown).as_ref(),
        Ok(&list),
        "{shown:?} does not parse back"
    );
    let ranges = list.ranges();
    assert!(!ranges.is_empty());
    for pair in ranges.windows(2) {
        assert!(
            u32::from(pair[0].1) + 1 < u32::from(pair[1].0),
            "ranges not sorted and merged: {shown}"
        );
    }
    let set = PortSet::from(&list);
    assert!(!list.contains(0) && !set.contains(0), "port 0 in {shown}");
    for &(a, b) in ranges {
        assert!(0 < a && a <= b, "{shown}");
        for port in [a.saturating_sub(1), a, b, b.saturating_add(1)] {
            let inside = (a..=b).contains(&port);
            if inside {
                assert!(list.contains(port), "{shown} misses {port}");
            }
            assert_eq!(set.contains(port), list.contains(port), "{shown}: {port}");
        }
    }
    // The list is the union of its items.
    let mut union: Option<PortList> = None;
    for item in text.split(',') {
        match PortList::parse(item) {
            Ok(one) => {
                union = Some(match union {
                    Some(u) => u.union(&one),
                    None => one,
                })
            }
            Err(e) => panic!("item {item:?} of a valid list fails: {e}"),
        }
    }
    assert_eq!(union.as_ref(), Some(&list), "{text:?}");
}
