//! `splicegate status`: owns the ring of counter samples the control thread takes every
//! [`SAMPLE_EVERY`] (for the rates and the refusals of the last minute) and the status
//! answer built from them and from the control state.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::events::Reject;
use crate::metrics::Totals;

/// How often the control thread samples the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window of "the last minute".
pub const WINDOW: Duration = Duration::from_secs(60);
/// Samples kept: a little more than the window.
const KEPT: usize = (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 2;

/// Counter samples, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    ring: VecDeque<(Instant, Totals)>,
}

/// What changed over the window ending now.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// The window's length (shorter than a minute just after the start).
    pub window: Duration,
    pub tunnels_per_s: f64,
    pub bytes_up_per_s: f64,
    pub bytes_down_per_s: f64,
    /// Refusals in the window, by reason; only reasons that occurred.
    pub refusals: Vec<(&'static str, u64)>,
}

impl Samples {
    pub fn push(&mut self, at: Instant, t: Totals) {
        self.ring.push_back((at, t));
        while self.ring.len() > KEPT {
            self.ring.pop_front();
        }
    }

    /// Rates from the oldest sample at most [`WINDOW`] old up to `now`'s totals.
    pub fn rates(&self, now: Instant, t: &Totals) -> Rates {
        let base = self
            .ring
            .iter()
            .find(|(at, _)| now.saturating_duration_since(*at) <= WINDOW)
            .or(self.ring.back());
        let Some((at, b)) = base else {
            return Rates {
                window: Duration::ZERO,
                tunnels_per_s: 0.0,
                bytes_up_per_s: 0.0,
                bytes_down_per_s: 0.0,
                refusals: Vec::new(),
            };
        };
        let window = now.saturating_duration_since(*at);
        let secs = window.as_secs_f64();
        let rate = |a: u64, b: u64| {
            if secs < 0.001 {
                0.0
            } else {
                a.saturating_sub(b) as f64 / secs
            }
        };
        let refusals = Reject::ALL
            .iter()
            .map(|r| {
                let i = r.index();
                (r.as_str(), t.rejections[i].saturating_sub(b.rejections[i]))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        Rates {
            window,
            tunnels_per_s: rate(t.tunnels_established, b.tunnels_established),
            bytes_up_per_s: rate(t.bytes_upstream, b.bytes_upstream),
            bytes_down_per_s: rate(t.bytes_downstream, b.bytes_downstream),
            refusals,
        }
    }
}

/// Open fds of this process and its soft `RLIMIT_NOFILE`.
pub fn fds() -> (u64, Option<u64>) {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    (open, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(tunnels: u64, up: u64, host_refusals: u64) -> Totals {
        let mut rejections = [0; Reject::ALL.len()];
        rejections[Reject::HostNotAllowed.index()] = host_refusals;
        Totals {
            tunnels_active: 0,
            connections_active: 0,
            pipe_bytes: 0,
            tunnels_established: tunnels,
            bytes_upstream: up,
            bytes_downstream: 0,
            rejections,
        }
    }

    #[test]
    fn rates_over_the_last_minute() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        // Samples every 5 s for two minutes: 1 tunnel, 100 bytes and 1 refusal per second.
        for i in 0..=24u64 {
            s.push(t0 + SAMPLE_EVERY * i as u32, totals(i * 5, i * 500, i * 5));
        }
        let now = t0 + Duration::from_secs(120);
        let r = s.rates(now, &totals(120, 12_000, 120));
        assert_eq!(r.window, Duration::from_secs(60));
        assert!((r.tunnels_per_s - 1.0).abs() < 1e-9, "{r:?}");
        assert!((r.bytes_up_per_s - 100.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.refusals, vec![("host_not_allowed", 60)]);
        assert!(s.ring.len() <= KEPT);
    }

    #[test]
    fn just_started() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.push(t0, totals(0, 0, 0));
        let r = s.rates(t0 + Duration::from_secs(2), &totals(4, 0, 0));
        assert_eq!(r.window, Duration::from_secs(2));
        assert!((r.tunnels_per_s - 2.0).abs() < 1e-9);
        assert!(r.refusals.is_empty());
        let empty = Samples::default().rates(t0, &totals(1, 1, 1));
        assert_eq!(empty.window, Duration::ZERO);
    }
}
