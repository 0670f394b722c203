//! The rate limit on refusal events, per (client address, reason).
//!
//! A refusal here is any request answered with an error: refused by policy ([`Reject`], counted
//! in `splicegate_rejections_total`) or because the upstream could not be reached
//! ([`ErrorKind`], counted in `splicegate_errors_total`).
//!
//! A client that is refused again and again (a misconfigured agent in a retry loop, a scan)
//! would otherwise write one event per attempt, and journald's own rate limit would then drop
//! events at random, the ones that matter included. Per key, the first `burst` refusals of a
//! window are logged; the rest are only counted, and when the window ends one summary with the
//! number suppressed is logged. Counters (`splicegate_rejections_total`) count every refusal
//! whatever this decides, so for each key the logged events plus the suppressed counts equal
//! the counter.
//!
//! A window opens with the first refusal of its key and lasts `window`. The table holds at most
//! `max_keys` keys; a new key past that evicts the oldest, whose summary is reported at once.
//!
//! Pure: no clock, no logging. The engine passes `now`, logs what [`RefusalLimiter::admit`]
//! lets through and every [`Summary`] it is handed, and calls [`RefusalLimiter::sweep`] by
//! [`RefusalLimiter::next_deadline`], so a summary is logged when its window ends even if that
//! client never comes back. One limiter per worker: the limit applies per worker.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{ErrorKind, Reject};

/// `logging.refusal_burst`, `logging.refusal_window`, `logging.refusal_table_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalBudget {
    /// Events logged per key and window; at least 1.
    pub burst: u32,
    /// How long a window lasts from its key's first refusal.
    pub window: Duration,
    /// Keys tracked at once; at least 1.
    pub max_keys: usize,
}

impl RefusalBudget {
    /// The default `refusal_burst`.
    pub const DEFAULT_BURST: u32 = 10;
    /// The default `refusal_window`.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
    /// The default `refusal_table_size`.
    pub const DEFAULT_MAX_KEYS: usize = 4096;
}

impl Default for RefusalBudget {
    fn default() -> RefusalBudget {
        RefusalBudget {
            burst: RefusalBudget::DEFAULT_BURST,
            window: RefusalBudget::DEFAULT_WINDOW,
            max_keys: RefusalBudget::DEFAULT_MAX_KEYS,
        }
    }
}

/// What refusals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub client: IpAddr,
    pub reason: Cause,
}

/// Why a request was refused: the label of the counter it was counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    Reject(Reject),
    Error(ErrorKind),
}

impl Cause {
    /// The `reason` of the events (the counter's label).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Reject(r) => r.as_str(),
            Cause::Error(k) => k.as_str(),
        }
    }
}

impl From<Reject> for Cause {
    fn from(r: Reject) -> Cause {
        Cause::Reject(r)
    }
}

impl From<ErrorKind> for Cause {
    fn from(k: ErrorKind) -> Cause {
        Cause::Error(k)
    }
}

/// A window that ended (or was evicted) with refusals that were not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub key: Key,
    /// The event ID of the key's first refusal in the window.
    pub event_id: u16,
    /// Refusals counted but not logged.
    pub suppressed: u64,
    /// When the window opened.
    pub opened: Instant,
    /// Reported early because the table was full.
    pub evicted: bool,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    event_id: u16,
    logged: u32,
    suppressed: u64,
}

/// One worker's table. Written and read only by its worker.
#[derive(Debug, Default)]
pub struct RefusalLimiter {
    windows: HashMap<Key, Window>,
    /// Keys in the order their windows opened (so also the order they end, all windows lasting
    /// the same `window`): the oldest is evicted first and swept first.
    order: VecDeque<(Instant, Key)>,
    /// The window length of the last call, for [`RefusalLimiter::next_deadline`].
    window: Duration,
}

impl RefusalLimiter {
    pub fn new() -> RefusalLimiter {
        RefusalLimiter::default()
    }

    /// One refusal of `key` at `now`: whether to log its event. Summaries of windows that have
    /// ended by `now`, and of a key evicted to make room, are appended to `ended` first.
    pub fn admit(
        &mut self,
        now: Instant,
        key: Key,
        event_id: u16,
        budget: &RefusalBudget,
        ended: &mut Vec<Summary>,
    ) -> bool {
        self.sweep(now, budget, ended);
        if !self.windows.contains_key(&key) {
            while self.windows.len() >= budget.max_keys.max(1) {
                if !self.close_oldest(true, ended) {
                    break;
                }
            }
            self.order.push_back((now, key));
        }
        let window = self.windows.entry(key).or_insert(Window {
            opened: now,
            event_id,
            logged: 0,
            suppressed: 0,
        });
        if window.logged < budget.burst {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Closes every window that has ended by `now`, appending the summary of each that
    /// suppressed something to `ended`.
    pub fn sweep(&mut self, now: Instant, budget: &RefusalBudget, ended: &mut Vec<Summary>) {
        self.window = budget.window;
        while let Some((opened, _)) = self.order.front() {
            if now < *opened + budget.window {
                break;
            }
            self.close_oldest(false, ended);
        }
    }

    /// When the next window ends (the next [`RefusalLimiter::sweep`] is due), if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.front().map(|(opened, _)| *opened + self.window)
    }

    /// Closes every window now (on shutdown), appending summaries to `ended`.
    pub fn flush(&mut self, ended: &mut Vec<Summary>) {
        while self.close_oldest(false, ended) {}
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Removes the oldest window; false when there is none.
    fn close_oldest(&mut self, evicted: bool, ended: &mut Vec<Summary>) -> bool {
        let Some((opened, key)) = self.order.pop_front() else {
            return false;
        };
        // The queue and the map are changed together, so the front is always a live window;
        // checking `opened` keeps a stale entry from closing a newer window of the same key.
        if self.windows.get(&key).is_some_and(|w| w.opened == opened) {
            if let Some(w) = self.windows.remove(&key) {
                if w.suppressed > 0 {
                    ended.push(Summary {
                        key,
                        event_id: w.event_id,
                        suppressed: w.suppressed,
                        opened: w.opened,
                        evicted,
                    });
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn key(last: u8, reason: Reject) -> Key {
        Key {
            client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
            reason: reason.into(),
        }
    }

    fn budget(burst: u32, window_s: u64, max_keys: usize) -> RefusalBudget {
        RefusalBudget {
            burst,
            window: Duration::from_secs(window_s),
            max_keys,
        }
    }

    /// Feeds `n` refusals of `k` at `at`; returns how many may be logged.
    fn feed(
        l: &mut RefusalLimiter,
        at: Instant,
        k: Key,
        n: u32,
        b: &RefusalBudget,
        ended: &mut Vec<Summary>,
    ) -> u32 {
        (0..n).filter(|_| l.admit(at, k, 105, b, ended)).count() as u32
    }

    #[test]
    fn defaults() {
        let d = RefusalBudget::default();
        assert_eq!((d.burst, d.window, d.max_keys), (10, 60 * SECOND, 4096));
    }

    #[test]
    fn burst_then_one_summary_at_the_window_end() {
        let b = budget(10, 60, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let k = key(1, Reject::HostNotAllowed);
        let mut ended = Vec::new();
        assert_eq!(feed(&mut l, t0, k, 30, &b, &mut ended), 10);
        assert!(ended.is_empty());
        assert_eq!(l.next_deadline(), Some(t0 + 60 * SECOND));
        // Not before the window ends.
        l.sweep(t0 + 59 * SECOND, &b, &mut ended);
        assert!(ended.is_empty());
        // At the end, with no further refusal.
        l.sweep(t0 + 60 * SECOND, &b, &mut ended);
        assert_eq!(
            ended,
            vec![Summary {
                key: k,
                event_id: 105,
                suppressed: 20,
                opened: t0,
                evicted: false
            }]
        );
        assert!(l.is_empty());
        assert_eq!(l.next_deadline(), None);
        // A new window logs again.
        ended.clear();
        assert_eq!(feed(&mut l, t0 + 61 * SECOND, k, 3, &b, &mut ended), 3);
    }

    #[test]
    fn logged_plus_suppressed_equals_refusals() {
        let b = budget(4, 10, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let k = key(1, Reject::Malformed);
        let mut ended = Vec::new();
        let mut logged = 0u64;
        // 1000 refusals spread over 95 s: several windows.
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 95);
            logged += u64::from(l.admit(now, k, 104, &b, &mut ended));
        }
        l.flush(&mut ended);
        let suppressed: u64 = ended.iter().map(|s| s.suppressed).sum();
        assert_eq!(logged + suppressed, 1000);
        assert_eq!(ended.len(), 10, "one summary per 10 s window: {ended:?}");
        assert_eq!(logged, 40);
    }

    #[test]
    fn rejections_and_errors_are_distinct_causes() {
        let b = budget(1, 60, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let refused = Key {
            client,
            reason: Reject::HostNotAllowed.into(),
        };
        let failed = Key {
            client,
            reason: ErrorKind::DnsFailure.into(),
        };
        assert!(l.admit(t0, refused, 105, &b, &mut ended));
        assert!(l.admit(t0, failed, 403, &b, &mut ended));
        assert!(!l.admit(t0, failed, 403, &b, &mut ended));
        l.flush(&mut ended);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].key.reason.as_str(), "dns_failure");
        assert_eq!(ended[0].event_id, 403);
    }

    #[test]
    fn a_window_without_suppression_ends_silently() {
        let b = budget(10, 60, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        assert_eq!(
            feed(
                &mut l,
                t0,
                key(1, Reject::PortNotAllowed),
                10,
                &b,
                &mut ended
            ),
            10
        );
        l.sweep(t0 + 60 * SECOND, &b, &mut ended);
        assert!(ended.is_empty());
        assert!(l.is_empty(), "the window is closed all the same");
    }

    #[test]
    fn keys_are_counted_separately() {
        let b = budget(2, 60, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        let a = key(1, Reject::HostNotAllowed);
        let other_reason = key(1, Reject::PortNotAllowed);
        let other_client = key(2, Reject::HostNotAllowed);
        assert_eq!(feed(&mut l, t0, a, 5, &b, &mut ended), 2);
        assert_eq!(feed(&mut l, t0, other_reason, 5, &b, &mut ended), 2);
        assert_eq!(feed(&mut l, t0, other_client, 1, &b, &mut ended), 1);
        l.sweep(t0 + 60 * SECOND, &b, &mut ended);
        let mut got: Vec<(Key, u64)> = ended.iter().map(|s| (s.key, s.suppressed)).collect();
        got.sort_by_key(|(k, _)| (k.client, k.reason.as_str()));
        assert_eq!(got, vec![(a, 3), (other_reason, 3)]);
    }

    #[test]
    fn a_late_refusal_reports_the_old_window_first() {
        let b = budget(1, 10, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let k = key(1, Reject::NotConnect);
        let mut ended = Vec::new();
        assert_eq!(feed(&mut l, t0, k, 3, &b, &mut ended), 1);
        // No sweep ran: the next refusal closes the old window before opening a new one.
        assert!(l.admit(t0 + 11 * SECOND, k, 104, &b, &mut ended));
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].suppressed, ended[0].opened), (2, t0));
        assert_eq!(l.next_deadline(), Some(t0 + 21 * SECOND));
    }

    #[test]
    fn the_table_is_bounded_and_eviction_reports() {
        let b = budget(1, 60, 3);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        for i in 0..3u8 {
            let at = t0 + u32::from(i) * SECOND;
            assert_eq!(
                feed(
                    &mut l,
                    at,
                    key(i, Reject::ClientAuth),
                    1 + u32::from(i),
                    &b,
                    &mut ended
                ),
                1
            );
        }
        assert_eq!(l.len(), 3);
        assert!(ended.is_empty());
        // A fourth key evicts the oldest (key 0, nothing suppressed: no summary), a fifth the
        // next (key 1, one suppressed: reported at once).
        feed(
            &mut l,
            t0 + 4 * SECOND,
            key(3, Reject::ClientAuth),
            1,
            &b,
            &mut ended,
        );
        assert!(ended.is_empty());
        feed(
            &mut l,
            t0 + 5 * SECOND,
            key(4, Reject::ClientAuth),
            1,
            &b,
            &mut ended,
        );
        assert_eq!(l.len(), 3);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].key, key(1, Reject::ClientAuth));
        assert_eq!((ended[0].suppressed, ended[0].evicted), (1, true));
        // Thousands of distinct clients never grow it past the bound.
        for i in 0..5000u32 {
            let k = Key {
                client: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                reason: Reject::ClientAuth.into(),
            };
            l.admit(t0 + 6 * SECOND, k, 105, &b, &mut ended);
            assert!(l.len() <= 3);
        }
        // A smaller bound after a reload applies at the next new key.
        let smaller = budget(1, 60, 1);
        feed(
            &mut l,
            t0 + 7 * SECOND,
            key(9, Reject::ClientAuth),
            1,
            &smaller,
            &mut ended,
        );
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn sweep_deadline_follows_the_oldest_window() {
        let b = budget(1, 10, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        feed(&mut l, t0, key(1, Reject::TlsParse), 2, &b, &mut ended);
        feed(
            &mut l,
            t0 + 4 * SECOND,
            key(2, Reject::TlsParse),
            2,
            &b,
            &mut ended,
        );
        assert_eq!(l.next_deadline(), Some(t0 + 10 * SECOND));
        l.sweep(t0 + 10 * SECOND, &b, &mut ended);
        assert_eq!(ended.len(), 1);
        assert_eq!(l.next_deadline(), Some(t0 + 14 * SECOND));
        l.sweep(t0 + 14 * SECOND, &b, &mut ended);
        assert_eq!(ended.len(), 2);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn flush_reports_every_open_window() {
        let b = budget(1, 60, 100);
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        feed(&mut l, t0, key(1, Reject::SniMismatch), 4, &b, &mut ended);
        feed(&mut l, t0, key(2, Reject::SniMismatch), 1, &b, &mut ended);
        l.flush(&mut ended);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].suppressed, 3);
        assert!(l.is_empty());
    }
}
