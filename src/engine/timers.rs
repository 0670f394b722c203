//! Owns the worker's connection deadlines: one entry per connection, updated in place.
//!
//! An indexed binary min-heap keyed by connection slot. Each phase of a connection *sets* its
//! slot's deadline (moving the one entry up or down the heap) instead of pushing another entry,
//! and closing a connection removes its entry, so the heap never holds more entries than there
//! are open connections and nothing fires for a connection that is gone. A tunnel's idle timer
//! is checked lazily: its entry is due at the last deadline set, and the worker sets it again
//! when activity moved the real deadline later.

use std::time::Instant;

/// Position of a slot not in the heap.
const ABSENT: usize = usize::MAX;

#[derive(Debug, Default)]
pub struct Deadlines {
    /// `(when, slot)`, a binary min-heap on `when`.
    heap: Vec<(Instant, u32)>,
    /// `pos[slot]`: the slot's index in `heap`, or [`ABSENT`].
    pos: Vec<usize>,
}

impl Deadlines {
    pub fn new() -> Deadlines {
        Deadlines::default()
    }

    /// Set (or move) `slot`'s deadline.
    pub fn set(&mut self, slot: u32, at: Instant) {
        let s = slot as usize;
        if self.pos.len() <= s {
            self.pos.resize(s + 1, ABSENT);
        }
        match self.pos[s] {
            ABSENT => {
                self.heap.push((at, slot));
                let i = self.heap.len() - 1;
                self.pos[s] = i;
                self.up(i);
            }
            i => {
                let old = self.heap[i].0;
                self.heap[i].0 = at;
                if at < old {
                    self.up(i);
                } else {
                    self.down(i);
                }
            }
        }
    }

    /// Forget `slot`'s deadline (its connection closed).
    pub fn remove(&mut self, slot: u32) {
        let Some(&i) = self.pos.get(slot as usize) else {
            return;
        };
        if i == ABSENT {
            return;
        }
        self.pos[slot as usize] = ABSENT;
        let last = self.heap.len() - 1;
        if i != last {
            self.heap.swap(i, last);
            let moved = self.heap[i].1 as usize;
            self.pos[moved] = i;
            self.heap.pop();
            self.down(i);
            self.up(i);
        } else {
            self.heap.pop();
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.0)
    }

    /// Remove and return the slot with the earliest deadline if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<u32> {
        let &(at, slot) = self.heap.first()?;
        if at > now {
            return None;
        }
        self.remove(slot);
        Some(slot)
    }

    /// Entries in the heap (one per connection at most).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The deadline of `slot`, if set.
    pub fn get(&self, slot: u32) -> Option<Instant> {
        match self.pos.get(slot as usize) {
            Some(&i) if i != ABSENT => Some(self.heap[i].0),
            _ => None,
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a;
        self.pos[self.heap[b].1 as usize] = b;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].0 >= self.heap[parent].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut min = i;
            if l < self.heap.len() && self.heap[l].0 < self.heap[min].0 {
                min = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[min].0 {
                min = r;
            }
            if min == i {
                break;
            }
            self.swap(i, min);
            i = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_tunnel_carries_one_entry_through_all_its_phases() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        // Head, resolve, dial, tunnel (hello, then idle), each re-setting the same slot.
        for (i, ms) in [5_000, 2_000, 10_000, 3_000, 60_000]
            .into_iter()
            .enumerate()
        {
            d.set(7, at(t0, ms));
            assert_eq!(d.len(), 1, "after phase {i}");
            assert_eq!(d.get(7), Some(at(t0, ms)));
        }
        d.remove(7);
        assert_eq!(d.len(), 0);
        assert_eq!(d.pop_due(at(t0, 1_000_000)), None);
    }

    #[test]
    fn due_entries_come_out_in_order_and_once() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        let times = [50u64, 10, 40, 20, 30, 60, 5, 45];
        for (slot, ms) in times.iter().enumerate() {
            d.set(slot as u32, at(t0, *ms));
        }
        // Move one earlier and one later, and remove one.
        d.set(5, at(t0, 1));
        d.set(6, at(t0, 100));
        d.remove(2);
        assert_eq!(d.len(), times.len() - 1);
        let mut out = Vec::new();
        while let Some(s) = d.pop_due(at(t0, 55)) {
            out.push(s);
        }
        assert_eq!(out, vec![5, 1, 3, 4, 7, 0]);
        assert_eq!(d.next(), Some(at(t0, 100)));
        assert_eq!(d.pop_due(at(t0, 99)), None);
        assert_eq!(d.pop_due(at(t0, 100)), Some(6));
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn many_connections_never_exceed_one_entry_each() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = (x % 64) as u32;
            if x.is_multiple_of(5) {
                d.remove(slot);
            } else {
                d.set(slot, at(t0, x % 1000));
            }
            assert!(d.len() <= 64);
        }
        let mut last = None;
        while let Some(s) = d.pop_due(at(t0, 1000)) {
            let _ = s;
            let now = d.next();
            if let (Some(a), Some(b)) = (last, now) {
                assert!(a <= b);
            }
            last = now;
        }
        assert_eq!(d.len(), 0);
    }
}
