//! Restarting a worker that died: owns the decision (the engine still serves, the worker has
//! been dead for `limits.worker_restart_delay`) and the start of a replacement on new `SO_REUSEPORT`
//! sockets for the same addresses (or, for an inherited socket without `SO_REUSEPORT`, another
//! duplicate of it), with the dead worker's metric shard.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{bind_one, Engine, EngineError};

/// How long a restarted worker may take to set up its driver.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

impl Engine {
    /// Start again every worker that died (on an error) at least `limits.worker_restart_delay`
    /// ago (1 s by default: it bounds a crash loop to one restart per worker per delay, and
    /// leaves `/readyz` at 503 long enough to be seen), unless
    /// the engine is draining or stopping. Called periodically by the control thread; returns
    /// what happened to each worker it tried.
    pub fn restart_dead(&mut self) -> Vec<(usize, Result<(), EngineError>)> {
        let mut out = Vec::new();
        if self.stopping.load(Relaxed) {
            return out;
        }
        let now = Instant::now();
        let delay = self.spawn.settings.load().limits.worker_restart_delay;
        for id in 0..self.workers.len() {
            let dead = self.workers[id].thread.is_finished();
            if !dead {
                self.deaths[id] = None;
                continue;
            }
            let since = *self.deaths[id].get_or_insert(now);
            if now.duration_since(since) < delay {
                continue;
            }
            let result = self.restart(id);
            if result.is_ok() {
                self.deaths[id] = None;
            } else {
                // Try again after another pause.
                self.deaths[id] = Some(now);
            }
            out.push((id, result));
        }
        out
    }

    fn restart(&mut self, id: usize) -> Result<(), EngineError> {
        let restart_err = |source: io::Error| EngineError::Restart { id, source };
        let mut fds = Vec::new();
        let mut dups = Vec::new();
        {
            let handover = match self.handover.lock() {
                Ok(h) => h,
                Err(e) => e.into_inner(),
            };
            for addr in &self.spawn.bound {
                // An inherited socket without SO_REUSEPORT is shared: the new worker accepts
                // from another duplicate of it.
                let shared = handover
                    .iter()
                    .find(|h| h.addr == *addr && h.shared)
                    .and_then(|h| h.sockets.first());
                if let Some(sock) = shared {
                    fds.push(sock.try_clone().map_err(restart_err)?);
                    continue;
                }
                let fd = OwnedFd::from(bind_one(*addr).map_err(restart_err)?);
                dups.push((*addr, fd.try_clone().map_err(restart_err)?));
                fds.push(fd);
            }
        }
        let (tx, rx) = mpsc::channel();
        let n = self.workers.len();
        let handle = self
            .spawn
            .worker(id, n, fds, &self.handover, tx)
            .map_err(restart_err)?;
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(restart_err(io::Error::other(
                    "the restarted worker did not set up its driver in time",
                )))
            }
        }
        // The engine keeps duplicates of the new sockets too (for a reload's hand-over).
        match self.handover.lock() {
            Ok(mut h) => {
                for (addr, dup) in dups {
                    if let Some(entry) = h.iter_mut().find(|e| e.addr == addr) {
                        entry.sockets.push(dup);
                        entry.owners.push(id);
                    }
                }
            }
            Err(e) => drop(e),
        }
        let old = std::mem::replace(&mut self.workers[id], handle);
        let _ = old.thread.join();
        Ok(())
    }
}
