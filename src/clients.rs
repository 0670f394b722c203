//! Open connections per client, shared by every worker, for `limits.max_connections_per_client`.
//!
//! `SO_REUSEPORT` spreads one client's connections over the workers, so a per-worker count would
//! let a client hold `workers` times its limit: the count is one map behind one mutex, touched
//! once when a connection is admitted and once when it ends, and only while the limit is on.
//! A client is its address, an IPv6 client its /64 (one host commonly holds a whole /64).
//!
//! A [`ClientHold`] is the counted connection: it is made only by [`ClientCounts::try_hold`]
//! and gives its count back when dropped, so every way a connection ends releases it exactly
//! once. The counts live in the settings snapshot and are carried over by a reload (like the
//! failed-login counts), so a reload neither forgets open connections nor lifts the limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Who a connection is counted against: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// Open connections by client, across the workers.
#[derive(Debug, Default)]
pub struct ClientCounts {
    open: Mutex<HashMap<ClientKey, usize>>,
}

impl ClientCounts {
    /// Count one more connection of `ip` if its client holds fewer than `max`; `None` when it
    /// is at the limit (nothing is counted then).
    pub fn try_hold(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientHold> {
        let key = ClientKey::of(ip);
        {
            let mut open = self.lock();
            let n = open.entry(key).or_insert(0);
            if *n >= max {
                if *n == 0 {
                    open.remove(&key);
                }
                return None;
            }
            *n += 1;
        }
        Some(ClientHold {
            counts: Arc::clone(self),
            key,
        })
    }

    /// Open connections counted for the client of `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }

    /// Clients with at least one counted connection.
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    /// A worker that panicked while holding the lock left consistent counts (each change is one
    /// statement), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, HashMap<ClientKey, usize>> {
        match self.open.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        }
    }

    fn release(&self, key: ClientKey) {
        let mut open = self.lock();
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

/// One counted connection; dropping it gives the count back.
#[derive(Debug)]
pub struct ClientHold {
    counts: Arc<ClientCounts>,
    key: ClientKey,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        self.counts.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn the_limit_holds_and_drops_give_back() {
        let counts = Arc::new(ClientCounts::default());
        let a = ip("192.0.2.7");
        let held: Vec<ClientHold> = (0..3).filter_map(|_| counts.try_hold(a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(
            counts.try_hold(a, 3).is_none(),
            "the fourth is over the limit"
        );
        assert_eq!(counts.open(a), 3, "a refusal counts nothing");
        let other = counts.try_hold(ip("192.0.2.8"), 3);
        assert!(other.is_some(), "another client still gets in");
        drop(held);
        assert_eq!(counts.open(a), 0);
        drop(other);
        assert_eq!(counts.clients(), 0, "no entry is left behind");
        assert!(counts.try_hold(a, 0).is_none());
        assert_eq!(counts.clients(), 0, "a refusal at 0 leaves no entry");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let counts = Arc::new(ClientCounts::default());
        let one = counts.try_hold(ip("2001:db8:1:2::1"), 2);
        let two = counts.try_hold(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), 2);
        assert!(one.is_some() && two.is_some());
        assert!(
            counts.try_hold(ip("2001:db8:1:2::99"), 2).is_none(),
            "a third address of the same /64 is the same client"
        );
        assert!(
            counts.try_hold(ip("2001:db8:1:3::1"), 2).is_some(),
            "the next /64 is another client"
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.7")),
            ClientKey::of(ip("192.0.2.7"))
        );
    }

    #[test]
    fn holds_from_many_threads_never_exceed_the_limit() {
        let counts = Arc::new(ClientCounts::default());
        let a = ip("198.51.100.1");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&counts);
                std::thread::spawn(move || {
                    (0..100)
                        .filter_map(|_| c.try_hold(a, 50))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in threads {
            match t.join() {
                Ok(h) => held.extend(h),
                Err(_) => panic!("a counting thread panicked"),
            }
        }
        assert_eq!(held.len(), 50);
        assert_eq!(counts.open(a), 50);
        drop(held);
        assert_eq!(counts.open(a), 0);
    }
}
