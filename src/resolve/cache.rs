//! The answer cache: per name, one entry for A and one for AAAA.
//!
//! - A positive answer is fresh for its TTL clamped to `[min_ttl, max_ttl]`.
//! - NXDOMAIN and NODATA are fresh for the SOA minimum (RFC 2308), capped by `negative_ttl`;
//!   without an SOA for `min_ttl` under the same cap. A negative answer removes a positive one.
//! - An expired positive answer stays usable as a stale answer (RFC 8767) for `stale_ttl` past
//!   its expiry. Negative answers are never served stale.
//! - An entry (positive or negative) that answered at least two lookups while fresh is due for
//!   a background refresh at 90% of its TTL ([`Cache::due_refreshes`]), so a busy name never
//!   goes through a miss.
//!
//! Nothing here reads the clock: every method takes `now`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The record type of a lookup: A or AAAA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        }
    }
}

/// What the name server said for one name and family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Addresses (never empty); `private_link`: the CNAME chain passed a `privatelink.` zone.
    Addrs {
        ips: Vec<IpAddr>,
        private_link: bool,
    },
    NxDomain,
    NoData,
}

/// The TTL rules, from `resolver:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub min: Duration,
    pub max: Duration,
    pub negative: Duration,
    pub stale: Duration,
}

/// A stale answer: the addresses and how long ago they expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub ips: Vec<IpAddr>,
    pub private_link: bool,
    pub expired_for: Duration,
}

#[derive(Debug)]
struct Entry {
    outcome: Outcome,
    expires: Instant,
    /// Lookups this entry answered while fresh (the one that caused the query not counted).
    uses: u32,
    /// When a background refresh is due (90% of the TTL); matches a heap item.
    refresh_at: Instant,
    /// The last query for this name and family failed (SERVFAIL, timeout) after this entry
    /// was stored: an expired entry is then served stale at once while the refresh is retried.
    failing: bool,
}

/// See the module documentation. `capacity` counts names; 0 disables the cache.
#[derive(Debug)]
pub struct Cache {
    names: HashMap<String, [Option<Entry>; 2]>,
    refreshes: BinaryHeap<Reverse<(Instant, String, Family)>>,
    capacity: usize,
    ttls: Ttls,
}

impl Cache {
    pub fn new(capacity: usize, ttls: Ttls) -> Cache {
        Cache {
            names: HashMap::new(),
            refreshes: BinaryHeap::new(),
            capacity,
            ttls,
        }
    }

    /// The fresh answer for `name`/`family`, counting one use.
    pub fn fresh(&mut self, name: &str, family: Family, now: Instant) -> Option<Outcome> {
        let e = self.names.get_mut(name)?[family.index()].as_mut()?;
        if now >= e.expires {
            return None;
        }
        e.uses = e.uses.saturating_add(1);
        Some(e.outcome.clone())
    }

    /// An expired positive answer still within `stale_ttl` of its expiry.
    pub fn stale(&self, name: &str, family: Family, now: Instant) -> Option<Stale> {
        let e = self.names.get(name)?[family.index()].as_ref()?;
        let Outcome::Addrs { ips, private_link } = &e.outcome else {
            return None;
        };
        let expired_for = now.checked_duration_since(e.expires)?;
        if expired_for > self.ttls.stale || self.ttls.stale.is_zero() {
            return None;
        }
        Some(Stale {
            ips: ips.clone(),
            private_link: *private_link,
            expired_for,
        })
    }

    /// A stale answer to use at once: the last query for it failed.
    pub fn stale_after_failure(&self, name: &str, family: Family, now: Instant) -> Option<Stale> {
        let failing = self.names.get(name)?[family.index()]
            .as_ref()
            .is_some_and(|e| e.failing);
        if failing {
            self.stale(name, family, now)
        } else {
            None
        }
    }

    /// Record that a query for `name`/`family` failed (the entry, if any, is kept).
    pub fn failed(&mut self, name: &str, family: Family) {
        if let Some(e) = self
            .names
            .get_mut(name)
            .and_then(|n| n[family.index()].as_mut())
        {
            e.failing = true;
        }
    }

    /// Store addresses with the answer's TTL (seconds).
    pub fn insert_addrs(
        &mut self,
        name: &str,
        family: Family,
        (ips, private_link): (Vec<IpAddr>, bool),
        ttl_secs: u32,
        now: Instant,
    ) {
        if ips.is_empty() {
            return;
        }
        let ttl = Duration::from_secs(u64::from(ttl_secs)).clamp(self.ttls.min, self.ttls.max);
        let refresh_at = now + ttl.mul_f64(0.9);
        let entry = Entry {
            outcome: Outcome::Addrs { ips, private_link },
            expires: now + ttl,
            uses: 0,
            refresh_at,
            failing: false,
        };
        if self.put(name, family, entry, now) && !ttl.is_zero() {
            self.refreshes
                .push(Reverse((refresh_at, name.to_owned(), family)));
        }
    }

    /// Store NXDOMAIN (`nx`) or NODATA for the SOA's negative TTL (seconds), if any.
    pub fn insert_negative(
        &mut self,
        name: &str,
        family: Family,
        nx: bool,
        soa_ttl: Option<u32>,
        now: Instant,
    ) {
        let ttl = soa_ttl
            .map_or(self.ttls.min, |s| Duration::from_secs(u64::from(s)))
            .min(self.ttls.negative);
        if ttl.is_zero() {
            // Not kept; but a positive answer for a name that is gone must not linger either.
            if let Some(n) = self.names.get_mut(name) {
                n[family.index()] = None;
            }
            return;
        }
        let refresh_at = now + ttl.mul_f64(0.9);
        let entry = Entry {
            outcome: if nx {
                Outcome::NxDomain
            } else {
                Outcome::NoData
            },
            expires: now + ttl,
            uses: 0,
            refresh_at,
            failing: false,
        };
        if self.put(name, family, entry, now) {
            self.refreshes
                .push(Reverse((refresh_at, name.to_owned(), family)));
        }
    }

    /// Insert, making room if needed; false when the cache is disabled.
    fn put(&mut self, name: &str, family: Family, entry: Entry, now: Instant) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if !self.names.contains_key(name) && self.names.len() >= self.capacity {
            self.evict(now);
        }
        let slot = self.names.entry(name.to_owned()).or_default();
        slot[family.index()] = Some(entry);
        true
    }

    /// Drop names whose answers are past any use; if that frees nothing, the tenth of the
    /// names expiring first (at least one), so a full cache costs one scan per many inserts.
    fn evict(&mut self, now: Instant) {
        let stale = self.ttls.stale;
        let useless = |n: &[Option<Entry>; 2]| {
            n.iter()
                .flatten()
                .all(|e| e.expires + stale <= now || !matches!(e.outcome, Outcome::Addrs { .. }))
                && n.iter().flatten().all(|e| e.expires <= now)
        };
        self.names.retain(|_, n| !useless(n));
        if self.names.len() < self.capacity {
            return;
        }
        let mut expiries: Vec<Option<Instant>> = self
            .names
            .values()
            .map(|n| n.iter().flatten().map(|e| e.expires).max())
            .collect();
        let batch = (self.names.len() / 10).max(1);
        let (_, threshold, _) = expiries.select_nth_unstable(batch - 1);
        let threshold = *threshold;
        let mut left = batch;
        self.names.retain(|_, n| {
            let expires = n.iter().flatten().map(|e| e.expires).max();
            if left > 0 && expires <= threshold {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Names and families due for a background refresh at `now`: used at least twice while
    /// fresh and at 90% of their TTL. Each entry is returned once per stored answer.
    pub fn due_refreshes(&mut self, now: Instant) -> Vec<(String, Family)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _, _))) = self.refreshes.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, name, family))) = self.refreshes.pop() else {
                break;
            };
            let wanted = self
                .names
                .get(&name)
                .and_then(|n| n[family.index()].as_ref())
                .is_some_and(|e| e.refresh_at == at && e.uses >= 2 && now < e.expires);
            if wanted {
                due.push((name, family));
            }
        }
        due
    }

    /// When [`Cache::due_refreshes`] may next have something.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.refreshes.peek().map(|Reverse((at, _, _))| *at)
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const S: Duration = Duration::from_secs(1);

    fn ttls() -> Ttls {
        Ttls {
            min: 5 * S,
            max: 3600 * S,
            negative: 30 * S,
            stale: 3600 * S,
        }
    }

    fn ip(n: u8) -> Vec<IpAddr> {
        vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))]
    }

    #[test]
    fn positive_ttl_is_clamped() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, ttls());
        c.insert_addrs("short", Family::V4, (ip(1), false), 1, t0);
        c.insert_addrs("long", Family::V4, (ip(2), false), 86_400, t0);
        c.insert_addrs("mid", Family::V4, (ip(3), false), 60, t0);
        assert!(c.fresh("short", Family::V4, t0 + 4 * S).is_some());
        assert!(c.fresh("short", Family::V4, t0 + 5 * S).is_none());
        assert!(c.fresh("long", Family::V4, t0 + 3599 * S).is_some());
        assert!(c.fresh("long", Family::V4, t0 + 3600 * S).is_none());
        assert!(c.fresh("mid", Family::V4, t0 + 59 * S).is_some());
        assert!(c.fresh("mid", Family::V4, t0 + 60 * S).is_none());
        assert!(c.fresh("mid", Family::V6, t0).is_none());
    }

    #[test]
    fn negative_ttl_is_the_soa_minimum_capped() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, ttls());
        c.insert_negative("nx", Family::V4, true, Some(10), t0);
        c.insert_negative("capped", Family::V4, true, Some(86_400), t0);
        c.insert_negative("nosoa", Family::V6, false, None, t0);
        assert_eq!(
            c.fresh("nx", Family::V4, t0 + 9 * S),
            Some(Outcome::NxDomain)
        );
        assert_eq!(c.fresh("nx", Family::V4, t0 + 10 * S), None);
        assert!(c.fresh("capped", Family::V4, t0 + 29 * S).is_some());
        assert!(c.fresh("capped", Family::V4, t0 + 30 * S).is_none());
        assert_eq!(
            c.fresh("nosoa", Family::V6, t0 + 4 * S),
            Some(Outcome::NoData)
        );
        assert_eq!(c.fresh("nosoa", Family::V6, t0 + 5 * S), None);
        // A negative answer is never served stale.
        assert_eq!(c.stale("nx", Family::V4, t0 + 11 * S), None);
    }

    #[test]
    fn negative_ttl_zero_keeps_nothing_and_drops_the_old_answer() {
        let t0 = Instant::now();
        let mut c = Cache::new(
            10,
            Ttls {
                negative: Duration::ZERO,
                ..ttls()
            },
        );
        c.insert_addrs("gone", Family::V4, (ip(1), false), 60, t0);
        c.insert_negative("gone", Family::V4, true, Some(10), t0 + S);
        assert_eq!(c.fresh("gone", Family::V4, t0 + 2 * S), None);
        assert_eq!(c.stale("gone", Family::V4, t0 + 100 * S), None);
    }

    #[test]
    fn stale_window_and_failure_flag() {
        let t0 = Instant::now();
        let mut c = Cache::new(
            10,
            Ttls {
                stale: 100 * S,
                ..ttls()
            },
        );
        c.insert_addrs("n", Family::V4, (ip(1), true), 10, t0);
        assert_eq!(c.stale("n", Family::V4, t0 + 9 * S), None, "still fresh");
        let s = c.stale("n", Family::V4, t0 + 20 * S);
        assert_eq!(
            s,
            Some(Stale {
                ips: ip(1),
                private_link: true,
                expired_for: 10 * S
            })
        );
        assert!(c.stale("n", Family::V4, t0 + 110 * S).is_some());
        assert!(c.stale("n", Family::V4, t0 + 111 * S).is_none());
        assert!(c
            .stale_after_failure("n", Family::V4, t0 + 20 * S)
            .is_none());
        c.failed("n", Family::V4);
        assert!(c
            .stale_after_failure("n", Family::V4, t0 + 20 * S)
            .is_some());
        // A new answer clears the failure.
        c.insert_addrs("n", Family::V4, (ip(2), false), 10, t0 + 30 * S);
        assert!(c
            .stale_after_failure("n", Family::V4, t0 + 45 * S)
            .is_none());
        let off = Cache::new(
            10,
            Ttls {
                stale: Duration::ZERO,
                ..ttls()
            },
        );
        assert!(off.stale("n", Family::V4, t0).is_none());
    }

    #[test]
    fn refresh_due_at_ninety_percent_only_when_used_twice() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, ttls());
        c.insert_addrs("busy", Family::V4, (ip(1), false), 100, t0);
        c.insert_addrs("quiet", Family::V4, (ip(2), false), 100, t0);
        assert!(c.fresh("busy", Family::V4, t0 + S).is_some());
        assert!(c.fresh("busy", Family::V4, t0 + 2 * S).is_some());
        assert!(c.fresh("quiet", Family::V4, t0 + 2 * S).is_some());
        assert_eq!(c.next_refresh(), Some(t0 + 90 * S));
        assert!(c.due_refreshes(t0 + 89 * S).is_empty());
        assert_eq!(
            c.due_refreshes(t0 + 90 * S),
            vec![("busy".to_owned(), Family::V4)]
        );
        assert!(c.due_refreshes(t0 + 95 * S).is_empty(), "once per answer");
        assert_eq!(c.next_refresh(), None);
    }

    #[test]
    fn capacity_evicts_the_useless_then_the_oldest() {
        let t0 = Instant::now();
        let mut c = Cache::new(
            2,
            Ttls {
                stale: 10 * S,
                ..ttls()
            },
        );
        c.insert_addrs("a", Family::V4, (ip(1), false), 10, t0);
        c.insert_addrs("b", Family::V4, (ip(2), false), 100, t0);
        c.insert_addrs("c", Family::V4, (ip(3), false), 100, t0 + S);
        assert_eq!(c.len(), 2);
        assert!(
            c.fresh("a", Family::V4, t0 + 2 * S).is_none(),
            "a expired first"
        );
        assert!(c.fresh("b", Family::V4, t0 + 2 * S).is_some());
        // a's successor: both live; the one expiring first goes.
        c.insert_addrs("d", Family::V4, (ip(4), false), 200, t0 + 2 * S);
        assert_eq!(c.len(), 2);
        assert!(c.fresh("b", Family::V4, t0 + 3 * S).is_none());
        assert!(c.fresh("d", Family::V4, t0 + 3 * S).is_some());
        // A bigger full cache drops the tenth expiring first in one go.
        let mut big = Cache::new(20, ttls());
        for i in 0..20u8 {
            let name = format!("n{i}");
            big.insert_addrs(&name, Family::V4, (ip(i), false), 100 + u32::from(i), t0);
        }
        big.insert_addrs("new", Family::V4, (ip(99), false), 100, t0);
        assert_eq!(big.len(), 19);
        assert!(big.fresh("n0", Family::V4, t0).is_none());
        assert!(big.fresh("n1", Family::V4, t0).is_none());
        assert!(big.fresh("n2", Family::V4, t0).is_some());
        assert!(big.fresh("new", Family::V4, t0).is_some());
        let mut off = Cache::new(0, ttls());
        off.insert_addrs("a", Family::V4, (ip(1), false), 10, t0);
        assert!(off.fresh("a", Family::V4, t0).is_none());
    }
}
