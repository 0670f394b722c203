//! A worker's mailbox: a channel the worker drains plus the eventfd that wakes its driver.
//!
//! The resolver (DNS answers) and the auth verifier (password checks) run off the workers and
//! answer through a [`Mailbox`]: the message goes on the channel first, then the eventfd's
//! counter is raised, so a worker woken by the eventfd always finds the message. The worker
//! creates the eventfd, registers it with its driver and drains it; this module only posts.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{mpsc, Arc};

/// Where a worker wants messages of type `T`: its channel and its wake-up eventfd.
pub struct Mailbox<T> {
    pub tx: mpsc::Sender<T>,
    /// The worker's eventfd, shared by every mailbox of that worker.
    pub wake: Arc<OwnedFd>,
}

impl<T> Mailbox<T> {
    /// Send `msg` and wake the worker; false when the worker is gone (nothing is woken then).
    pub fn post(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        signal(self.wake.as_fd());
        true
    }

    /// A mailbox for messages of another type that wakes the same worker.
    pub fn with_channel<U>(&self, tx: mpsc::Sender<U>) -> Mailbox<U> {
        Mailbox {
            tx,
            wake: Arc::clone(&self.wake),
        }
    }
}

// Not derived: a derive would ask `T: Clone` / `T: Debug`, which a sender does not need.
impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Mailbox<T> {
        Mailbox {
            tx: self.tx.clone(),
            wake: Arc::clone(&self.wake),
        }
    }
}

impl<T> fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("wake", &self.wake)
            .finish_non_exhaustive()
    }
}

/// Add one to an eventfd's counter, which wakes its poller. An error (the counter is full)
/// means a wake-up is pending anyway.
pub fn signal(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};

    fn counter(fd: BorrowedFd<'_>) -> Option<u64> {
        let mut buf = [0u8; 8];
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => Some(u64::from_ne_bytes(buf)),
            _ => None,
        }
    }

    #[test]
    fn post_sends_then_wakes() {
        let fd = match eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC) {
            Ok(fd) => Arc::new(fd),
            Err(e) => panic!("eventfd: {e}"),
        };
        let (tx, rx) = mpsc::channel();
        let mailbox = Mailbox { tx, wake: fd };
        assert_eq!(counter(mailbox.wake.as_fd()), None, "no wake-up yet");
        assert!(mailbox.post(7u32));
        let (other_tx, other_rx) = mpsc::channel();
        assert!(mailbox.with_channel(other_tx).post("checked"));
        assert_eq!(
            counter(mailbox.wake.as_fd()),
            Some(2),
            "one wake-up per post"
        );
        assert_eq!(rx.try_recv(), Ok(7));
        assert_eq!(other_rx.try_recv(), Ok("checked"));
        drop(rx);
        assert!(!mailbox.post(8), "a gone worker is reported");
        assert_eq!(counter(mailbox.wake.as_fd()), None, "and not woken");
    }
}
