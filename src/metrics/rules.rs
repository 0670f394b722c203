//! Per-rule usage: `splicegate_tunnels_total{rule}` and
//! `splicegate_rule_bytes_total{rule,direction}`, where `rule` is an allowlist entry as the
//! configuration lists it, and the time each entry was last used.
//!
//! Each policy snapshot gets one [`RuleUsage`], built with it on the control thread: one row of
//! counters per entry, repeated once per stripe. A worker writes only the stripe of its own id
//! (modulo the stripe count), so workers do not share the cache lines they count on. A tunnel
//! keeps a [`RuleRef`] to the usage of the snapshot that allowed it, so its bytes keep counting
//! under its entry after a reload.
//!
//! [`RuleBook`] (control thread) keeps every snapshot's usage that is still referenced and sums
//! them by entry at scrape time. When a snapshot's usage is no longer referenced (replaced by a
//! reload and its last tunnel closed), its counts are folded into the book's totals of the
//! entries the current configuration still lists; the series of an entry a reload removed
//! disappear with the last tunnel it allowed (and start again from 0 if it is listed again,
//! which Prometheus treats as a counter reset). So the label set is bounded by the
//! configuration and the open tunnels, never by what clients ask.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The most stripes a usage table has (more workers share stripes; still correct, since the
/// counters are atomic).
const MAX_STRIPES: usize = 64;

/// One entry's counters in one stripe.
#[derive(Debug, Default)]
struct Cell {
    tunnels: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Unix time (seconds) of the last tunnel established; 0 = never.
    last_used: AtomicU64,
}

/// The counters of one policy snapshot's entries.
#[derive(Debug)]
pub struct RuleUsage {
    names: Vec<String>,
    stripes: usize,
    /// `cells[stripe * names.len() + rule]`.
    cells: Box<[Cell]>,
}

/// One entry's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleTotals {
    pub tunnels: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Unix time (seconds) of the last tunnel established; 0 = never.
    pub last_used: u64,
}

impl RuleTotals {
    fn add(&mut self, o: RuleTotals) {
        self.tunnels += o.tunnels;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
        self.last_used = self.last_used.max(o.last_used);
    }
}

impl RuleUsage {
    /// Counters for `names` (the policy's entries, by rule id), one row per stripe.
    pub fn new(names: Vec<String>) -> RuleUsage {
        let stripes = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_STRIPES);
        let cells = (0..names.len() * stripes)
            .map(|_| Cell::default())
            .collect();
        RuleUsage {
            names,
            stripes,
            cells,
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn cell(&self, worker: usize, rule: u32) -> Option<&Cell> {
        let rule = usize::try_from(rule).ok()?;
        if rule >= self.names.len() {
            return None;
        }
        self.cells
            .get((worker % self.stripes) * self.names.len() + rule)
    }

    /// A tunnel allowed by `rule` was established (its `200` sent) at `unix_now`.
    pub fn established(&self, worker: usize, rule: u32, unix_now: u64) {
        if let Some(c) = self.cell(worker, rule) {
            c.tunnels.fetch_add(1, Relaxed);
            c.last_used.fetch_max(unix_now, Relaxed);
        }
    }

    /// Bytes relayed for a tunnel of `rule`: `up` client -> upstream, `down` back.
    pub fn bytes(&self, worker: usize, rule: u32, up: u64, down: u64) {
        if let Some(c) = self.cell(worker, rule) {
            if up > 0 {
                c.bytes_up.fetch_add(up, Relaxed);
            }
            if down > 0 {
                c.bytes_down.fetch_add(down, Relaxed);
            }
        }
    }

    /// The totals of entry `rule`, summed over the stripes.
    pub fn totals(&self, rule: usize) -> RuleTotals {
        let mut t = RuleTotals::default();
        for s in 0..self.stripes {
            if let Some(c) = self.cells.get(s * self.names.len() + rule) {
                t.add(RuleTotals {
                    tunnels: c.tunnels.load(Relaxed),
                    bytes_up: c.bytes_up.load(Relaxed),
                    bytes_down: c.bytes_down.load(Relaxed),
                    last_used: c.last_used.load(Relaxed),
                });
            }
        }
        t
    }
}

/// A tunnel's entry: the usage table of the snapshot that allowed it, and the entry's index.
#[derive(Debug, Clone)]
pub struct RuleRef {
    pub usage: Arc<RuleUsage>,
    pub rule: u32,
}

impl RuleRef {
    /// The entry as the configuration lists it.
    pub fn name(&self) -> &str {
        usize::try_from(self.rule)
            .ok()
            .and_then(|i| self.usage.names.get(i))
            .map_or("", String::as_str)
    }
}

/// Every usage table still referenced, and the counts of those that are not (control thread).
#[derive(Debug, Default)]
pub struct RuleBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    /// The current snapshot's table last.
    tables: Vec<Arc<RuleUsage>>,
    /// Counts of tables no longer referenced, by entry name (entries still listed only).
    folded: HashMap<String, RuleTotals>,
}

impl RuleBook {
    /// A new snapshot's table (at start and on each reload).
    pub fn publish(&self, usage: &Arc<RuleUsage>) {
        let mut b = match self.inner.lock() {
            Ok(b) => b,
            Err(e) => e.into_inner(),
        };
        b.tables.push(Arc::clone(usage));
    }

    /// Every entry with its totals: the current configuration's entries in their order, then
    /// entries a reload removed that open tunnels still count under. Folds the tables nothing
    /// references any more.
    pub fn totals(&self) -> Vec<(String, RuleTotals)> {
        let mut b = match self.inner.lock() {
            Ok(b) => b,
            Err(e) => e.into_inner(),
        };
        let Book { tables, folded } = &mut *b;
        let Some(current) = tables.last().cloned() else {
            return Vec::new();
        };
        // Fold the tables only this book still holds (not the current one).
        let last = tables.len() - 1;
        let mut keep = Vec::with_capacity(tables.len());
        for (i, t) in tables.drain(..).enumerate() {
            if i != last && Arc::strong_count(&t) == 1 {
                for (r, name) in t.names.iter().enumerate() {
                    if current.names.contains(name) {
                        folded.entry(name.clone()).or_default().add(t.totals(r));
                    }
                }
            } else {
                keep.push(t);
            }
        }
        *tables = keep;
        folded.retain(|name, _| current.names.contains(name));
        let mut order: Vec<String> = Vec::new();
        let mut sums: HashMap<String, RuleTotals> = HashMap::new();
        for t in tables.iter().rev() {
            for (r, name) in t.names.iter().enumerate() {
                let e = sums.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    RuleTotals::default()
                });
                e.add(t.totals(r));
            }
        }
        for (name, f) in folded.iter() {
            if let Some(e) = sums.get_mut(name) {
                e.add(*f);
            }
        }
        order
            .into_iter()
            .map(|n| {
                let t = sums.get(&n).copied().unwrap_or_default();
                (n, t)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_sum_over_stripes_and_ignore_bad_ids() {
        let u = RuleUsage::new(names(&["a", "b"]));
        u.established(0, 1, 100);
        u.established(7, 1, 50);
        u.bytes(3, 1, 10, 20);
        u.bytes(3, 0, 1, 0);
        u.established(0, 2, 999);
        assert_eq!(
            u.totals(1),
            RuleTotals {
                tunnels: 2,
                bytes_up: 10,
                bytes_down: 20,
                last_used: 100
            }
        );
        assert_eq!(u.totals(0).bytes_up, 1);
        assert_eq!(u.totals(0).tunnels, 0);
    }

    #[test]
    fn a_reload_keeps_counts_of_kept_entries_and_drops_removed_ones() {
        let book = RuleBook::default();
        let old = Arc::new(RuleUsage::new(names(&["kept", "removed"])));
        book.publish(&old);
        old.established(0, 0, 10);
        old.established(0, 1, 10);
        let tunnel = RuleRef {
            usage: Arc::clone(&old),
            rule: 1,
        };
        let new = Arc::new(RuleUsage::new(names(&["new", "kept"])));
        book.publish(&new);
        drop(old);
        new.established(1, 1, 20);
        // A tunnel still counts under the removed entry: its series stays.
        let t = book.totals();
        let get = |t: &[(String, RuleTotals)], n: &str| t.iter().find(|(k, _)| k == n).map(|x| x.1);
        assert_eq!(get(&t, "kept").map(|x| x.tunnels), Some(2));
        assert_eq!(get(&t, "removed").map(|x| x.tunnels), Some(1));
        assert_eq!(get(&t, "new").map(|x| x.tunnels), Some(0));
        assert_eq!(tunnel.name(), "removed");
        // Its last tunnel closes: the old table folds; "kept" keeps its count.
        drop(tunnel);
        let t = book.totals();
        assert_eq!(get(&t, "kept").map(|x| x.tunnels), Some(2));
        assert_eq!(get(&t, "kept").map(|x| x.last_used), Some(20));
        assert_eq!(get(&t, "removed"), None);
        assert_eq!(t[0].0, "new", "the current configuration's order");
        // Folding happens once.
        assert_eq!(get(&book.totals(), "kept").map(|x| x.tunnels), Some(2));
    }
}
