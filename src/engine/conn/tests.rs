//! Unit tests of the connection states: a worker on the fake driver, driven by hand, with a
//! virtual clock for its deadlines (`fire_timers(now)` with a `now` the test chooses). The
//! sockets are real loopback TCP sockets owned by the test; nothing else runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::auth::Verifier;
use crate::config::Config;
use crate::engine::driver::{Driver, Event, FakeDriver, Key};
use crate::engine::worker::{Worker, WorkerSetup};
use crate::engine::{conn::State, sys};
use crate::metrics::Shard;
use crate::resolve::{Answer, ReplyTo, Resolver};

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
    let cfg = match Config::from_yaml(YAML) {
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
        self.worker.on_accept(OwnedFd::from(server));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
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
}

/// A port on 127.0.0.1 that refuses connections (bound, never listening, held by the test).
fn refusing_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

#[test]
fn header_timeout_refuses_then_closes_with_one_deadline_throughout() {
    let mut b = bench();
    let t0 = Instant::now();
    let mut client = b.accept();
    let client_key = b.fake().watched[0];
    assert_eq!((b.state(), b.deadlines()), ("head", 1));
    // Virtual time: nothing is due before header_timeout.
    b.worker.fire_timers(t0 + Duration::from_secs(9));
    assert_eq!(b.state(), "head");
    // The 408 goes out at once and the refusal lingers: its deadline replaces the head's.
    let refused = t0 + Duration::from_millis(10_500);
    b.worker.fire_timers(refused);
    let mut got = [0u8; 12];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 408");
    // (The linger deadline was set from the real clock, so by the virtual 10.5 s it was due
    // too: the connection is closed in the same turn.)
    assert_eq!((b.state(), b.deadlines()), ("closed", 0));
    b.settle();
    assert_eq!(b.fake().removed, vec![client_key]);
    assert_eq!(b.worker.registry.live(), 0);
}

#[test]
fn every_address_dialled_is_a_new_key_and_each_is_removed() {
    let mut b = bench();
    let (_held, port) = refusing_port();
    let mut client = b.accept();
    let client_key = b.fake().watched[0];
    client
        .write_all(format!("CONNECT up.test:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    b.ready(client_key);
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
    std::thread::sleep(Duration::from_millis(50));
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
    std::thread::sleep(Duration::from_millis(50));
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
    let mut client = b.accept();
    let client_key = b.fake().watched[0];
    client
        .write_all(format!("CONNECT up.test:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    b.ready(client_key);
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
    std::thread::sleep(Duration::from_millis(20));
    b.ready(client_key);
    let mut four = [0u8; 4];
    far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    far.read_exact(&mut four).unwrap();
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
