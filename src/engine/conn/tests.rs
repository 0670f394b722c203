//! Unit tests of the connection states: a worker on the fake driver, driven by hand, on a
//! virtual clock (the test sets the worker's `now`, from which every phase computes its
//! deadlines, then fires the deadlines due at it). The sockets are real loopback TCP sockets
//! owned by the test; nothing else runs, and no test sleeps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::auth::Verifier;
use crate::config::Config;
use crate::engine::conn::refusal::LINGER;
use crate::engine::driver::{Driver, Event, FakeDriver, Key};
use crate::engine::worker::{Worker, WorkerSetup, TIMER_BUDGET};
use crate::engine::{conn::State, sys};
use crate::events::Reject;
use crate::metrics::{DnsCacheOutcome, Shard};
use crate::resolve::{Answer, ReplyTo, Resolver};
use std::sync::atomic::Ordering::Relaxed;

const YAML: &str = "\
listen: [\"127.0.0.1:0\"]
metrics_listen: null
allowed_hosts: [\"up.test:1-65535\"]
allowed_destination_networks: [\"127.0.0.0/8\"]
limits:
  header_timeout: 10s
  resolve_timeout: 5s
  connect_timeout: 5s
  idle_timeout: 60s
tls:
  inspect: false
";

/// A worker on the fake driver, with the handles a test needs.
struct Bench {
    worker: Worker,
    /// Answers "from the resolver", injected by the test.
    answers: mpsc::Sender<Answer>,
    _rt: tokio::runtime::Runtime,
    listener: TcpListener,
}

fn bench() -> Bench {
    bench_with(YAML)
}

fn bench_with(yaml: &str) -> Bench {
    let cfg = match Config::from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("test config: {e}"),
    };
    // The resolver's task never runs (the runtime is not driven): answers come from the test.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (resolver, _) = Resolver::start(&cfg.resolver, Duration::from_secs(1), rt.handle());
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(sys::eventfd().expect("eventfd"));
    let (_ctx, crx) = mpsc::channel();
    let worker = Worker::new(WorkerSetup {
        id: 0,
        driver: Driver::Fake(FakeDriver::default()),
        listeners: Vec::new(),
        settings: crate::settings::shared(&cfg),
        resolver,
        reply: ReplyTo {
            tx: tx.clone(),
            wake,
        },
        answers: rx,
        commands: crx,
        shard: Arc::new(Shard::default()),
        workers: 1,
        verifier: Verifier::start(1).expect("verifier"),
        proxy: Arc::default(),
    });
    Bench {
        worker,
        answers: tx,
        _rt: rt,
        listener: TcpListener::bind("127.0.0.1:0").expect("bind"),
    }
}

impl Bench {
    /// A client connected to the test's listener; the server end goes to the worker.
    fn accept(&mut self) -> TcpStream {
        let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (server, _) = self.listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        self.worker.on_accept(0, OwnedFd::from(server));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
    }

    /// A client that sent `CONNECT up.test:PORT` and the worker's read of it; returns the client
    /// and its key.
    fn connect_to(&mut self, port: u16) -> (TcpStream, Key) {
        let mut client = self.accept();
        let client_key = self.fake().watched[0];
        client
            .write_all(format!("CONNECT up.test:{port} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        self.ready(client_key);
        (client, client_key)
    }

    fn fake(&mut self) -> &mut FakeDriver {
        match &mut self.worker.driver {
            Driver::Fake(d) => d,
            _ => unreachable!("the bench runs on the fake driver"),
        }
    }

    /// Report key `k` readable and writable, as a driver would.
    fn ready(&mut self, k: Key) {
        let Key::Conn { slot, gen, .. } = k else {
            panic!("a connection key")
        };
        self.worker.on_event(Event::Ready {
            slot,
            gen,
            readable: true,
            writable: true,
            hup: false,
        });
        self.settle();
    }

    /// Report key `k` with the given readiness, as a driver would.
    fn event(&mut self, k: Key, readable: bool, writable: bool) {
        let Key::Conn { slot, gen, .. } = k else {
            panic!("a connection key")
        };
        self.worker.on_event(Event::Ready {
            slot,
            gen,
            readable,
            writable,
            hup: false,
        });
        self.settle();
    }

    /// What the worker loop does after events: answers, then connections with more to do.
    fn settle(&mut self) {
        while let Ok(a) = self.worker.answers.try_recv() {
            self.worker.on_answer(a);
        }
        for _ in 0..16 {
            let Some((slot, gen)) = self.worker.runnable.pop_front() else {
                break;
            };
            if self.worker.is_current(slot, gen) {
                self.worker.drive(slot);
            }
        }
        let w = &mut self.worker;
        w.registry.flush(&mut w.driver);
    }

    fn state(&self) -> &'static str {
        let Some(conn) = self.worker.slots.first().and_then(|s| s.conn.as_ref()) else {
            return "closed";
        };
        match conn.state {
            State::Proxy { .. } => "proxy",
            State::Head { .. } => "head",
            State::Resolving(_) => "resolving",
            State::Authenticating(_) => "authenticating",
            State::Connecting(_) => "connecting",
            State::Relaying(_) => "relaying",
            State::Tunnel(_) => "tunnel",
            State::Refusing { .. } => "refusing",
            State::Lingering { .. } => "lingering",
        }
    }

    fn deadlines(&self) -> usize {
        self.worker.deadlines.len()
    }

    /// Move the virtual clock to `t` and fire what is due, as a loop turn would.
    fn at(&mut self, t: Instant) {
        self.worker.now = t;
        self.worker.fire_timers(t);
        self.settle();
    }

    /// Wait (bounded, on the kernel, not on the clock) until the upstream socket being dialled
    /// has an outcome: connected or refused.
    fn connect_settled(&mut self) {
        let conn = self.worker.slots[0].conn.as_ref().expect("a connection");
        let State::Connecting(c) = &conn.state else {
            panic!("connecting")
        };
        let up = c.upstream.as_ref().expect("an upstream socket");
        let mut fds = [rustix::event::PollFd::new(
            up,
            rustix::event::PollFlags::OUT,
        )];
        let five = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let n = rustix::event::poll(&mut fds, Some(&five)).expect("poll");
        assert_eq!(n, 1, "the connect has an outcome within 5 s");
    }

    /// The first connection's resolver answer, injected.
    fn answer(&mut self, ips: &[&str]) {
        let gen = self.worker.slots[0].gen;
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.answers
            .send(Answer {
                slot: 0,
                gen,
                result: Ok(crate::resolve::Resolved {
                    ips,
                    source: crate::resolve::Source::Dns {
                        private_link: false,
                    },
                }),
            })
            .unwrap();
        self.settle();
    }

    /// A tunnel to `upstream` through the worker, established at the virtual time `t`; returns
    /// the client (its 200 read), the far end, and the client's and upstream's keys.
    fn tunnel(&mut self, upstream: &TcpListener, t: Instant) -> (TcpStream, TcpStream, Key, Key) {
        self.worker.now = t;
        let port = upstream.local_addr().unwrap().port();
        let (mut client, client_key) = self.connect_to(port);
        self.answer(&["127.0.0.1"]);
        let (far, _) = upstream.accept().unwrap();
        far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let up_key = self.fake().watched[1];
        self.ready(up_key);
        assert_eq!((self.state(), self.deadlines()), ("tunnel", 1));
        // The transition moved the dialled socket into the tunnel, registration and all.
        assert_eq!(self.worker.registry.live(), 2);
        assert!(!self.fake().removed.contains(&up_key));
        let mut got = [0u8; 12];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HTTP/1.1 200");
        let mut head = Vec::new();
        for _ in 0..64 {
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        (client, far, client_key, up_key)
    }
}

/// The smallest step of the clock the tests take.
const TICK: Duration = Duration::from_nanos(1);

/// A port on 127.0.0.1 that refuses connections (bound, never listening, held by the test).
fn refusing_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

#[test]
fn a_hosts_file_name_is_dialled_at_once_with_no_resolver_answer() {
    // The resolver's task never runs here: a name that went to it would stay `resolving`.
    let path = std::env::temp_dir().join(format!(
        "splicegate-conn-hosts-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, "127.0.0.1 up.test\n").unwrap();
    let mut b = bench_with(&format!(
        "{YAML}resolver:\n  hosts_file: \"{}\"\n",
        path.display()
    ));
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (_client, _) = b.connect_to(port);
    assert_eq!((b.state(), b.deadlines()), ("connecting", 1));
    let stats = b.worker.resolver.stats();
    assert_eq!(stats.cached(DnsCacheOutcome::HostsFile), 1);
    let (_far, _) = upstream.accept().unwrap();
    let _ = std::fs::remove_file(path);
}

#[test]
fn header_timeout_fires_at_header_timeout_then_lingers_exactly_two_seconds() {
    let mut b = bench();
    let t0 = Instant::now();
    b.worker.now = t0;
    let mut client = b.accept();
    let client_key = b.fake().watched[0];
    assert_eq!((b.state(), b.deadlines()), ("head", 1));
    // Virtual time: nothing is due one tick before header_timeout (10 s).
    b.at(t0 + Duration::from_secs(10) - TICK);
    assert_eq!(b.state(), "head");
    // At header_timeout exactly: the 408 goes out and the refusal lingers, its deadline
    // replacing the head's.
    let refused = t0 + Duration::from_secs(10);
    b.at(refused);
    assert_eq!((b.state(), b.deadlines()), ("lingering", 1));
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 408");
    assert_eq!(b.worker.deadlines.get(0), Some(refused + LINGER));
    // The linger ends at 2 s, not a tick before.
    b.at(refused + LINGER - TICK);
    assert_eq!(b.state(), "lingering");
    b.at(refused + LINGER);
    assert_eq!((b.state(), b.deadlines()), ("closed", 0));
    assert_eq!(b.fake().removed, vec![client_key]);
    assert_eq!(b.worker.registry.live(), 0);
}

/// A burst of timeouts is expired a batch per turn: one turn handles at most `TIMER_BUDGET`
/// deadlines, the rest stay due (so the next turn's wait does not block) and go in the next
/// turn. Before, one turn expired the whole burst (9,000 slowloris heads) while every other
/// connection's events waited: a legitimate CONNECT beside the attack took 0.1-0.5 s more.
#[test]
fn a_burst_of_header_timeouts_is_expired_a_batch_per_turn() {
    let mut b = bench();
    let t0 = Instant::now();
    b.worker.now = t0;
    let n = TIMER_BUDGET + TIMER_BUDGET / 2;
    let clients: Vec<TcpStream> = (0..n).map(|_| b.accept()).collect();
    assert_eq!(b.deadlines(), n);
    let refused = |b: &Bench| {
        b.worker
            .slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .filter(|c| matches!(c.state, State::Lingering { .. } | State::Refusing { .. }))
            .count()
    };
    let due = t0 + Duration::from_secs(10);
    b.at(due);
    assert_eq!(refused(&b), TIMER_BUDGET);
    assert_eq!(b.worker.next_timeout(), Some(Duration::ZERO));
    b.at(due);
    assert_eq!(refused(&b), n);
    assert!(b.worker.next_timeout() > Some(Duration::ZERO));
    for mut c in clients {
        let mut got = [0u8; 12];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HTTP/1.1 408");
    }
}

/// The head buffer holds what arrived, not a read-sized block: a slowloris client that has sent
/// a few bytes costs a few bytes (it once cost 8-16 KiB, zero-filled, per connection).
#[test]
fn a_dribbled_head_holds_only_the_bytes_that_arrived() {
    let mut b = bench();
    b.worker.now = Instant::now();
    let mut client = b.accept();
    let key = b.fake().watched[0];
    let held = |b: &Bench| -> (usize, usize) {
        match &b.worker.slots[0].conn.as_ref().expect("a connection").state {
            State::Head { buf } => (buf.len(), buf.capacity()),
            _ => panic!("still reading the head"),
        }
    };
    assert_eq!(
        held(&b),
        (0, 0),
        "nothing is allocated before a byte arrives"
    );
    client.write_all(b"CONN").unwrap();
    b.ready(key);
    let (len, cap) = held(&b);
    assert_eq!(len, 4);
    assert!(cap <= 64, "4 bytes arrived, {cap} bytes held");
    client
        .write_all(b"ECT up.test:443 HTTP/1.1\r\nX-Pad: ")
        .unwrap();
    b.ready(key);
    for i in 0..64 {
        client.write_all(b"a").unwrap();
        b.ready(key);
        let (len, cap) = held(&b);
        assert_eq!(len, 38 + i);
        assert!(cap <= 2 * len, "{len} bytes arrived, {cap} bytes held");
    }
    assert_eq!(b.state(), "head");
}

#[test]
fn connect_timeout_counts_from_the_first_address_across_the_second() {
    let mut b = bench();
    // The second address accepts in the kernel (same port, on 127.0.0.2); the fake driver
    // reports nothing for it, so the worker sees a connect that never completes. (The port
    // may be in use on 127.0.0.2: a few ports are tried.)
    let (_held, _silent, refusing) = (0..20)
        .find_map(|_| {
            let (held, port) = refusing_port();
            let silent = TcpListener::bind(("127.0.0.2", port)).ok()?;
            Some((held, silent, port))
        })
        .expect("a port free on 127.0.0.1 and 127.0.0.2");
    let t0 = Instant::now();
    b.worker.now = t0;
    let mut client = b.accept();
    let client_key = b.fake().watched[0];
    client
        .write_all(format!("CONNECT up.test:{refusing} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    b.ready(client_key);
    b.answer(&["127.0.0.1", "127.0.0.2"]);
    assert_eq!(b.state(), "connecting");
    assert_eq!(
        b.worker.deadlines.get(0),
        Some(t0 + Duration::from_secs(5)),
        "connect_timeout (5 s) from the start of the dial"
    );
    // The first address is refused 3 s later (virtual): the second is dialled on the same
    // deadline.
    b.worker.now = t0 + Duration::from_secs(3);
    b.connect_settled();
    let first = b.fake().watched[1];
    b.ready(first);
    assert_eq!(b.state(), "connecting");
    let second = b.fake().watched[2];
    assert_ne!(first, second);
    b.at(t0 + Duration::from_secs(5) - TICK);
    assert_eq!(b.state(), "connecting", "not a tick early");
    b.at(t0 + Duration::from_secs(5));
    assert_eq!(b.state(), "lingering");
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 504");
    assert!(b.fake().removed.contains(&second));
    assert_eq!(b.worker.registry.live(), 1, "only the client is registered");
}

#[test]
fn hello_timeout_closes_an_inspected_tunnel_at_hello_timeout() {
    let yaml = YAML.replace(
        "tls:\n  inspect: false\n",
        "tls:\n  inspect: true\n  hello_timeout: 3s\n",
    );
    let mut b = bench_with(&yaml);
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let t1 = Instant::now();
    let (_client, _far, client_key, up_key) = b.tunnel(&upstream, t1);
    assert_eq!(b.worker.deadlines.get(0), Some(t1 + Duration::from_secs(3)));
    let tls_parse = |b: &Bench| b.worker.shard.rejections[Reject::TlsParse.index()].load(Relaxed);
    let before = tls_parse(&b);
    b.at(t1 + Duration::from_secs(3) - TICK);
    assert_eq!(b.state(), "tunnel", "not a tick early");
    b.at(t1 + Duration::from_secs(3));
    assert_eq!((b.state(), b.deadlines()), ("closed", 0));
    assert_eq!(tls_parse(&b), before + 1, "counted as tls_parse");
    let removed = &b.fake().removed;
    assert!(removed.contains(&client_key) && removed.contains(&up_key));
}

#[test]
fn idle_timeout_is_reset_by_traffic_in_virtual_time() {
    let mut b = bench();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let t1 = Instant::now();
    let (mut client, mut far, client_key, _) = b.tunnel(&upstream, t1);
    // Bytes at 40 s (virtual) move the idle deadline to 40 s + idle_timeout (60 s).
    b.worker.now = t1 + Duration::from_secs(40);
    client.write_all(b"ping").unwrap();
    let mut four = [0u8; 4];
    far.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    for _ in 0..100 {
        b.ready(client_key);
        if far.read(&mut four[..1]).is_ok() {
            break;
        }
    }
    far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    far.read_exact(&mut four[1..]).unwrap();
    assert_eq!(&four, b"ping");
    b.at(t1 + Duration::from_secs(60));
    assert_eq!(b.state(), "tunnel", "traffic at 40 s keeps it open at 60 s");
    assert_eq!(b.deadlines(), 1);
    b.at(t1 + Duration::from_secs(100) - TICK);
    assert_eq!(b.state(), "tunnel", "not a tick early");
    b.at(t1 + Duration::from_secs(100));
    assert_eq!((b.state(), b.deadlines()), ("closed", 0));
    assert_eq!(b.worker.registry.live(), 0);
}

#[test]
fn every_address_dialled_is_a_new_key_and_each_is_removed() {
    let mut b = bench();
    let (_held, port) = refusing_port();
    let (mut client, _) = b.connect_to(port);
    assert_eq!((b.state(), b.deadlines()), ("resolving", 1));
    let gen = b.worker.slots[0].gen;
    b.answers
        .send(Answer {
            slot: 0,
            gen,
            result: Ok(crate::resolve::Resolved {
                ips: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
                source: crate::resolve::Source::Dns {
                    private_link: false,
                },
            }),
        })
        .unwrap();
    b.settle();
    assert_eq!((b.state(), b.deadlines()), ("connecting", 1));
    let first = b.fake().watched[1];
    // The refused connect shows as readiness of the upstream socket.
    b.connect_settled();
    b.ready(first);
    assert_eq!(
        b.state(),
        "connecting",
        "the second address is being dialled"
    );
    let second = b.fake().watched[2];
    assert_ne!(first, second, "a second socket gets its own key");
    assert!(
        b.fake().removed.contains(&first),
        "the first socket's poll is removed"
    );
    b.connect_settled();
    b.ready(second);
    assert_eq!(b.state(), "lingering", "502 after the last address");
    assert!(b.fake().removed.contains(&second));
    assert_eq!(b.deadlines(), 1);
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 502");
    assert_eq!(
        b.worker.registry.live(),
        1,
        "only the client is still registered"
    );
}

#[test]
fn a_tunnel_keeps_one_deadline_and_idles_out_in_virtual_time() {
    let mut b = bench();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let t0 = Instant::now();
    let (mut client, client_key) = b.connect_to(port);
    let gen = b.worker.slots[0].gen;
    b.answers
        .send(Answer {
            slot: 0,
            gen,
            result: Ok(crate::resolve::Resolved {
                ips: vec!["127.0.0.1".parse().unwrap()],
                source: crate::resolve::Source::Dns {
                    private_link: false,
                },
            }),
        })
        .unwrap();
    b.settle();
    let (mut far, _) = upstream.accept().unwrap();
    let up_key = b.fake().watched[1];
    b.ready(up_key);
    assert_eq!((b.state(), b.deadlines()), ("tunnel", 1));
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
    // Bytes flow both ways through the worker.
    let mut head = Vec::new();
    for _ in 0..64 {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    client.write_all(b"ping").unwrap();
    let mut four = [0u8; 4];
    far.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    for _ in 0..100 {
        b.ready(client_key);
        if far.read(&mut four[..1]).is_ok() {
            break;
        }
    }
    far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    far.read_exact(&mut four[1..]).unwrap();
    assert_eq!(&four, b"ping");
    assert_eq!(b.deadlines(), 1, "still one entry for the tunnel");
    // Idle past idle_timeout (virtual time): closed, both sockets removed.
    b.worker.fire_timers(t0 + Duration::from_secs(30));
    assert_eq!(b.state(), "tunnel");
    b.worker.fire_timers(t0 + Duration::from_secs(120));
    assert_eq!((b.state(), b.deadlines()), ("closed", 0));
    b.settle();
    let removed = &b.fake().removed;
    assert!(removed.contains(&client_key) && removed.contains(&up_key));
    assert_eq!(b.worker.registry.live(), 0);
}

#[test]
fn accept_backoff_follows_its_configured_bounds() {
    let yaml = YAML.replace(
        "limits:\n",
        "limits:\n  accept_backoff_min: 50ms\n  accept_backoff_max: 300ms\n",
    );
    let mut b = bench_with(&yaml);
    let t0 = Instant::now();
    b.worker.now = t0;
    let mut pauses = Vec::new();
    for _ in 0..5 {
        let again = b
            .worker
            .on_accept_error(0, std::io::Error::from_raw_os_error(libc::ENOBUFS));
        assert!(!again, "a persistent error pauses accepting");
        let until = b.worker.accept_paused_until.take().expect("a pause");
        pauses.push(until.duration_since(t0).as_millis());
    }
    assert_eq!(pauses, vec![50, 100, 200, 300, 300]);
}

#[test]
fn through_a_relay_the_dialled_socket_moves_into_relaying_then_the_tunnel() {
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = format!(
        "{YAML}relay_proxy:\n  address: \"http://{}\"\n",
        relay.local_addr().unwrap()
    );
    let mut b = bench_with(&yaml);
    let mut client = b.accept();
    let client_key = b.fake().watched[0];
    client
        .write_all(b"CONNECT up.test:443 HTTP/1.1\r\n\r\n")
        .unwrap();
    b.ready(client_key);
    assert_eq!(b.state(), "connecting", "an IP relay is dialled at once");
    let (mut far, _) = relay.accept().unwrap();
    far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let up_key = b.fake().watched[1];
    b.ready(up_key);
    assert_eq!(b.state(), "relaying");
    assert_eq!(b.worker.registry.live(), 2, "the relay socket moved on");
    let mut head = Vec::new();
    for _ in 0..256 {
        let mut byte = [0u8; 1];
        far.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    assert!(head.starts_with(b"CONNECT up.test:443 HTTP/1.1\r\n"));
    far.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    for _ in 0..100 {
        b.ready(up_key);
        if b.state() == "tunnel" {
            break;
        }
    }
    assert_eq!((b.state(), b.deadlines()), ("tunnel", 1));
    assert_eq!(b.worker.registry.live(), 2, "and into the tunnel");
    assert!(!b.fake().removed.contains(&up_key));
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
}

/// The bench's listener as a PROXY protocol one, trusting loopback.
fn proxy_bench(yaml: &str) -> Bench {
    let mut b = bench_with(yaml);
    let nets = vec!["127.0.0.0/8".parse().expect("network")];
    let from = crate::proto::proxy::ProxySources::new(nets).expect("non-empty");
    b.worker.listener_proxy = vec![Some(Arc::new(from))];
    b
}

fn clients_of(b: &Bench) -> Vec<std::net::IpAddr> {
    let m = b.worker.shard.clients.lock().expect("clients map");
    let mut v: Vec<_> = m.keys().copied().collect();
    v.sort();
    v
}

/// The header and the CONNECT head in one read: the head is not lost, the header's client
/// becomes the connection's peer and is the one counted, and the count goes with the close.
#[test]
fn proxy_header_and_head_in_one_read_count_the_header_client() {
    let mut b = proxy_bench(YAML);
    let t0 = Instant::now();
    b.worker.now = t0;
    let mut client = b.accept();
    assert_eq!(b.state(), "proxy");
    assert!(
        clients_of(&b).is_empty(),
        "nobody is counted before the header"
    );
    let key = b.fake().watched[0];
    client
        .write_all(
            b"PROXY TCP4 192.0.2.9 127.0.0.1 4711 8080\r\nCONNECT up.test:1 HTTP/1.1\r\n\r\n",
        )
        .unwrap();
    b.ready(key);
    assert_eq!(
        b.state(),
        "resolving",
        "the head after the header was parsed"
    );
    let peer = b.worker.slots[0].conn.as_ref().map(|c| c.peer);
    assert_eq!(peer, Some("192.0.2.9:4711".parse().unwrap()));
    assert_eq!(
        clients_of(&b),
        vec!["192.0.2.9".parse::<std::net::IpAddr>().unwrap()]
    );
    drop(client);
    b.worker.close(0, crate::engine::conn::close::Close::Quiet);
    assert!(
        clients_of(&b).is_empty(),
        "undone with the address it was counted with"
    );
    assert_eq!(b.worker.shard.active_connections.load(Relaxed), 0);
}

/// No header within `header_timeout`: closed unanswered at the deadline, to the tick.
#[test]
fn proxy_header_timeout_closes_unanswered() {
    let mut b = proxy_bench(YAML);
    let t0 = Instant::now();
    b.worker.now = t0;
    let mut client = b.accept();
    let key = b.fake().watched[0];
    client.write_all(b"PROXY TCP4 192.0").unwrap();
    b.ready(key);
    b.at(t0 + Duration::from_secs(10) - TICK);
    assert_eq!(b.state(), "proxy");
    b.at(t0 + Duration::from_secs(10));
    assert_eq!(b.state(), "closed");
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got);
    assert!(got.is_empty(), "no answer: {got:?}");
    assert_eq!(
        b.worker.shard.rejections[Reject::ProxyProtocol.index()].load(Relaxed),
        1
    );
    assert_eq!(b.worker.shard.active_connections.load(Relaxed), 0);
}

/// Over the per-client limit after the header: 429, and the place of the refused connection
/// is never taken; a LOCAL connection is neither counted nor limited.
#[test]
fn proxy_client_limit_and_local() {
    let yaml = YAML.replace("limits:\n", "limits:\n  max_connections_per_client: 1\n");
    let mut b = proxy_bench(&yaml);
    let counts = Arc::clone(&b.worker.settings.load().clients);
    let t0 = Instant::now();
    b.worker.now = t0;
    let header = b"PROXY TCP4 192.0.2.9 127.0.0.1 1 8080\r\nCONNECT up.test:1 HTTP/1.1\r\n\r\n";
    let mut first = b.accept();
    let k1 = b.fake().watched[0];
    first.write_all(header).unwrap();
    b.ready(k1);
    assert_eq!(counts.open("192.0.2.9".parse().unwrap()), 1);
    let mut second = b.accept();
    let k2 = *b.fake().watched.last().unwrap();
    second.write_all(header).unwrap();
    b.ready(k2);
    let mut got = [0u8; 12];
    second.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 429");
    assert_eq!(
        counts.open("192.0.2.9".parse().unwrap()),
        1,
        "the refused one took nothing"
    );
    let mut local = b.accept();
    let k3 = *b.fake().watched.last().unwrap();
    local
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00CONNECT up.test:1 HTTP/1.1\r\n\r\n")
        .unwrap();
    b.ready(k3);
    assert_eq!(counts.clients(), 1, "LOCAL is not a client");
    assert_eq!(clients_of(&b).len(), 1, "nor in connected_clients");
    b.worker.close_all();
    assert_eq!(counts.clients(), 0, "every hold given back");
    assert!(clients_of(&b).is_empty());
    drop((first, second, local));
}

/// A dialled socket is connected when it reports writable (an error reports readable too); a
/// wake-up that is not writable leaves it connecting. The tunnel then starts from the readiness
/// seen, not assuming the upstream readable.
#[test]
fn a_writable_wake_up_completes_the_connect_and_the_tunnel_keeps_its_readiness() {
    let mut b = bench();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (mut client, _) = b.connect_to(port);
    // The read that brought the whole head was the last one: no read bound to fail with EAGAIN.
    assert_eq!(b.state(), "resolving");
    assert!(b.worker.slots[0].conn.as_ref().expect("a connection").c_rd);
    b.answer(&["127.0.0.1"]);
    b.connect_settled();
    let up_key = b.fake().watched[1];
    b.event(up_key, false, false);
    assert_eq!(b.state(), "connecting");
    b.event(up_key, false, true);
    assert_eq!(b.state(), "tunnel");
    let conn = b.worker.slots[0].conn.as_ref().expect("a connection");
    let State::Tunnel(t) = &conn.state else {
        panic!("tunnel")
    };
    assert!(!t.u_rd, "the upstream was not reported readable");
    assert!(!conn.c_rd, "the tunnel read the client until EAGAIN");
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
    // Bytes from the far end arrive with a readable wake-up and go through.
    let (mut far, _) = upstream.accept().unwrap();
    far.write_all(b"hello").unwrap();
    {
        use std::os::fd::AsFd;
        let conn = b.worker.slots[0].conn.as_ref().expect("a connection");
        let State::Tunnel(t) = &conn.state else {
            panic!("tunnel")
        };
        let fd = t.upstream.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let five = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&five)).expect("poll"), 1);
    }
    b.event(up_key, true, false);
    let mut rest = Vec::new();
    for _ in 0..64 {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).unwrap();
        rest.push(byte[0]);
        if rest.ends_with(b"hello") {
            break;
        }
    }
    assert!(rest.ends_with(b"hello"));
}
