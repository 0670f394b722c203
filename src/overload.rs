//! The overload state: refuse new clients before a budget runs out, so the tunnels already open
//! keep working (Envoy's overload manager, reduced to the two budgets a tunnel costs).
//!
//! Two resources are watched, each against its own budget:
//! - **connections**: open client connections against `limits.max_connections`;
//! - **memory**: the process's resident memory plus the kernel pages held by the pipes tunnels
//!   have lent (`pipes in use x pipe capacity`), against `limits.memory_budget` (off when 0).
//!
//! The control thread samples both every `limits.overload_sample_interval` and feeds the sample
//! to [`Hysteresis`]: engaged once either resource reaches `overload_engage_percent` of its
//! budget, released only once both are below `overload_release_percent`. Between the two the
//! state stays as it was, so a gateway hovering at the threshold does not flap. The state is
//! published through [`Overload`], an atomic that the workers read on each accept (no lock, no
//! message), `/readyz` reads to answer 503, and `/metrics` reads for
//! `splicegate_overload_active`.
//!
//! [`Hysteresis`] is pure (no clock, no I/O); [`memory_now`] is the one function that reads
//! `/proc`, and only the control thread calls it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// A budget the overload state watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections,
    Memory,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Connections, Resource::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Memory => "memory",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Resource::Connections => 1,
            Resource::Memory => 2,
        }
    }
}

/// The resources at or past their engage threshold while the state is engaged (empty when
/// released). A small `Copy` set of [`Resource`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Engaged(u8);

impl Engaged {
    pub const NONE: Engaged = Engaged(0);

    pub fn is_active(self) -> bool {
        self.0 != 0
    }

    pub fn contains(self, r: Resource) -> bool {
        self.0 & r.bit() != 0
    }

    fn with(self, r: Resource) -> Engaged {
        Engaged(self.0 | r.bit())
    }

    /// `"connections"`, `"memory"`, `"connections,memory"` or `"none"`: for events and `/readyz`.
    pub fn names(self) -> &'static str {
        match (
            self.contains(Resource::Connections),
            self.contains(Resource::Memory),
        ) {
            (true, true) => "connections,memory",
            (true, false) => "connections",
            (false, true) => "memory",
            (false, false) => "none",
        }
    }
}

/// One reading of both resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Open client connections, across every worker (a retiring engine's included).
    pub connections: u64,
    /// `limits.max_connections`.
    pub max_connections: u64,
    /// Bytes counted against the memory budget ([`MemoryUse::total`]).
    pub memory: u64,
    /// `limits.memory_budget`; 0 = no memory budget.
    pub memory_budget: u64,
}

/// The thresholds, in percent of each budget (`limits.overload_engage_percent` and
/// `limits.overload_release_percent`; the configuration guarantees `release < engage <= 100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub engage: u8,
    pub release: u8,
}

/// What a sample changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The state engaged, because of these resources.
    Engaged(Engaged),
    /// The state was released: every resource is below the release threshold.
    Released,
}

/// The overload state machine. Written by the control thread only.
#[derive(Debug, Default)]
pub struct Hysteresis {
    state: Engaged,
}

impl Hysteresis {
    pub fn state(&self) -> Engaged {
        self.state
    }

    /// Apply one sample; `Some` only when the state flips (one event per engage and release,
    /// however many samples it lasts). While engaged, the set of resources named is every one
    /// not yet below the release threshold; it changes without a change being reported.
    pub fn observe(&mut self, s: Sample, t: Thresholds) -> Option<Change> {
        let budgets = [
            (Resource::Connections, s.connections, s.max_connections),
            (Resource::Memory, s.memory, s.memory_budget),
        ];
        let mut over = Engaged::NONE;
        let mut held = Engaged::NONE;
        for (r, used, budget) in budgets {
            if reaches(used, budget, t.engage) {
                over = over.with(r);
            }
            if !below(used, budget, t.release) {
                held = held.with(r);
            }
        }
        if !self.state.is_active() {
            if over.is_active() {
                self.state = over;
                return Some(Change::Engaged(over));
            }
            return None;
        }
        if !held.is_active() {
            self.state = Engaged::NONE;
            return Some(Change::Released);
        }
        // Still engaged: name the resources that keep it so (every one not yet below the
        // release threshold, which includes any at or past the engage threshold).
        self.state = held;
        None
    }
}

/// `used` is at least `percent` of `budget` (never, without a budget).
fn reaches(used: u64, budget: u64, percent: u8) -> bool {
    budget > 0 && u128::from(used) * 100 >= u128::from(budget) * u128::from(percent)
}

/// `used` is under `percent` of `budget` (always, without a budget).
fn below(used: u64, budget: u64, percent: u8) -> bool {
    budget == 0 || u128::from(used) * 100 < u128::from(budget) * u128::from(percent)
}

/// The published state and the figures behind it. Shared by the control thread (the only
/// writer), the workers (read on each accept), `/readyz` and `/metrics`. Carried from one
/// settings snapshot to the next, so a reload neither clears nor forks it.
#[derive(Debug, Default)]
pub struct Overload {
    engaged: AtomicU8,
    rss: AtomicU64,
    pipes: AtomicU64,
    budget: AtomicU64,
}

impl Overload {
    /// Whether new clients are refused. One relaxed load: a worker may act on a state one
    /// sample old, which the sampling interval already allows.
    pub fn active(&self) -> bool {
        self.engaged.load(Relaxed) != 0
    }

    pub fn engaged(&self) -> Engaged {
        Engaged(self.engaged.load(Relaxed))
    }

    pub fn publish(&self, state: Engaged, memory: MemoryUse, budget: u64) {
        self.rss.store(memory.rss, Relaxed);
        self.pipes.store(memory.pipes, Relaxed);
        self.budget.store(budget, Relaxed);
        self.engaged.store(state.0, Relaxed);
    }

    /// The last sample's memory figures.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            rss: self.rss.load(Relaxed),
            pipes: self.pipes.load(Relaxed),
        }
    }

    /// `limits.memory_budget` as of the last sample (0 = off).
    pub fn budget(&self) -> u64 {
        self.budget.load(Relaxed)
    }
}

/// Memory counted against `limits.memory_budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUse {
    /// Resident set of the process (`/proc/self/statm`, second field, times the page size).
    pub rss: u64,
    /// Capacity of the pipes lent to tunnels: kernel pages, not in the RSS.
    pub pipes: u64,
}

impl MemoryUse {
    pub fn total(self) -> u64 {
        self.rss.saturating_add(self.pipes)
    }
}

/// This process's resident memory in bytes, or `None` without `/proc`.
pub fn rss_now() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm(&text, rustix::param::page_size())
}

/// The resident pages of a `statm` line, in bytes.
fn parse_statm(text: &str, page: usize) -> Option<u64> {
    let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(u64::try_from(page).ok()?)
}

/// The memory counted now, given the pipe capacity the workers report as lent; `None` when the
/// resident set cannot be read (no `/proc`), so the caller can say so rather than count 0.
pub fn memory_now(pipe_bytes: u64) -> Option<MemoryUse> {
    Some(MemoryUse {
        rss: rss_now()?,
        pipes: pipe_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        engage: 95,
        release: 90,
    };

    fn conns(n: u64) -> Sample {
        Sample {
            connections: n,
            max_connections: 100,
            memory: 0,
            memory_budget: 0,
        }
    }

    fn mem(bytes: u64) -> Sample {
        Sample {
            connections: 0,
            max_connections: 100,
            memory: bytes,
            memory_budget: 1000,
        }
    }

    #[test]
    fn engages_at_the_engage_threshold_and_not_below() {
        let mut h = Hysteresis::default();
        assert_eq!(h.observe(conns(94), T), None);
        assert!(!h.state().is_active());
        let c = h.observe(conns(95), T);
        assert_eq!(
            c,
            Some(Change::Engaged(Engaged::NONE.with(Resource::Connections)))
        );
        assert!(h.state().contains(Resource::Connections));
        assert!(!h.state().contains(Resource::Memory));
    }

    #[test]
    fn between_the_thresholds_the_state_stays_as_it_was() {
        // Rising through 90..95 does not engage.
        let mut h = Hysteresis::default();
        for n in 90..95 {
            assert_eq!(h.observe(conns(n), T), None, "{n}");
            assert!(!h.state().is_active(), "{n}");
        }
        // Engaged at 95; falling through 94..90 keeps it engaged, with no repeated event.
        assert!(matches!(h.observe(conns(97), T), Some(Change::Engaged(_))));
        assert_eq!(h.observe(conns(99), T), None, "one event per engagement");
        for n in (90..95).rev() {
            assert_eq!(h.observe(conns(n), T), None, "{n}");
            assert!(h.state().is_active(), "{n}");
        }
        assert_eq!(h.observe(conns(89), T), Some(Change::Released));
        assert!(!h.state().is_active());
        assert_eq!(h.observe(conns(89), T), None, "one event per release");
    }

    #[test]
    fn memory_engages_and_release_needs_both_below() {
        let mut h = Hysteresis::default();
        assert_eq!(h.observe(mem(949), T), None);
        let c = h.observe(mem(950), T);
        assert_eq!(
            c,
            Some(Change::Engaged(Engaged::NONE.with(Resource::Memory)))
        );
        // Memory falls below 90% but connections sit between the thresholds: both must be
        // below the release threshold, so it stays engaged, now held by connections.
        let s = Sample {
            connections: 92,
            max_connections: 100,
            memory: 899,
            memory_budget: 1000,
        };
        assert_eq!(h.observe(s, T), None);
        assert_eq!(h.state().names(), "connections");
        assert_eq!(
            h.observe(
                Sample {
                    connections: 89,
                    ..s
                },
                T
            ),
            Some(Change::Released)
        );
        // Both past: engaged by both; memory falls back, connections hold it.
        let both = Sample {
            connections: 96,
            max_connections: 100,
            memory: 960,
            memory_budget: 1000,
        };
        assert!(
            matches!(h.observe(both, T), Some(Change::Engaged(e)) if e.names() == "connections,memory")
        );
        let one = Sample {
            memory: 100,
            connections: 91,
            ..both
        };
        assert_eq!(h.observe(one, T), None);
        assert_eq!(h.state().names(), "connections");
        assert_eq!(
            h.observe(
                Sample {
                    connections: 89,
                    ..one
                },
                T
            ),
            Some(Change::Released)
        );
    }

    #[test]
    fn without_a_budget_a_resource_never_engages() {
        let mut h = Hysteresis::default();
        let s = Sample {
            connections: 0,
            max_connections: 100,
            memory: u64::MAX,
            memory_budget: 0,
        };
        assert_eq!(h.observe(s, T), None);
        // And the arithmetic does not overflow at the top of the range.
        let s = Sample {
            connections: u64::MAX,
            max_connections: u64::MAX,
            memory: 0,
            memory_budget: 0,
        };
        assert!(matches!(h.observe(s, T), Some(Change::Engaged(_))));
    }

    #[test]
    fn small_budgets_round_up_to_the_whole_connection() {
        // 95% of 2 connections is 1.9: engaged at 2, not at 1.
        let t = |n| Sample {
            connections: n,
            max_connections: 2,
            memory: 0,
            memory_budget: 0,
        };
        let mut h = Hysteresis::default();
        assert_eq!(h.observe(t(1), T), None);
        assert!(h.observe(t(2), T).is_some());
        assert_eq!(h.observe(t(1), T), Some(Change::Released));
    }

    #[test]
    fn published_state_is_what_workers_read() {
        let o = Overload::default();
        assert!(!o.active());
        let m = MemoryUse { rss: 7, pipes: 3 };
        o.publish(Engaged::NONE.with(Resource::Memory), m, 10);
        assert!(o.active());
        assert_eq!(o.engaged().names(), "memory");
        assert_eq!((o.memory().total(), o.budget()), (10, 10));
        o.publish(Engaged::NONE, m, 10);
        assert!(!o.active());
    }

    #[test]
    fn statm_is_parsed_and_read() {
        assert_eq!(parse_statm("100 25 5 1 0 30 0\n", 4096), Some(25 * 4096));
        assert_eq!(parse_statm("100\n", 4096), None);
        assert_eq!(parse_statm("100 x 5\n", 4096), None);
        assert_eq!(parse_statm("", 4096), None);
        let rss = rss_now().unwrap_or(0);
        assert!(
            rss > 1 << 20,
            "a running test binary has over 1 MiB resident: {rss}"
        );
    }
}
