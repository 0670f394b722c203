//! Owns the worker's poll table: which connection socket each driver key belongs to, and the
//! guard ([`Registered`]) that ties a socket to its key.
//!
//! A socket watched by the driver lives only inside a [`Registered`]: the guard owns the
//! `OwnedFd` together with its key, and dropping it queues the key's removal. So a socket can
//! never leave a connection state with its poll still armed (on io_uring an armed multishot poll
//! keeps the closed socket's file alive), whichever way the state ends.
//!
//! Every registration gets its own key — a poll-table slot and that slot's generation — so a
//! second address dialled for the same connection is a new key, and a late completion for the
//! first socket (a `POLL_REMOVE` answered `-EALREADY`) is still recognised as stale by the
//! driver, which removes it again. A slot is reused only after its removal reached the driver
//! ([`Registry::flush`], called before every wait), and with the next generation.
//!
//! The table is indexed by slot: finding the connection of a completion is two vector reads.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use super::driver::{Driver, Key, Side};

/// The part of a driver the poll table talks to (a trait, so unit tests can use a fake).
pub trait Poller {
    /// Watch `fd` under `key`.
    fn watch(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()>;
    /// Stop watching `key`. Its socket may already be closed: on epoll the close removed it
    /// (connection sockets are never duplicated), on io_uring the poll is removed by key.
    fn unwatch(&mut self, key: Key);
}

impl Poller for Driver {
    fn watch(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()> {
        self.register(fd, key)
    }

    fn unwatch(&mut self, key: Key) {
        self.deregister(key)
    }
}

/// The connection end a registration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The connection's slot and generation in the worker's connection table.
    pub slot: u32,
    pub gen: u32,
    pub side: Side,
}

#[derive(Default)]
struct Table {
    /// Generation of each poll slot (bumped when the slot is freed).
    gens: Vec<u32>,
    /// The owner of each slot while registered.
    owners: Vec<Option<Owner>>,
    free: Vec<u32>,
    /// Keys whose guard dropped, to be removed from the driver at the next flush.
    dropped: Vec<Key>,
}

impl Table {
    fn release(&mut self, key: Key) {
        if let Key::Conn { slot, .. } = key {
            if let Some(o) = self.owners.get_mut(slot as usize) {
                *o = None;
            }
            self.dropped.push(key);
        }
    }
}

/// The worker's poll table (single-threaded: shared with the guards through an `Rc`).
#[derive(Clone, Default)]
pub struct Registry {
    table: Rc<RefCell<Table>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Watch `fd` for `owner` under a key of its own. On error the socket is closed.
    pub fn register<P: Poller>(
        &self,
        poller: &mut P,
        fd: OwnedFd,
        owner: Owner,
    ) -> io::Result<Registered> {
        let key = {
            let mut t = self.table.borrow_mut();
            let slot = match t.free.pop() {
                Some(s) => s,
                None => {
                    t.gens.push(0);
                    t.owners.push(None);
                    (t.gens.len() - 1) as u32
                }
            };
            Key::Conn {
                slot,
                gen: t.gens[slot as usize],
                side: owner.side,
            }
        };
        let Key::Conn { slot, gen, .. } = key else {
            return Err(io::Error::other("poll table produced a non-connection key"));
        };
        if let Err(e) = poller.watch(fd.as_fd(), key) {
            let mut t = self.table.borrow_mut();
            t.gens[slot as usize] = Key::wrap_gen(gen.wrapping_add(1));
            t.free.push(slot);
            return Err(e);
        }
        self.table.borrow_mut().owners[slot as usize] = Some(owner);
        Ok(Registered {
            fd,
            key,
            table: Rc::clone(&self.table),
        })
    }

    /// The owner of a completion's key, unless the key is stale.
    pub fn owner(&self, slot: u32, gen: u32) -> Option<Owner> {
        let t = self.table.borrow();
        if t.gens.get(slot as usize) != Some(&gen) {
            return None;
        }
        t.owners.get(slot as usize).copied().flatten()
    }

    /// Hand the removals of dropped guards to the driver and free their slots (with the next
    /// generation). Called before every wait.
    pub fn flush<P: Poller>(&self, poller: &mut P) {
        let mut t = self.table.borrow_mut();
        if t.dropped.is_empty() {
            return;
        }
        let dropped = std::mem::take(&mut t.dropped);
        for key in &dropped {
            poller.unwatch(*key);
            if let Key::Conn { slot, gen, .. } = *key {
                if let Some(g) = t.gens.get_mut(slot as usize) {
                    *g = Key::wrap_gen(gen.wrapping_add(1));
                    t.free.push(slot);
                }
            }
        }
        let mut reuse = dropped;
        reuse.clear();
        t.dropped = reuse;
    }

    /// Registrations alive (guards not dropped).
    pub fn live(&self) -> usize {
        self.table.borrow().owners.iter().flatten().count()
    }

    /// Removals queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.table.borrow().dropped.len()
    }
}

/// A socket and its driver key, as one value: dropping it queues the key's removal and closes
/// the socket (see the module comment).
pub struct Registered {
    fd: OwnedFd,
    key: Key,
    table: Rc<RefCell<Table>>,
}

impl Registered {
    pub fn key(&self) -> Key {
        self.key
    }
}

impl AsFd for Registered {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.borrow_mut().release(self.key);
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A driver that records what it is asked to watch.
    #[derive(Default)]
    pub(crate) struct FakePoller {
        pub watched: Vec<(Key, i32)>,
        pub removed: Vec<Key>,
        pub fail_next: bool,
    }

    impl Poller for FakePoller {
        fn watch(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()> {
            if std::mem::take(&mut self.fail_next) {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.watched.push((key, fd.as_raw_fd()));
            Ok(())
        }

        fn unwatch(&mut self, key: Key) {
            self.removed.push(key);
        }
    }

    fn sock() -> OwnedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        OwnedFd::from(a)
    }

    fn owner(side: Side) -> Owner {
        Owner {
            slot: 3,
            gen: 1,
            side,
        }
    }

    #[test]
    fn dropping_the_guard_removes_its_key() {
        let reg = Registry::new();
        let mut p = FakePoller::default();
        let g = reg.register(&mut p, sock(), owner(Side::Upstream)).unwrap();
        let key = g.key();
        let Key::Conn { slot, gen, .. } = key else {
            panic!("a connection key")
        };
        assert_eq!(reg.owner(slot, gen), Some(owner(Side::Upstream)));
        drop(g);
        assert_eq!(reg.owner(slot, gen), None, "a dropped guard owns nothing");
        assert_eq!(reg.pending(), 1);
        reg.flush(&mut p);
        assert_eq!(p.removed, vec![key]);
        assert_eq!((reg.live(), reg.pending()), (0, 0));
    }

    #[test]
    fn a_second_socket_gets_a_new_key_even_in_the_same_slot() {
        let reg = Registry::new();
        let mut p = FakePoller::default();
        let first = reg.register(&mut p, sock(), owner(Side::Upstream)).unwrap();
        let k1 = first.key();
        drop(first);
        // Not flushed yet: the slot is not reused.
        let second = reg.register(&mut p, sock(), owner(Side::Upstream)).unwrap();
        assert_ne!(second.key(), k1);
        reg.flush(&mut p);
        let third = reg.register(&mut p, sock(), owner(Side::Upstream)).unwrap();
        assert_ne!(third.key(), k1, "a reused slot carries the next generation");
        assert_ne!(third.key(), second.key());
        // A late completion for the first socket's key is stale.
        let Key::Conn { slot, gen, .. } = k1 else {
            panic!("a connection key")
        };
        assert_eq!(reg.owner(slot, gen), None);
        assert_eq!(reg.live(), 2);
    }

    #[test]
    fn a_failed_registration_closes_the_socket_and_frees_the_slot() {
        let reg = Registry::new();
        let mut p = FakePoller {
            fail_next: true,
            ..Default::default()
        };
        assert!(reg.register(&mut p, sock(), owner(Side::Client)).is_err());
        assert_eq!((reg.live(), reg.pending()), (0, 0));
        let g = reg.register(&mut p, sock(), owner(Side::Client)).unwrap();
        let Key::Conn { gen, .. } = g.key() else {
            panic!("a connection key")
        };
        assert_eq!(gen, 1, "the failed attempt's key is never reused");
    }
}
