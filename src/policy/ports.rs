//! Destination ports: [`PortList`], the parsed form of a port list as written in the
//! configuration (`443,9354,30000-30199`), and [`PortSet`], the set a client may CONNECT to: a
//! fixed 65536-bit bitmap (8 KiB), so a lookup is one shift and one mask whatever the number of
//! ports. Port 0 is never a member of either.

use std::fmt;
use std::str::FromStr;

const WORDS: usize = 65536 / 64;

/// A set of TCP ports. Port 0 can never be inserted.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    words: Box<[u64]>,
    len: usize,
}

impl PortSet {
    /// An empty set.
    pub fn new() -> PortSet {
        PortSet {
            words: vec![0u64; WORDS].into_boxed_slice(),
            len: 0,
        }
    }

    /// Adds `port`. Returns `false` if it was already present or is port 0 (never allowed).
    pub fn insert(&mut self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        let (word, bit) = position(port);
        match self.words.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether `port` is in the set. Always `false` for port 0.
    pub fn contains(&self, port: u16) -> bool {
        let (word, bit) = position(port);
        port != 0 && self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The number of ports in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (1..=u16::MAX).filter(move |&p| self.contains(p))
    }
}

impl Default for PortSet {
    fn default() -> PortSet {
        PortSet::new()
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> PortSet {
        let mut set = PortSet::new();
        set.extend(iter);
        set
    }
}

impl Extend<u16> for PortSet {
    fn extend<I: IntoIterator<Item = u16>>(&mut self, iter: I) {
        for port in iter {
            self.insert(port);
        }
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl PortSet {
    /// Adds every port of `list`.
    pub fn insert_list(&mut self, list: &PortList) {
        for &(start, end) in list.ranges() {
            for port in start..=end {
                self.insert(port);
            }
        }
    }
}

impl From<&PortList> for PortSet {
    fn from(list: &PortList) -> PortSet {
        let mut set = PortSet::new();
        set.insert_list(list);
        set
    }
}

/// Why a port list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortListError {
    #[error(
        "the port list after ':' is empty; write ports as in \"443\" or \"443,9354,30000-30199\""
    )]
    Empty,
    #[error(
        "the port list has an empty item (two commas in a row, or a leading or trailing comma)"
    )]
    EmptyItem,
    #[error(
        "{0:?} is not a port number; write ports as in \"443\" or ranges as in \"30000-30199\""
    )]
    NotANumber(String),
    #[error("port {0} is out of range: ports are 1 to 65535")]
    OutOfRange(String),
    #[error("the range {0}-{1} runs backwards: write the lower port first, as in \"{1}-{0}\"")]
    Backwards(u16, u16),
}

/// A non-empty list of ports and inclusive ranges, kept sorted with overlapping and adjacent
/// ranges merged, so equal sets compare equal and display the same way
/// (`443,9354,30000-30199`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortList(Vec<(u16, u16)>);

impl PortList {
    /// Parses `443`, `80,443`, `30000-30199` or any comma-separated mix; every port is 1 to
    /// 65535, a range's start is not above its end, repeats are merged.
    pub fn parse(s: &str) -> Result<PortList, PortListError> {
        if s.is_empty() {
            return Err(PortListError::Empty);
        }
        let mut ranges = Vec::new();
        for item in s.split(',') {
            if item.is_empty() {
                return Err(PortListError::EmptyItem);
            }
            let range = match item.split_once('-') {
                Some((a, b)) => {
                    let (start, end) = (port(a)?, port(b)?);
                    if start > end {
                        return Err(PortListError::Backwards(start, end));
                    }
                    (start, end)
                }
                None => {
                    let p = port(item)?;
                    (p, p)
                }
            };
            ranges.push(range);
        }
        Ok(PortList::from_ranges(ranges))
    }

    /// A list of one port (port 0 is out of range and yields `None`).
    pub fn single(port: u16) -> Option<PortList> {
        (port != 0).then(|| PortList(vec![(port, port)]))
    }

    /// The sorted, merged inclusive ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Whether `port` is in the list.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// Both lists together.
    pub fn union(&self, other: &PortList) -> PortList {
        PortList::from_ranges(self.0.iter().chain(&other.0).copied().collect())
    }

    /// Sorts and merges ranges that overlap or touch. Callers pass ranges with `start <= end`
    /// and no port 0.
    fn from_ranges(mut ranges: Vec<(u16, u16)>) -> PortList {
        ranges.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match out.last_mut() {
                Some(last) if u32::from(start) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(end);
                }
                _ => out.push((start, end)),
            }
        }
        PortList(out)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(start, end)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for PortList {
    type Err = PortListError;

    fn from_str(s: &str) -> Result<PortList, PortListError> {
        PortList::parse(s)
    }
}

/// One port number of a list: decimal digits only, 1 to 65535.
fn port(text: &str) -> Result<u16, PortListError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortListError::NotANumber(text.to_owned()));
    }
    match text.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(PortListError::OutOfRange(text.to_owned())),
    }
}

fn position(port: u16) -> (usize, u64) {
    (usize::from(port >> 6), 1u64 << (port & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership() {
        let set: PortSet = [443, 80, 443, 65535, 1].into_iter().collect();
        assert_eq!(set.len(), 4);
        for p in [1, 80, 443, 65535] {
            assert!(set.contains(p), "{p}");
        }
        for p in [0, 2, 79, 81, 442, 444, 8080, 65534] {
            assert!(!set.contains(p), "{p}");
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 80, 443, 65535]);
    }

    #[test]
    fn port_zero_is_never_allowed() {
        let mut set = PortSet::new();
        assert!(!set.insert(0));
        assert!(!set.contains(0));
        assert!(set.is_empty());
        let all: PortSet = (0..=u16::MAX).collect();
        assert_eq!(all.len(), 65535);
        assert!(!all.contains(0));
    }

    fn list(s: &str) -> PortList {
        match PortList::parse(s) {
            Ok(l) => l,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn port_lists_parse_and_merge() {
        let cases: &[(&str, &str)] = &[
            ("443", "443"),
            ("443,9354,30000-30199", "443,9354,30000-30199"),
            ("30000-30199,443,9354", "443,9354,30000-30199"),
            ("443,443", "443"),
            ("80,81,82", "80-82"),
            ("1-10,5-20", "1-20"),
            ("1-65535", "1-65535"),
            ("65535,1", "1,65535"),
            ("443-443", "443"),
            ("8443,443,30100-30199,30000-30099", "443,8443,30000-30199"),
        ];
        for &(input, want) in cases {
            let l = list(input);
            assert_eq!(l.to_string(), want, "{input:?}");
            assert_eq!(list(want), l, "display round-trips for {input:?}");
        }
        let l = list("443,9354,30000-30199");
        for p in [443, 9354, 30000, 30100, 30199] {
            assert!(l.contains(p), "{p}");
        }
        for p in [0, 442, 444, 9353, 29999, 30200, 65535] {
            assert!(!l.contains(p), "{p}");
        }
        assert_eq!(list("80").union(&list("443,80")).to_string(), "80,443");
        assert_eq!(PortList::single(0), None);
        assert_eq!(PortList::single(443), Some(list("443")));
    }

    #[test]
    fn port_lists_reject() {
        let bad: &[(&str, PortListError)] = &[
            ("", PortListError::Empty),
            ("0", PortListError::OutOfRange("0".into())),
            ("70000", PortListError::OutOfRange("70000".into())),
            ("65536", PortListError::OutOfRange("65536".into())),
            ("443-80", PortListError::Backwards(443, 80)),
            ("0-10", PortListError::OutOfRange("0".into())),
            ("443,", PortListError::EmptyItem),
            (",443", PortListError::EmptyItem),
            ("443,,80", PortListError::EmptyItem),
            ("https", PortListError::NotANumber("https".into())),
            ("-443", PortListError::NotANumber(String::new())),
            ("443-", PortListError::NotANumber(String::new())),
            ("1-2-3", PortListError::NotANumber("2-3".into())),
            ("+443", PortListError::NotANumber("+443".into())),
            (" 443", PortListError::NotANumber(" 443".into())),
            (
                "99999999999999999999",
                PortListError::OutOfRange("99999999999999999999".into()),
            ),
        ];
        for (input, want) in bad {
            assert_eq!(PortList::parse(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn set_from_list() {
        let set = PortSet::from(&list("443,30000-30199"));
        assert_eq!(set.len(), 201);
        assert!(set.contains(30000) && set.contains(30199) && set.contains(443));
        assert!(!set.contains(29999) && !set.contains(30200));
    }

    #[test]
    fn debug_lists_ports() {
        let set: PortSet = [8443, 443].into_iter().collect();
        assert_eq!(format!("{set:?}"), "{443, 8443}");
    }
}
