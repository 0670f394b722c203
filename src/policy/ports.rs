//! The set of destination ports a client may CONNECT to: a fixed 65536-bit bitmap (8 KiB),
//! so a lookup is one shift and one mask whatever the number of ports. Port 0 is never a
//! member.

use std::fmt;

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

    #[test]
    fn debug_lists_ports() {
        let set: PortSet = [8443, 443].into_iter().collect();
        assert_eq!(format!("{set:?}"), "{443, 8443}");
    }
}
