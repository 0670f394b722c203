//! The data plane: worker threads, one per core, each with its own driver and listeners.
//!
//! [`Engine::start`] binds one `SO_REUSEPORT` listener per address per worker (so the kernel
//! spreads connections across workers with no shared accept queue), picks the driver, and starts
//! the workers. The control thread talks to workers only through [`worker::Command`] messages and
//! their eventfds.

pub mod accept;
pub mod conn;
#[allow(unsafe_code)]
pub mod driver;
pub mod flow;
pub mod pipe;
pub mod registry;
mod restart;
pub mod sys;
pub mod timers;
pub mod tls_leg;
pub mod unavailable;
pub mod worker;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::Verifier;
use crate::config::EngineKind;
use crate::metrics::Shard;
use crate::proto::proxy::ProxySources;
use crate::resolve::{ReplyTo, Resolver};
use crate::settings::Shared;
use driver::{Driver, EpollDriver, UringDriver};
use worker::{Command, Worker, WorkerSetup};

/// The drain "deadline" of a retired engine: ten years, i.e. none.
const RETIRE_DEADLINE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Which driver the workers run on, and why.
#[derive(Debug, Clone)]
pub struct Choice {
    pub uring: bool,
    pub why: String,
}

impl Choice {
    pub fn kind(&self) -> &'static str {
        if self.uring {
            "uring"
        } else {
            "epoll"
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine: uring was requested but io_uring is unavailable: {0}")]
    UringRequested(#[source] driver::UringUnavailable),
    #[error("worker {id}: cannot set up its driver: {source}")]
    DriverSetup {
        id: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {id}: cannot be restarted: {source}")]
    Restart {
        id: usize,
        #[source]
        source: io::Error,
    },
}

/// Resolve `engine: auto|uring|epoll` against what this host allows.
pub fn choose(kind: EngineKind) -> Result<Choice, EngineError> {
    match kind {
        EngineKind::Epoll => Ok(Choice {
            uring: false,
            why: "engine: epoll in the configuration".into(),
        }),
        EngineKind::Uring => match driver::probe_uring() {
            Ok(()) => Ok(Choice {
                uring: true,
                why: "engine: uring in the configuration".into(),
            }),
            Err(e) => Err(EngineError::UringRequested(e)),
        },
        EngineKind::Auto => Ok(match driver::probe_uring() {
            Ok(()) => Choice {
                uring: true,
                why: "io_uring probe succeeded".into(),
            },
            Err(e) => Choice {
                uring: false,
                why: format!("io_uring unavailable ({e}); using epoll"),
            },
        }),
    }
}

/// Listener sockets: `per_worker[w]` holds worker `w`'s sockets (at least one per bound
/// address).
pub struct Listeners {
    pub per_worker: Vec<Vec<OwnedFd>>,
    pub bound: Vec<SocketAddr>,
    /// For each `bound` address, the index of the address it was bound for in the list given to
    /// [`bind_listeners_from`] (an address that could not be bound is skipped in `bound`).
    pub origin: Vec<usize>,
    /// The bound addresses of the listeners with the PROXY protocol, and whom they accept the
    /// header from. Empty after binding; the caller fills it from its configuration. A worker
    /// finds each listener's entry by the socket's own address, so inherited and re-bound
    /// sockets (a restarted worker) get theirs too.
    pub proxy: ProxyListeners,
    /// A duplicate of every socket, by address, kept by the [`Engine`] so a reload can hand the
    /// open sockets to the next engine (see [`Engine::take_listeners`]).
    pub handover: Vec<Handover>,
}

/// The listeners with the PROXY protocol, by bound address, with the sources they trust.
pub type ProxyListeners = HashMap<SocketAddr, Arc<ProxySources>>;

/// The listening sockets of one address, passed from a retiring engine to its successor: the
/// sockets never close, so no connection waiting in an accept queue is reset by a reload.
#[derive(Debug)]
pub struct Handover {
    pub addr: SocketAddr,
    pub sockets: Vec<OwnedFd>,
    /// The worker serving each socket (`owners[i]` for `sockets[i]`), so the sockets of a worker
    /// that died can be closed (see [`Engine::start`]).
    pub owners: Vec<usize>,
    /// One socket without `SO_REUSEPORT` (inherited from systemd's socket activation): it can't
    /// be bound again beside itself, so every worker accepts from a duplicate of `sockets[0]`,
    /// and that socket is never closed for a worker that died.
    pub shared: bool,
}

impl Handover {
    /// A socket every worker accepts from (see [`Handover::shared`]).
    pub fn shared(addr: SocketAddr, socket: OwnedFd) -> Handover {
        Handover {
            addr,
            sockets: vec![socket],
            owners: vec![usize::MAX],
            shared: true,
        }
    }

    /// A duplicate of this entry (the same sockets, new fds), for a takeover.
    pub fn try_clone(&self) -> io::Result<Handover> {
        Ok(Handover {
            addr: self.addr,
            sockets: self
                .sockets
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<io::Result<_>>()?,
            owners: self.owners.clone(),
            shared: self.shared,
        })
    }

    /// Close the duplicates of worker `id`'s sockets.
    fn forget_worker(&mut self, id: usize) {
        if self.shared {
            return;
        }
        let sockets = std::mem::take(&mut self.sockets);
        let owners = std::mem::take(&mut self.owners);
        for (sock, owner) in sockets.into_iter().zip(owners) {
            if owner != id {
                self.sockets.push(sock);
                self.owners.push(owner);
            }
        }
    }
}

/// Bind every address once per worker with `SO_REUSEPORT`. A port of 0 is resolved by the first
/// bind and reused by the rest. An IPv6 address on a host without IPv6 is skipped (with the
/// returned warning) as long as some other address binds.
pub fn bind_listeners(
    addrs: &[SocketAddr],
    workers: usize,
) -> io::Result<(Listeners, Vec<String>)> {
    bind_listeners_from(addrs, workers, Vec::new())
}

/// Like [`bind_listeners`], but an address found in `inherited` reuses those open sockets
/// (spread over the workers; a worker left without one gets a new `SO_REUSEPORT` socket). The
/// inherited sockets of addresses no longer listed are closed when `inherited` is dropped.
pub fn bind_listeners_from(
    addrs: &[SocketAddr],
    workers: usize,
    mut inherited: Vec<Handover>,
) -> io::Result<(Listeners, Vec<String>)> {
    let mut per_worker: Vec<Vec<OwnedFd>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut origin = Vec::new();
    let mut handover = Vec::new();
    let mut warnings = Vec::new();
    for (index, addr) in addrs.iter().enumerate() {
        if let Some(i) = inherited
            .iter()
            .position(|h| h.addr == *addr && addr.port() != 0)
        {
            let h = inherited.swap_remove(i);
            if h.shared {
                let Some(sock) = h.sockets.first() else {
                    continue;
                };
                for w in per_worker.iter_mut() {
                    w.push(sock.try_clone()?);
                }
                bound.push(*addr);
                origin.push(index);
                handover.push(h);
                continue;
            }
            let mut dups = Vec::new();
            let mut owners = Vec::new();
            let mut served = vec![false; workers];
            for (k, sock) in h.sockets.into_iter().enumerate() {
                dups.push(sock.try_clone()?);
                owners.push(k % workers);
                per_worker[k % workers].push(sock);
                served[k % workers] = true;
            }
            let unserved = per_worker
                .iter_mut()
                .enumerate()
                .zip(&served)
                .filter(|(_, s)| !**s)
                .map(|(w, _)| w);
            for (id, w) in unserved {
                let s = bind_one(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                let fd = OwnedFd::from(s);
                dups.push(fd.try_clone()?);
                owners.push(id);
                w.push(fd);
            }
            bound.push(*addr);
            origin.push(index);
            handover.push(Handover {
                addr: *addr,
                sockets: dups,
                owners,
                shared: false,
            });
            continue;
        }
        let first = match bind_one(*addr) {
            Ok(s) => s,
            Err(e)
                if addr.is_ipv6()
                    && addrs.len() > 1
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                    ) =>
            {
                warnings.push(format!(
                    "skipping listen address {addr}: {e} (no IPv6 on this host)"
                ));
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                ))
            }
        };
        let local = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no socket address"))?;
        let first = OwnedFd::from(first);
        let mut dups = vec![first.try_clone()?];
        let mut owners = vec![0];
        per_worker[0].push(first);
        for (id, w) in per_worker.iter_mut().enumerate().skip(1) {
            let s = bind_one(local)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {local}: {e}")))?;
            let fd = OwnedFd::from(s);
            dups.push(fd.try_clone()?);
            owners.push(id);
            w.push(fd);
        }
        bound.push(local);
        origin.push(index);
        handover.push(Handover {
            addr: local,
            sockets: dups,
            owners,
            shared: false,
        });
    }
    if bound.is_empty() {
        return Err(io::Error::other("no listen address could be bound"));
    }
    Ok((
        Listeners {
            per_worker,
            bound,
            origin,
            proxy: ProxyListeners::default(),
            handover,
        },
        warnings,
    ))
}

fn bind_one(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s)
}

struct Handle {
    thread: JoinHandle<()>,
    commands: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
}

/// What it takes to start a worker: kept by the [`Engine`] so a worker that died can be started
/// again (`restart.rs`).
struct Spawn {
    uring: bool,
    settings: Shared,
    resolver: Resolver,
    verifier: Verifier,
    shards: Vec<Arc<Shard>>,
    /// The bound listen addresses (ports resolved), for a restarted worker's own sockets.
    bound: Vec<SocketAddr>,
    /// The listeners with the PROXY protocol (see [`Listeners::proxy`]).
    proxy: Arc<ProxyListeners>,
}

/// The running workers.
pub struct Engine {
    workers: Vec<Handle>,
    spawn: Spawn,
    /// Set by a drain or stop: a worker that exits then is not restarted.
    stopping: std::sync::atomic::AtomicBool,
    /// When each dead worker was first seen dead (restarts wait `limits.worker_restart_delay`).
    deaths: Vec<Option<Instant>>,
    /// Duplicates of the workers' listening sockets, until [`Engine::take_listeners`] hands them
    /// to a successor or a drain drops them (so the sockets close and new clients are refused).
    /// Shared with the worker threads: a worker that dies closes its own duplicates.
    handover: Arc<Mutex<Vec<Handover>>>,
}

impl Engine {
    /// Start one worker per listener set. Returns once every worker has set up its driver, or
    /// the first error.
    pub fn start(
        choice: &Choice,
        listeners: Listeners,
        settings: Shared,
        resolver: Resolver,
        shards: &[Arc<Shard>],
    ) -> io::Result<Engine> {
        let n = listeners.per_worker.len();
        // One thread checks client passwords for this engine's workers (hash checks are slow on
        // purpose; workers cache the results). It exits with the last worker.
        let verifier = Verifier::start(1)?;
        let handover = Arc::new(Mutex::new(listeners.handover));
        let spawn = Spawn {
            uring: choice.uring,
            settings,
            resolver,
            verifier,
            shards: shards.to_vec(),
            bound: listeners.bound,
            proxy: Arc::new(listeners.proxy),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, EngineError>>();
        let mut workers = Vec::with_capacity(n);
        for (id, fds) in listeners.per_worker.into_iter().enumerate() {
            workers.push(spawn.worker(id, n, fds, &handover, ready_tx.clone())?);
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let engine = Engine {
                        workers,
                        spawn,
                        stopping: true.into(),
                        deaths: vec![None; n],
                        handover: Arc::new(Mutex::new(Vec::new())),
                    };
                    engine.stop();
                    engine.join();
                    return Err(io::Error::other(e));
                }
                Err(_) => return Err(io::Error::other("a worker exited during start-up")),
            }
        }
        Ok(Engine {
            workers,
            spawn,
            stopping: false.into(),
            deaths: vec![None; n],
            handover,
        })
    }

    fn send(&self, make: impl Fn() -> Command) {
        for w in &self.workers {
            let _ = w.commands.send(make());
            crate::mailbox::signal(w.wake.as_fd());
        }
    }

    /// Stop accepting everywhere; workers exit when empty or at `deadline`.
    pub fn drain(&self, deadline: Instant) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.drop_listeners();
        self.send(|| Command::Drain { deadline });
    }

    /// The listening sockets, for the engine that replaces this one (call before
    /// [`Engine::retire`]). The workers keep accepting on them until they retire.
    pub fn take_listeners(&self) -> Vec<Handover> {
        match self.handover.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(e) => std::mem::take(&mut *e.into_inner()),
        }
    }

    /// Duplicates of the listening sockets, by address, for a takeover: the engine keeps
    /// accepting on them.
    pub fn listener_copies(&self) -> io::Result<Vec<Handover>> {
        let h = match self.handover.lock() {
            Ok(h) => h,
            Err(e) => e.into_inner(),
        };
        h.iter().map(Handover::try_clone).collect()
    }

    /// Make every worker try its listeners now: after another process that accepted on the
    /// same sockets stopped (a takeover), a wake-up it swallowed would otherwise leave a client
    /// in the queue until the next one arrives.
    pub fn poke(&self) {
        self.send(|| Command::Poke);
    }

    fn drop_listeners(&self) {
        drop(self.take_listeners());
    }

    /// Stop accepting and let every open tunnel run to its own end (or its idle timeout): for
    /// the engine a reload replaced because `listen`, `workers` or `engine` changed. A later
    /// [`Engine::drain`] (SIGTERM) replaces the open-ended deadline with the real one.
    pub fn retire(&self) {
        let now = Instant::now();
        let far = now
            .checked_add(RETIRE_DEADLINE)
            .or_else(|| now.checked_add(Duration::from_secs(86_400)))
            .unwrap_or(now);
        self.drain(far);
    }

    /// Ask every worker to run `make()`'s command; how many workers took it (a worker that has
    /// exited takes none). Used for the admin commands, whose answers come back on a channel
    /// carried by the command.
    pub fn ask(&self, make: impl Fn() -> Command) -> usize {
        let mut asked = 0;
        for w in &self.workers {
            if w.commands.send(make()).is_ok() {
                crate::mailbox::signal(w.wake.as_fd());
                asked += 1;
            }
        }
        asked
    }

    /// Tell the workers that a reload published new settings: with `revoke_on_reload` they
    /// close the open tunnels the new policy no longer allows.
    pub fn recheck(&self) {
        self.send(|| Command::Recheck);
    }

    /// Close everything now.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.drop_listeners();
        self.send(|| Command::Stop);
    }

    /// True while no worker thread has exited (the systemd watchdog is fed only then: a worker
    /// that died on an error should get the service restarted).
    pub fn all_alive(&self) -> bool {
        self.workers.iter().all(|w| !w.thread.is_finished())
    }

    /// True once every worker thread has exited.
    pub fn finished(&self) -> bool {
        self.workers.iter().all(|w| w.thread.is_finished())
    }

    pub fn join(self) {
        for w in self.workers {
            let _ = w.thread.join();
        }
    }
}

impl Spawn {
    /// Start worker `id` (of `n`) on `fds`; it reports on `ready` once its driver is up.
    fn worker(
        &self,
        id: usize,
        n: usize,
        fds: Vec<OwnedFd>,
        handover: &Arc<Mutex<Vec<Handover>>>,
        ready: mpsc::Sender<Result<usize, EngineError>>,
    ) -> io::Result<Handle> {
        let wake = Arc::new(sys::eventfd()?);
        let (ctx, crx) = mpsc::channel();
        let (atx, arx) = mpsc::channel();
        let wake_for_driver = wake.as_fd().try_clone_to_owned()?;
        let setup = PartialSetup {
            id,
            listeners: fds,
            settings: Arc::clone(&self.settings),
            resolver: self.resolver.clone(),
            reply: ReplyTo {
                tx: atx,
                wake: Arc::clone(&wake),
            },
            answers: arx,
            commands: crx,
            shard: Arc::clone(&self.shards[id]),
            workers: n,
            verifier: self.verifier.clone(),
            handover: Arc::clone(handover),
            proxy: Arc::clone(&self.proxy),
        };
        let uring = self.uring;
        let thread = std::thread::Builder::new()
            .name(format!("splicegate-w{id}"))
            .spawn(move || run_worker(setup, uring, wake_for_driver, ready))?;
        Ok(Handle {
            thread,
            commands: ctx,
            wake,
        })
    }
}

struct PartialSetup {
    id: usize,
    listeners: Vec<OwnedFd>,
    settings: Shared,
    resolver: Resolver,
    reply: ReplyTo,
    answers: mpsc::Receiver<crate::resolve::Answer>,
    commands: mpsc::Receiver<Command>,
    shard: Arc<Shard>,
    workers: usize,
    verifier: Verifier,
    handover: Arc<Mutex<Vec<Handover>>>,
    proxy: Arc<ProxyListeners>,
}

fn run_worker(
    p: PartialSetup,
    uring: bool,
    wake: OwnedFd,
    ready: mpsc::Sender<Result<usize, EngineError>>,
) {
    let driver = if uring {
        UringDriver::new(1024, wake).map(|d| Driver::Uring(Box::new(d)))
    } else {
        EpollDriver::new(wake).map(Driver::Epoll)
    };
    let driver = match driver {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(EngineError::DriverSetup {
                id: p.id,
                source: e,
            }));
            return;
        }
    };
    let id = p.id;
    let shard = Arc::clone(&p.shard);
    let handover = p.handover;
    let worker = Worker::new(WorkerSetup {
        id,
        driver,
        listeners: p.listeners,
        settings: p.settings,
        resolver: p.resolver,
        reply: p.reply,
        answers: p.answers,
        commands: p.commands,
        shard: p.shard,
        workers: p.workers,
        verifier: p.verifier,
        proxy: p.proxy,
    });
    shard
        .alive
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send(Ok(id));
    drop(ready);
    // `run` consumes the worker: when it returns, the worker's connections and its own listener
    // fds are closed.
    let result = worker.run();
    shard
        .alive
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // Its timer heap went with it.
    shard
        .timer_entries
        .store(0, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = result {
        // Close the engine's duplicates of this worker's listeners too: once no fd refers to a
        // socket, the kernel takes it out of the SO_REUSEPORT group and sends its share of new
        // clients to the live workers (instead of an accept queue nobody serves).
        let mut h = match handover.lock() {
            Ok(h) => h,
            Err(e) => e.into_inner(),
        };
        for addr in h.iter_mut() {
            addr.forget_worker(id);
        }
        drop(h);
        tracing::error!(
            event_id = crate::events::INTERNAL_ERROR,
            worker = id,
            reason = "worker_died",
            error = %e,
            "worker stopped on an error: its listeners are closed, the other workers take its \
             share of new clients; /readyz answers 503"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each bound address keeps the index of its `listen` entry, also when an inherited
    /// (socket-activated) socket serves one of them: the PROXY settings are looked up by it.
    #[test]
    fn origin_follows_every_bound_address_inherited_or_not() {
        let held = bind_one("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let held_addr = held.local_addr().expect("local").as_socket().expect("inet");
        let addrs = [held_addr, "127.0.0.1:0".parse().expect("addr")];
        let inherited = vec![Handover::shared(held_addr, OwnedFd::from(held))];
        let (l, _) = bind_listeners_from(&addrs, 2, inherited).expect("listeners");
        assert_eq!(l.bound.len(), 2);
        assert_eq!(l.bound[0], held_addr);
        assert_eq!(l.origin, vec![0, 1]);
    }

    fn inode(fd: &OwnedFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::File::from(fd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    /// A socket without SO_REUSEPORT (systemd's) is shared: every worker gets a duplicate of
    /// the same socket, and a worker that dies does not close the engine's copy.
    #[test]
    fn a_shared_socket_goes_to_every_worker_and_outlives_a_dead_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sock = OwnedFd::from(l);
        let ino = inode(&sock);
        let (mut listeners, warnings) =
            bind_listeners_from(&[addr], 3, vec![Handover::shared(addr, sock)]).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(listeners.bound, vec![addr]);
        for w in &listeners.per_worker {
            assert_eq!(w.len(), 1);
            assert_eq!(inode(&w[0]), ino, "the same socket, not a new bind");
        }
        let h = &mut listeners.handover[0];
        assert!(h.shared);
        h.forget_worker(0);
        assert_eq!(h.sockets.len(), 1, "the engine's copy stays");
        // A copy for a takeover is described as shared too.
        let c = h.try_clone().unwrap();
        assert!(c.shared && inode(&c.sockets[0]) == ino);
    }

    /// Sockets handed over from another engine or process are spread over the workers; a
    /// worker left without one gets a new SO_REUSEPORT socket on the same port.
    #[test]
    fn handed_over_sockets_are_spread_and_topped_up() {
        let (old, _) = bind_listeners(&["127.0.0.1:0".parse().unwrap()], 2).unwrap();
        let addr = old.bound[0];
        let inodes: Vec<u64> = old.handover[0].sockets.iter().map(inode).collect();
        let (new, _) = bind_listeners_from(&[addr], 3, old.handover).unwrap();
        let got: Vec<u64> = new.per_worker.iter().map(|w| inode(&w[0])).collect();
        assert_eq!(&got[..2], &inodes[..], "the old sockets, in order");
        assert!(
            !inodes.contains(&got[2]),
            "a new socket for the third worker"
        );
        assert_eq!(new.handover[0].owners, vec![0, 1, 2]);
    }
}
