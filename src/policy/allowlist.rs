//! Host names: normalisation, allowlist patterns and the allowlist itself.
//!
//! A pattern is either an exact name or address (`global.handler.control.monitor.azure.com`,
//! `203.0.113.7`, `2001:db8::7`) or a wildcard `*.suffix` that matches any name with at least
//! one more label in front of `suffix`, on a label boundary: `*.ods.opinsights.azure.com`
//! matches `ws.ods.opinsights.azure.com` and `a.b.ods.opinsights.azure.com`, but neither
//! `ods.opinsights.azure.com` itself nor `evilods.opinsights.azure.com`.
//!
//! The [`Allowlist`] keeps exact entries and wildcard suffixes in two hash maps, each key with
//! its port rule; a lookup costs one probe for the exact map and one per label of the queried
//! name for the wildcard map, longest suffix first, so the first hit is the most specific entry
//! and the cost does not depend on the number of rules.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::entry::HostEntry;
use super::ports::{PortList, PortSet};

/// The longest DNS name, in presentation form without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a valid host pattern (or host name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the host pattern is empty")]
    Empty,
    #[error("a host pattern must not contain spaces or other whitespace")]
    Whitespace,
    #[error("a host pattern is a bare host name, not a URL: remove the scheme (\"https://\")")]
    Scheme,
    #[error("a host pattern must not contain '/': write only the host name, without a path or prefix length")]
    Path,
    #[error(
        "a host pattern must not contain ':' (ports follow the host, as in \"example.com:443\")"
    )]
    Port,
    #[error("'*' is only allowed as the whole first label, as in \"*.example.com\"")]
    Wildcard,
    #[error("a host name must not have an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    #[error("a host name label must be at most 63 characters long")]
    LabelTooLong,
    #[error("a host name must be at most 253 characters long")]
    NameTooLong,
    #[error("a host name may only contain the letters a-z, digits, '-', '_' and '.', found {0:?} (write internationalised names in their xn-- form)")]
    InvalidChar(char),
    #[error("the last label of a host name must not be all digits (this is neither a DNS name nor a valid IP address)")]
    NumericTld,
}

/// Normalises a host name for lookup: ASCII lower-case and one trailing dot removed. IP
/// literals (IPv6 with or without brackets) come back in their canonical text form, IPv6
/// without brackets. Returns `None` for anything that is neither a valid DNS name (labels of
/// 1 to 63 characters from `[a-z0-9-_]`, at most 253 characters, last label not all digits)
/// nor an IP literal.
pub fn normalize_host(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(|ip| ip.to_string());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    validate_name(&name).ok()?;
    Some(name)
}

/// One allowlist rule: an exact host (name or IP literal) or a `*.` wildcard suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(Repr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// A normalised name or a canonical IP literal.
    Exact(String),
    /// The normalised suffix after `*.`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses one pattern: an exact DNS name, an IPv4 or IPv6 literal (IPv6 optionally in
    /// brackets), or `*.` followed by a DNS name. Names are normalised (lower-case, one
    /// trailing dot removed).
    pub fn parse(s: &str) -> Result<HostPattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.chars().any(char::is_whitespace) {
            return Err(PatternError::Whitespace);
        }
        if s.contains("://") {
            return Err(PatternError::Scheme);
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return match inner.parse::<Ipv6Addr>() {
                Ok(ip) => Ok(HostPattern(Repr::Exact(ip.to_string()))),
                Err(_) => Err(PatternError::InvalidChar('[')),
            };
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostPattern(Repr::Exact(ip.to_string())));
        }
        if s.contains('/') {
            return Err(PatternError::Path);
        }
        if s.contains(':') {
            return Err(PatternError::Port);
        }
        let lower = s.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        match name.strip_prefix("*.") {
            Some(suffix) => {
                validate_name(suffix)?;
                Ok(HostPattern(Repr::Wildcard(suffix.to_owned())))
            }
            None => {
                validate_name(name)?;
                Ok(HostPattern(Repr::Exact(name.to_owned())))
            }
        }
    }

    /// Whether this is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.0, Repr::Wildcard(_))
    }

    /// Whether this single pattern matches `host` (already normalised).
    pub fn matches(&self, host: &str) -> bool {
        match &self.0 {
            Repr::Exact(name) => name == host,
            Repr::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| front.split('.').all(|label| !label.is_empty())),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Exact(name) => f.write_str(name),
            Repr::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<HostPattern, PatternError> {
        HostPattern::parse(s)
    }
}

/// A set of [`HostPattern`]s, each with its port rule, with a lookup cost independent of its
/// size.
///
/// Each key (an exact name or a wildcard suffix) maps to its port rule: the global port list,
/// its own ports (shared by every key with the same list), or both when the same pattern was
/// listed once without and once with ports. Listing a pattern again unites the ports. A list of
/// a few ranges is checked range by range; a longer one gets a [`PortSet`] bitmap, so a check
/// is bounded either way and thousands of distinct short lists do not cost 8 KiB each.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    exact: HashMap<String, Rule>,
    wildcard: HashMap<String, Rule>,
    /// The distinct port lists; `Rule::set` indexes this.
    sets: Vec<OwnPorts>,
    /// Where each distinct list is in `sets`.
    interned: HashMap<PortList, u32>,
    /// The number the next entry inserted gets (see [`PortRule::entry`]).
    next_entry: u32,
}

/// The ports one allowlist key may be reached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    /// The global `allowed_ports` apply.
    global: bool,
    /// Index of the key's own ports in `Allowlist::sets`.
    set: Option<u32>,
    /// The entry that first listed the key (see [`PortRule::entry`]).
    entry: u32,
}

/// Lists of up to this many ranges are checked range by range, without a bitmap.
const MAX_RANGES_WITHOUT_BITMAP: usize = 16;

/// One distinct port list of an allowlist, with a bitmap when it has many ranges.
#[derive(Debug, Clone)]
struct OwnPorts {
    list: PortList,
    bitmap: Option<PortSet>,
}

impl OwnPorts {
    fn new(list: &PortList) -> OwnPorts {
        let bitmap = (list.ranges().len() > MAX_RANGES_WITHOUT_BITMAP).then(|| PortSet::from(list));
        OwnPorts {
            list: list.clone(),
            bitmap,
        }
    }

    fn contains(&self, port: u16) -> bool {
        match &self.bitmap {
            Some(set) => set.contains(port),
            None => self.list.contains(port),
        }
    }
}

/// The port rule of the entry that matched a host (see [`Allowlist::lookup`]).
#[derive(Debug, Clone, Copy)]
pub struct PortRule<'a> {
    global: bool,
    own: Option<&'a OwnPorts>,
    entry: u32,
}

impl<'a> PortRule<'a> {
    /// Whether `port` is allowed, given the global `allowed_ports`.
    pub fn allows(&self, port: u16, global: &PortSet) -> bool {
        (self.global && global.contains(port)) || self.own.is_some_and(|s| s.contains(port))
    }

    /// Whether the global `allowed_ports` apply to the entry.
    pub fn uses_global(&self) -> bool {
        self.global
    }

    /// The entry's own ports, if it has any.
    pub fn own_ports(&self) -> Option<&'a PortList> {
        self.own.map(|o| &o.list)
    }

    /// Which entry matched: its position in the entries the list was built from (counted
    /// from [`Allowlist::from_entries_at`]'s `first`). A pattern listed more than once is the
    /// entry that listed it first.
    pub fn entry(&self) -> u32 {
        self.entry
    }
}

impl Allowlist {
    /// An empty allowlist, which allows nothing.
    pub fn new() -> Allowlist {
        Allowlist::default()
    }

    /// Builds an allowlist from patterns, all on the global ports.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a HostPattern>) -> Allowlist {
        patterns.into_iter().cloned().collect()
    }

    /// Builds an allowlist from entries with their ports.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a HostEntry>) -> Allowlist {
        Allowlist::from_entries_at(entries, 0)
    }

    /// Like [`Allowlist::from_entries`], numbering the entries from `first` (so that several
    /// lists of one policy number their entries apart).
    pub fn from_entries_at<'a>(
        entries: impl IntoIterator<Item = &'a HostEntry>,
        first: u32,
    ) -> Allowlist {
        let mut list = Allowlist {
            next_entry: first,
            ..Allowlist::default()
        };
        for entry in entries {
            list.insert_entry(entry);
        }
        list
    }

    /// Adds one pattern on the global ports. Returns `false` if the pattern was already
    /// present (its rule then also allows the global ports).
    pub fn insert(&mut self, pattern: HostPattern) -> bool {
        self.insert_entry(&HostEntry::from(pattern))
    }

    /// Adds one entry with its ports (none = the global ports). Returns `false` if its pattern
    /// was already present; the ports are then united with those already listed.
    pub fn insert_entry(&mut self, entry: &HostEntry) -> bool {
        let (exact, key) = match &entry.pattern().0 {
            Repr::Exact(name) => (true, name),
            Repr::Wildcard(suffix) => (false, suffix),
        };
        let map = if exact { &self.exact } else { &self.wildcard };
        let old = map.get(key.as_str()).copied();
        let number = self.next_entry;
        self.next_entry = self.next_entry.saturating_add(1);
        let entry_of_key = old.map_or(number, |r| r.entry);
        let (global, list) = match old {
            None => (entry.ports().is_none(), entry.ports().cloned()),
            Some(rule) => {
                let old_list = rule.set.and_then(|i| self.list(i));
                let list = match (old_list, entry.ports()) {
                    (a, None) => a.cloned(),
                    (None, b) => b.cloned(),
                    (Some(a), Some(b)) => Some(a.union(b)),
                };
                (rule.global || entry.ports().is_none(), list)
            }
        };
        // A united list may leave the key's previous set unused; that costs memory only when a
        // pattern is listed more than once with different ports.
        let set = list.as_ref().map(|l| self.intern(l));
        let map = if exact {
            &mut self.exact
        } else {
            &mut self.wildcard
        };
        map.insert(
            key.clone(),
            Rule {
                global,
                set,
                entry: entry_of_key,
            },
        );
        old.is_none()
    }

    /// The most specific entry matching `host` (already normalised, see [`normalize_host`]):
    /// an exact entry, else the wildcard with the longest suffix. `None` when nothing matches.
    pub fn lookup(&self, host: &str) -> Option<PortRule<'_>> {
        let rule = self.find(host)?;
        let own = rule
            .set
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.sets.get(i));
        Some(PortRule {
            global: rule.global,
            own,
            entry: rule.entry,
        })
    }

    /// Whether `host` (already normalised, see [`normalize_host`]) is allowed on some port: it
    /// is an exact entry, or some proper label suffix of it is a wildcard entry.
    pub fn is_allowed(&self, host: &str) -> bool {
        self.find(host).is_some()
    }

    /// The number of distinct patterns.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether there are no patterns (everything is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One probe for the exact map, then one per label, longest suffix first, so the first
    /// wildcard found is the most specific.
    fn find(&self, host: &str) -> Option<&Rule> {
        if let Some(rule) = self.exact.get(host) {
            return Some(rule);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            if dot == 0 {
                // An empty label: not a normalised name.
                return None;
            }
            rest = &rest[dot + 1..];
            if let Some(rule) = self.wildcard.get(rest) {
                return Some(rule);
            }
        }
        None
    }

    /// The index of `list` in `sets`, adding it if new.
    fn intern(&mut self, list: &PortList) -> u32 {
        if let Some(&i) = self.interned.get(list) {
            return i;
        }
        let i = u32::try_from(self.sets.len()).unwrap_or(u32::MAX);
        self.sets.push(OwnPorts::new(list));
        self.interned.insert(list.clone(), i);
        i
    }

    fn list(&self, i: u32) -> Option<&PortList> {
        let i = usize::try_from(i).ok()?;
        self.sets.get(i).map(|o| &o.list)
    }
}

impl FromIterator<HostPattern> for Allowlist {
    fn from_iter<I: IntoIterator<Item = HostPattern>>(iter: I) -> Allowlist {
        let mut list = Allowlist::new();
        list.extend(iter);
        list
    }
}

impl Extend<HostPattern> for Allowlist {
    fn extend<I: IntoIterator<Item = HostPattern>>(&mut self, iter: I) {
        for pattern in iter {
            self.insert(pattern);
        }
    }
}

/// Checks a lower-case DNS name without a trailing dot.
fn validate_name(name: &str) -> Result<(), PatternError> {
    if name.is_empty() {
        return Err(PatternError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PatternError::NameTooLong);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(PatternError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(PatternError::LabelTooLong);
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
        {
            return Err(if c == '*' {
                PatternError::Wildcard
            } else {
                PatternError::InvalidChar(c)
            });
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PatternError::NumericTld);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> HostPattern {
        match HostPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn normalize_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Example.COM", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("example.com..", None),
            (".example.com", None),
            ("a..b", None),
            ("", None),
            (".", None),
            ("under_score.example", Some("under_score.example")),
            ("xn--bcher-kva.example", Some("xn--bcher-kva.example")),
            ("bücher.example", None),
            ("exa mple.com", None),
            ("*.example.com", None),
            ("example.com:443", None),
            ("localhost", Some("localhost")),
            // IP literals: canonical text, IPv6 without brackets.
            ("10.0.0.1", Some("10.0.0.1")),
            ("2001:DB8:0:0::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[10.0.0.1]", None),
            ("::ffff:1.2.3.4", Some("::ffff:1.2.3.4")),
            ("fe80::1%eth0", None),
            // Forms that some resolvers read as IPv4 but are not canonical literals.
            ("010.0.0.1", None),
            ("2130706433", None),
            ("127.1", None),
            ("0x7f.0.0.1", None),
            ("1.2.3.4.", None),
            ("host.123", None),
            ("123.host", Some("123.host")),
        ];
        for &(input, want) in cases {
            assert_eq!(
                normalize_host(input).as_deref(),
                want,
                "normalize_host({input:?})"
            );
        }
    }

    #[test]
    fn normalize_lengths() {
        let label63 = "a".repeat(63);
        assert!(normalize_host(&format!("{label63}.com")).is_some());
        assert!(normalize_host(&format!("{label63}a.com")).is_none());
        // 4 * 63 + 3 dots = 255 > 253
        let long = [label63.as_str(); 4].join(".");
        assert!(normalize_host(&long).is_none());
        let max = format!("{}.{}", [label63.as_str(); 3].join("."), "a".repeat(61));
        assert_eq!(max.len(), 253);
        assert!(normalize_host(&max).is_some());
        assert!(normalize_host(&format!("{max}.")).is_some());
    }

    #[test]
    fn parse_patterns() {
        let good: &[(&str, &str, bool)] = &[
            ("example.com", "example.com", false),
            ("Example.Com.", "example.com", false),
            (
                "*.ods.opinsights.azure.com",
                "*.ods.opinsights.azure.com",
                true,
            ),
            ("*.Blob.Core.Windows.NET", "*.blob.core.windows.net", true),
            ("203.0.113.7", "203.0.113.7", false),
            ("2001:DB8::7", "2001:db8::7", false),
            ("[2001:db8::7]", "2001:db8::7", false),
        ];
        for &(input, canonical, wildcard) in good {
            let p = pattern(input);
            assert_eq!(p.to_string(), canonical, "{input:?}");
            assert_eq!(p.is_wildcard(), wildcard, "{input:?}");
            assert_eq!(pattern(canonical), p, "display round-trips for {input:?}");
        }
    }

    #[test]
    fn reject_patterns() {
        let bad: &[(&str, PatternError)] = &[
            ("", PatternError::Empty),
            ("*.", PatternError::Wildcard),
            ("*..", PatternError::Empty),
            ("*", PatternError::Wildcard),
            ("**.example.com", PatternError::Wildcard),
            ("a.*.example.com", PatternError::Wildcard),
            ("*example.com", PatternError::Wildcard),
            ("foo*.example.com", PatternError::Wildcard),
            ("*.*.example.com", PatternError::Wildcard),
            ("example.*", PatternError::Wildcard),
            ("exa mple.com", PatternError::Whitespace),
            (" example.com", PatternError::Whitespace),
            ("https://example.com", PatternError::Scheme),
            ("example.com/path", PatternError::Path),
            ("10.0.0.0/8", PatternError::Path),
            ("example.com:443", PatternError::Port),
            ("[::1]:443", PatternError::Port),
            ("a..example.com", PatternError::EmptyLabel),
            (".example.com", PatternError::EmptyLabel),
            ("*..example.com", PatternError::EmptyLabel),
            ("user@example.com", PatternError::InvalidChar('@')),
            ("bücher.example", PatternError::InvalidChar('ü')),
            ("[example.com]", PatternError::InvalidChar('[')),
            ("1.2.3", PatternError::NumericTld),
            ("*.10.0.0", PatternError::NumericTld),
        ];
        for (input, want) in bad {
            assert_eq!(HostPattern::parse(input).as_ref(), Err(want), "{input:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(HostPattern::parse(&long), Err(PatternError::LabelTooLong));
        let label63 = "a".repeat(63);
        let too_long = [label63.as_str(); 4].join(".");
        assert_eq!(
            HostPattern::parse(&too_long),
            Err(PatternError::NameTooLong)
        );
    }

    #[test]
    fn wildcard_matching_is_on_label_boundaries() {
        let list: Allowlist = [
            pattern("*.ods.opinsights.azure.com"),
            pattern("global.handler.control.monitor.azure.com"),
            pattern("*.handler.control.monitor.azure.com"),
            pattern("203.0.113.7"),
            pattern("2001:db8::7"),
        ]
        .into_iter()
        .collect();
        let cases: &[(&str, bool)] = &[
            ("a.ods.opinsights.azure.com", true),
            ("a.b.ods.opinsights.azure.com", true),
            ("ods.opinsights.azure.com", false),
            ("evilods.opinsights.azure.com", false),
            ("ods.opinsights.azure.com.evil.com", false),
            ("a.ods.opinsights.azure.co", false),
            ("opinsights.azure.com", false),
            ("global.handler.control.monitor.azure.com", true),
            ("westus2.handler.control.monitor.azure.com", true),
            ("handler.control.monitor.azure.com", false),
            ("203.0.113.7", true),
            ("203.0.113.8", false),
            ("2001:db8::7", true),
            ("", false),
            (".", false),
            ("com", false),
            (".ods.opinsights.azure.com", false),
            ("a..ods.opinsights.azure.com", false),
        ];
        for &(host, want) in cases {
            assert_eq!(list.is_allowed(host), want, "is_allowed({host:?})");
            let single = [
                "*.ods.opinsights.azure.com",
                "global.handler.control.monitor.azure.com",
                "*.handler.control.monitor.azure.com",
                "203.0.113.7",
                "2001:db8::7",
            ]
            .iter()
            .any(|p| pattern(p).matches(host));
            assert_eq!(single, want, "HostPattern::matches({host:?})");
        }
        assert_eq!(list.len(), 5);
    }

    #[test]
    fn allowlist_basics() {
        let mut list = Allowlist::new();
        assert!(list.is_empty());
        assert!(!list.is_allowed("example.com"));
        assert!(list.insert(pattern("example.com")));
        assert!(!list.insert(pattern("EXAMPLE.com.")));
        assert!(list.insert(pattern("*.example.com")));
        assert_eq!(list.len(), 2);
        assert!(list.is_allowed("example.com"));
        assert!(list.is_allowed("www.example.com"));
        assert!(!list.is_allowed("wwwexample.com"));
        let copy = Allowlist::from_patterns(&[pattern("a.example")]);
        assert!(copy.is_allowed("a.example"));
    }

    #[test]
    fn port_rules_short_and_long_lists() {
        let entry = |s: &str| match HostEntry::parse(s) {
            Ok(e) => e,
            Err(err) => panic!("{s:?}: {err}"),
        };
        // 20 single ports (more than MAX_RANGES_WITHOUT_BITMAP): checked through a bitmap.
        let many: Vec<String> = (0..20).map(|i| (1000 + 2 * i).to_string()).collect();
        let list = Allowlist::from_entries(&[
            entry(&format!("many.example:{}", many.join(","))),
            entry("few.example:443,30000-30199"),
            entry("*.few.example:443,30000-30199"),
            entry("global.example"),
        ]);
        let global: PortSet = [443].into_iter().collect();
        let allows = |host: &str, port: u16| {
            list.lookup(host)
                .is_some_and(|rule| rule.allows(port, &global))
        };
        assert!(allows("many.example", 1000) && allows("many.example", 1038));
        assert!(!allows("many.example", 1001) && !allows("many.example", 443));
        assert!(allows("few.example", 30199) && !allows("few.example", 30200));
        assert!(allows("global.example", 443) && !allows("global.example", 30000));
        let few = list.lookup("a.few.example");
        assert_eq!(
            few.and_then(|r| r.own_ports()).map(ToString::to_string),
            Some("443,30000-30199".to_owned())
        );
        assert!(few.is_some_and(|r| !r.uses_global()));
        assert_eq!(list.sets.len(), 2, "equal port lists are shared");
        assert!(list
            .lookup("global.example")
            .is_some_and(|r| r.uses_global()));
    }

    #[test]
    fn large_allowlist() {
        let list: Allowlist = (0..100_000)
            .map(|i| {
                if i % 2 == 0 {
                    pattern(&format!("host{i}.example.com"))
                } else {
                    pattern(&format!("*.zone{i}.example.net"))
                }
            })
            .collect();
        assert_eq!(list.len(), 100_000);
        assert!(list.is_allowed("host99998.example.com"));
        assert!(!list.is_allowed("host99999.example.com"));
        assert!(list.is_allowed("a.b.zone99999.example.net"));
        assert!(!list.is_allowed("zone99999.example.net"));
        assert!(!list.is_allowed("a.zone99998.example.net"));
    }
}
