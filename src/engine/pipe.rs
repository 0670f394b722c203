//! Pipes for the splice data path, and the per-worker pool they come from.
//!
//! A tunnel direction takes a pipe only while bytes are in flight and gives it back as soon as
//! the pipe is empty, so pipe fds and pipe memory scale with the tunnels that move data, not with
//! the idle ones. (An unprivileged user gets about 1024 default-size pipes before the kernel
//! shrinks new ones; pipes held for a tunnel's whole life would hit that at ~500 tunnels.)

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::sys;
use crate::metrics::Shard;

/// A pipe; dropping it closes both ends (and frees any pages still in it).
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Capacity in bytes as granted by the kernel.
    pub capacity: usize,
    /// Buffers the pipe holds when full (`capacity / PAGE_SIZE`): each holds at least one byte,
    /// so fewer bytes than this cannot fill it.
    pub slots: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = sys::pipe()?;
        // A refused resize (EPERM past the per-user soft limit) leaves the default size: still a
        // working pipe, just smaller.
        let capacity = match sys::set_pipe_size(write.as_fd(), size) {
            Ok(n) => n,
            Err(_) => sys::pipe_size(write.as_fd())?,
        };
        Ok(Pipe {
            read,
            write,
            capacity,
            slots: capacity / sys::page_size().max(1),
        })
    }

    pub fn read_end(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    pub fn write_end(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }
}

/// Per-worker pool. `max_in_use` caps the pipes lent out at once (HAProxy's `maxpipes`); a
/// direction that cannot get one falls back to copying through user space for that chunk.
#[derive(Debug)]
pub struct PipePool {
    idle: Vec<Pipe>,
    in_use: usize,
    max_in_use: usize,
    max_idle: usize,
    size: usize,
    shard: Arc<Shard>,
}

impl PipePool {
    pub fn new(size: usize, max_in_use: usize, shard: Arc<Shard>) -> PipePool {
        PipePool {
            idle: Vec::new(),
            in_use: 0,
            max_in_use: max_in_use.max(1),
            max_idle: 32,
            size,
            shard,
        }
    }

    /// Lend a pipe, or `None` when the cap is reached or the kernel refuses a new one.
    pub fn take(&mut self) -> Option<Pipe> {
        if self.in_use >= self.max_in_use {
            return None;
        }
        let pipe = match self.idle.pop() {
            Some(p) => p,
            None => Pipe::new(self.size).ok()?,
        };
        self.in_use += 1;
        self.shard.pipes_in_use.fetch_add(1, Relaxed);
        self.shard.pipe_bytes.fetch_add(bytes(&pipe), Relaxed);
        Some(pipe)
    }

    /// Return an empty pipe. A pipe that may still hold bytes must be dropped instead (`discard`).
    pub fn give(&mut self, pipe: Pipe) {
        self.release(&pipe);
        if self.idle.len() < self.max_idle {
            self.idle.push(pipe);
        }
    }

    /// Account for a lent pipe that was dropped rather than returned.
    pub fn discard(&mut self, pipe: Pipe) {
        self.release(&pipe);
        drop(pipe);
    }

    fn release(&mut self, pipe: &Pipe) {
        self.in_use = self.in_use.saturating_sub(1);
        self.shard.pipes_in_use.fetch_sub(1, Relaxed);
        self.shard.pipe_bytes.fetch_sub(bytes(pipe), Relaxed);
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// A lent pipe's share of `pipe_bytes`: its capacity, whether or not it is full (the kernel
/// allocates its pages as they fill; the capacity is what it may come to).
fn bytes(pipe: &Pipe) -> i64 {
    i64::try_from(pipe.capacity).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_lends_reuses_and_caps() {
        let shard = Arc::new(Shard::default());
        let mut pool = PipePool::new(1 << 16, 2, Arc::clone(&shard));
        let a = pool.take().unwrap();
        assert!(a.capacity >= 1 << 16);
        let b = pool.take().unwrap();
        assert!(pool.take().is_none(), "cap of 2 pipes in use");
        assert_eq!(shard.pipes_in_use.load(Relaxed), 2);
        let lent = (a.capacity + b.capacity) as i64;
        assert_eq!(shard.pipe_bytes.load(Relaxed), lent);
        pool.give(a);
        assert_eq!(pool.idle(), 1);
        let c = pool.take().unwrap();
        assert_eq!(pool.idle(), 0, "the idle pipe was reused");
        pool.discard(b);
        pool.give(c);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(shard.pipes_in_use.load(Relaxed), 0);
        assert_eq!(shard.pipe_bytes.load(Relaxed), 0);
    }
}
