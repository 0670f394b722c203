//! The overload sampler: every `limits.overload_sample_interval`, read the open connections
//! (the workers' shards) and the memory counted against `limits.memory_budget` (RSS from
//! `/proc/self/statm` plus the pipe capacity the workers report), step the
//! [`Hysteresis`], publish the state for the workers, `/readyz` and `/metrics`, and log one event
//! when it engages and one when it releases.
//!
//! Runs on the control thread only: no worker reads `/proc` or takes a lock for it.

use tracing::{info, warn};

use crate::config::Limits;
use crate::events;
use crate::metrics::Totals;
use crate::overload::{self, Change, Hysteresis, MemoryUse, Overload, Sample, Thresholds};

/// The control thread's half of the overload state.
#[derive(Debug, Default)]
pub(super) struct Sampler {
    state: Hysteresis,
    /// `/proc/self/statm` could not be read while a memory budget is set (logged once, not
    /// per sample).
    rss_unreadable: bool,
}

impl Sampler {
    /// Take one sample and publish the result to `shared`.
    pub(super) fn sample(&mut self, totals: &Totals, limits: &Limits, shared: &Overload) {
        let pipes = u64::try_from(totals.pipe_bytes).unwrap_or(0);
        let memory = match overload::memory_now(pipes) {
            Some(m) => m,
            None => {
                // Without the resident set only the pipes count: the budget is weaker than
                // configured, and the operator must know.
                if !self.rss_unreadable && limits.memory_budget > 0 {
                    warn!(
                        event_id = events::INTERNAL_ERROR,
                        reason = "memory_unreadable",
                        "cannot read /proc/self/statm: limits.memory_budget counts only the pipes lent to tunnels"
                    );
                    self.rss_unreadable = true;
                }
                MemoryUse { rss: 0, pipes }
            }
        };
        let s = Sample {
            connections: u64::try_from(totals.connections_active).unwrap_or(0),
            max_connections: u64::try_from(limits.max_connections).unwrap_or(u64::MAX),
            memory: memory.total(),
            memory_budget: limits.memory_budget,
        };
        let t = Thresholds {
            engage: limits.overload_engage_percent,
            release: limits.overload_release_percent,
        };
        let change = self.state.observe(s, t);
        shared.publish(self.state.state(), memory, limits.memory_budget);
        match change {
            Some(Change::Engaged(why)) => warn!(
                event_id = events::INTERNAL_ERROR,
                reason = "overload",
                overload = "engaged",
                resource = why.names(),
                connections = s.connections,
                max_connections = s.max_connections,
                memory_bytes = s.memory,
                memory_budget = s.memory_budget,
                engage_percent = t.engage,
                release_percent = t.release,
                "overloaded: new connections get 503 and /readyz fails until every budget is below the release threshold; open tunnels carry on"
            ),
            Some(Change::Released) => info!(
                event_id = events::INFO,
                reason = "overload",
                overload = "released",
                connections = s.connections,
                max_connections = s.max_connections,
                memory_bytes = s.memory,
                memory_budget = s.memory_budget,
                release_percent = t.release,
                "overload released: new connections are accepted again"
            ),
            None => {}
        }
    }
}
