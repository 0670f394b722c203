//! Host names: normalisation, allowlist patterns and the allowlist itself.
//!
//! A pattern is either an exact name or address (`global.handler.control.monitor.azure.com`,
//! `203.0.113.7`, `2001:db8::7`) or a wildcard `*.suffix` that matches any name with at least
//! one more label in front of `suffix`, on a label boundary: `*.ods.opinsights.azure.com`
//! matches `ws.ods.opinsights.azure.com` and `a.b.ods.opinsights.azure.com`, but neither
//! `ods.opinsights.azure.com` itself nor `evilods.opinsights.azure.com`.
//!
//! The [`Allowlist`] keeps exact entries and wildcard suffixes in two hash sets; a lookup costs
//! one probe for the exact set and one per label of the queried name for the wildcard set, so it
//! does not depend on the number of rules.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

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
    #[error("a host pattern must not contain a port: list ports in allowed_ports instead")]
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

/// A set of [`HostPattern`]s with a lookup cost independent of its size.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    exact: HashSet<String>,
    wildcard: HashSet<String>,
}

impl Allowlist {
    /// An empty allowlist, which allows nothing.
    pub fn new() -> Allowlist {
        Allowlist::default()
    }

    /// Builds an allowlist from patterns.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a HostPattern>) -> Allowlist {
        patterns.into_iter().cloned().collect()
    }

    /// Adds one pattern. Returns `false` if it was already present.
    pub fn insert(&mut self, pattern: HostPattern) -> bool {
        match pattern.0 {
            Repr::Exact(name) => self.exact.insert(name),
            Repr::Wildcard(suffix) => self.wildcard.insert(suffix),
        }
    }

    /// Whether `host` (already normalised, see [`normalize_host`]) is allowed: it is an exact
    /// entry, or some proper label suffix of it is a wildcard entry.
    pub fn is_allowed(&self, host: &str) -> bool {
        if self.exact.contains(host) {
            return true;
        }
        if self.wildcard.is_empty() {
            return false;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            if dot == 0 {
                // An empty label: not a normalised name.
                return false;
            }
            rest = &rest[dot + 1..];
            if self.wildcard.contains(rest) {
                return true;
            }
        }
        false
    }

    /// The number of distinct patterns.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether there are no patterns (everything is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
