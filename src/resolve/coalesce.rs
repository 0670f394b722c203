//! One query per name and record type in flight, and the rule that decides when the lookups
//! waiting on a name are answered.
//!
//! [`Inflight`] records which (name, family) queries are outstanding and since when: a lookup
//! that finds its query outstanding waits for it instead of sending its own. [`Job`] gathers the
//! lookups waiting for one name and what each family has produced so far.
//!
//! The answer rule ([`Job::decide`]), A and AAAA being asked in parallel:
//! - both families have a result: answer with the IPv4 addresses then the IPv6 ones; with none,
//!   `NotFound` if both said NXDOMAIN/NODATA, else `TimedOut` if a query timed out, else
//!   `Failed`;
//! - one family has addresses and the other's query has been outstanding for at least the
//!   resolution delay (RFC 8305 §3, 50 ms by default): answer with the addresses at hand;
//! - otherwise wait. A failing family never holds back a good one beyond the resolution delay.
//!
//! Nothing here reads the clock: every method takes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::cache::Family;

/// Outstanding queries: (name, family) -> when sent.
#[derive(Debug, Default)]
pub struct Inflight {
    sent: HashMap<String, [Option<Instant>; 2]>,
}

impl Inflight {
    /// Mark a query as sent; false if one is already outstanding (the caller then waits for it).
    pub fn begin(&mut self, name: &str, family: Family, now: Instant) -> bool {
        let slot = self.sent.entry(name.to_owned()).or_default();
        if slot[family.index()].is_some() {
            return false;
        }
        slot[family.index()] = Some(now);
        true
    }

    pub fn end(&mut self, name: &str, family: Family) {
        if let Some(slot) = self.sent.get_mut(name) {
            slot[family.index()] = None;
            if slot.iter().all(Option::is_none) {
                self.sent.remove(name);
            }
        }
    }

    /// When the outstanding query for `name`/`family` was sent.
    pub fn since(&self, name: &str, family: Family) -> Option<Instant> {
        self.sent.get(name).and_then(|s| s[family.index()])
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.sent.values().flatten().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one family produced for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// Addresses (never empty); `stale`: served from an expired answer.
    Addrs {
        ips: Vec<IpAddr>,
        private_link: bool,
        stale: bool,
    },
    /// NXDOMAIN or NODATA.
    NotFound,
    /// SERVFAIL, REFUSED or no usable name server, with nothing stale to use.
    Failed,
    /// No answer in time, with nothing stale to use.
    TimedOut,
}

/// The decision for a job's lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Addrs {
        ips: Vec<IpAddr>,
        /// Every family that contributed came through a `privatelink.` CNAME chain.
        private_link: bool,
        /// At least one family was served stale.
        stale: bool,
    },
    NotFound,
    Failed,
    TimedOut,
}

/// The lookups waiting for one name.
#[derive(Debug)]
pub struct Job<W> {
    pub waiters: Vec<W>,
    parts: [Option<Got>; 2],
}

impl<W> Job<W> {
    /// A job whose families already known (fresh in the cache) are given.
    pub fn new(v4: Option<Got>, v6: Option<Got>) -> Job<W> {
        Job {
            waiters: Vec::new(),
            parts: [v4, v6],
        }
    }

    /// Whether `family` still waits for a result.
    pub fn waiting(&self, family: Family) -> bool {
        self.parts[family.index()].is_none()
    }

    /// Record `family`'s result (the first one wins).
    pub fn set(&mut self, family: Family, got: Got) {
        let part = &mut self.parts[family.index()];
        if part.is_none() {
            *part = Some(got);
        }
    }

    /// The answer rule (module documentation). `sent` gives when each family's outstanding
    /// query was sent.
    pub fn decide(
        &self,
        now: Instant,
        sent: impl Fn(Family) -> Option<Instant>,
        delay: Duration,
    ) -> Option<Decision> {
        match (&self.parts[0], &self.parts[1]) {
            (Some(a), Some(b)) => Some(combine(&[a, b])),
            (Some(got @ Got::Addrs { .. }), None) => {
                waited(now, sent(Family::V6), delay).then(|| combine(&[got]))
            }
            (None, Some(got @ Got::Addrs { .. })) => {
                waited(now, sent(Family::V4), delay).then(|| combine(&[got]))
            }
            _ => None,
        }
    }

    /// When [`Job::decide`] may change its mind without a new result: the resolution delay of a
    /// family waited for while the other has addresses.
    pub fn delay_deadline(
        &self,
        sent: impl Fn(Family) -> Option<Instant>,
        delay: Duration,
    ) -> Option<Instant> {
        match (&self.parts[0], &self.parts[1]) {
            (Some(Got::Addrs { .. }), None) => sent(Family::V6).map(|t| t + delay),
            (None, Some(Got::Addrs { .. })) => sent(Family::V4).map(|t| t + delay),
            _ => None,
        }
    }
}

fn waited(now: Instant, sent: Option<Instant>, delay: Duration) -> bool {
    sent.is_none_or(|t| now.saturating_duration_since(t) >= delay)
}

fn combine(parts: &[&Got]) -> Decision {
    let mut ips = Vec::new();
    let mut private_link = true;
    let mut stale = false;
    let mut failed = false;
    let mut timed_out = false;
    for p in parts {
        match p {
            Got::Addrs {
                ips: i,
                private_link: p,
                stale: s,
            } => {
                ips.extend_from_slice(i);
                private_link &= *p;
                stale |= *s;
            }
            Got::NotFound => {}
            Got::Failed => failed = true,
            Got::TimedOut => timed_out = true,
        }
    }
    if !ips.is_empty() {
        Decision::Addrs {
            ips,
            private_link,
            stale,
        }
    } else if timed_out {
        Decision::TimedOut
    } else if failed {
        Decision::Failed
    } else {
        Decision::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MS: Duration = Duration::from_millis(1);

    fn v4() -> Got {
        Got::Addrs {
            ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
            private_link: true,
            stale: false,
        }
    }

    fn v6(stale: bool) -> Got {
        Got::Addrs {
            ips: vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            private_link: false,
            stale,
        }
    }

    #[test]
    fn one_query_per_name_and_family() {
        let t0 = Instant::now();
        let mut f = Inflight::default();
        assert!(f.begin("n", Family::V4, t0));
        assert!(!f.begin("n", Family::V4, t0 + MS), "coalesced");
        assert!(f.begin("n", Family::V6, t0 + MS));
        assert!(f.begin("m", Family::V4, t0));
        assert_eq!(f.since("n", Family::V4), Some(t0));
        assert_eq!(f.len(), 3);
        f.end("n", Family::V4);
        assert_eq!(f.since("n", Family::V4), None);
        assert!(f.begin("n", Family::V4, t0 + 2 * MS));
    }

    #[test]
    fn both_families_answered_combine_v4_first() {
        let t0 = Instant::now();
        let mut j: Job<()> = Job::new(None, None);
        let sent = |_| Some(t0);
        assert_eq!(j.decide(t0, sent, 50 * MS), None);
        j.set(Family::V6, v6(true));
        j.set(Family::V4, v4());
        let Some(Decision::Addrs {
            ips,
            private_link,
            stale,
        }) = j.decide(t0, sent, 50 * MS)
        else {
            panic!("expected addresses");
        };
        assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
        assert!(
            !private_link,
            "only when every contributing family passed privatelink"
        );
        assert!(stale);
    }

    #[test]
    fn addresses_wait_for_the_other_family_only_the_resolution_delay() {
        let t0 = Instant::now();
        let mut j: Job<()> = Job::new(None, None);
        j.set(Family::V4, v4());
        let sent = |_| Some(t0);
        assert_eq!(j.decide(t0 + 49 * MS, sent, 50 * MS), None);
        assert_eq!(j.delay_deadline(sent, 50 * MS), Some(t0 + 50 * MS));
        assert!(matches!(
            j.decide(t0 + 50 * MS, sent, 50 * MS),
            Some(Decision::Addrs { .. })
        ));
        // A delay of zero answers with the first family at once.
        assert!(j.decide(t0, sent, Duration::ZERO).is_some());
        // The reverse: AAAA first, A silent.
        let mut j: Job<()> = Job::new(None, Some(v6(false)));
        assert_eq!(j.decide(t0 + 10 * MS, sent, 50 * MS), None);
        assert!(j.decide(t0 + 60 * MS, sent, 50 * MS).is_some());
        j.set(Family::V4, Got::Failed);
        assert!(matches!(
            j.decide(t0, sent, 50 * MS),
            Some(Decision::Addrs { .. })
        ));
    }

    #[test]
    fn a_failure_waits_for_the_other_family() {
        let t0 = Instant::now();
        let sent = |_| Some(t0);
        let mut j: Job<()> = Job::new(Some(Got::Failed), None);
        assert_eq!(j.decide(t0 + 10_000 * MS, sent, 50 * MS), None);
        assert_eq!(j.delay_deadline(sent, 50 * MS), None);
        j.set(Family::V6, Got::NotFound);
        assert_eq!(j.decide(t0, sent, 50 * MS), Some(Decision::Failed));
        let j: Job<()> = Job::new(Some(Got::NotFound), Some(Got::NotFound));
        assert_eq!(j.decide(t0, sent, 50 * MS), Some(Decision::NotFound));
        let j: Job<()> = Job::new(Some(Got::Failed), Some(Got::TimedOut));
        assert_eq!(j.decide(t0, sent, 50 * MS), Some(Decision::TimedOut));
        let j: Job<()> = Job::new(Some(Got::NotFound), Some(Got::TimedOut));
        assert_eq!(j.decide(t0, sent, 50 * MS), Some(Decision::TimedOut));
    }

    #[test]
    fn first_result_wins() {
        let mut j: Job<()> = Job::new(None, None);
        j.set(Family::V4, Got::Failed);
        j.set(Family::V4, v4());
        assert!(!j.waiting(Family::V4));
        assert!(j.waiting(Family::V6));
        j.set(Family::V6, Got::NotFound);
        assert_eq!(
            j.decide(Instant::now(), |_| None, MS),
            Some(Decision::Failed)
        );
    }
}
