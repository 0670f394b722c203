//! High availability behind a real load balancer (issue 14), in network namespaces the test
//! creates: agent hosts, a balancer running Debian's `haproxy` with `deploy/haproxy.cfg` itself
//! (only its stats socket path changed), two gateway hosts running the binary under test, and an
//! upstream host with a TLS sink that checks every byte (`support/fleet.rs`). The lab uses the
//! addresses `deploy/haproxy.cfg` names, on one bridged 10.0.0.0/24 that exists only inside the
//! lab's namespaces.
//!
//! - `drain_then_crash_behind_haproxy`: 200 agents; SIGTERM gateway 1 (drain grace, HAProxy's
//!   mark within two checks, nothing new after it, tunnels finish, 0 failed uploads), start it
//!   again, SIGKILL gateway 2 (only uploads in flight there fail, all resent through gateway 1,
//!   no byte wrong).
//! - `takeover_under_a_connect_storm_refuses_nothing`: `run --takeover` under > 1,000
//!   CONNECTs/s through HAProxy: 0 refused, 0 reset.
//! - `agents_keep_their_identity_behind_haproxy`: PROXY v2 from HAProxy; each agent's `ip:port`
//!   in the events, a client network rule, a lockout of one agent only.
//!
//! About 40 s of wall time in all. Skipped, with the reason printed, when not root or when `ip netns`, `haproxy` or `openssl`
//! is missing (`scripts/install-test-deps.sh` installs them).

mod support;

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/haproxy.rs"]
mod haproxy;
#[path = "support/netns.rs"]
mod netns;

use fleet::{AgentSpec, Fleet, Sink, SinkCert, SINK_NAME};
use haproxy::Haproxy;
use netns::Lab;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use support::{Config, Gateway};

const BALANCER: &str = "10.0.0.2";
const GW: [&str; 2] = ["10.0.0.11", "10.0.0.12"];
const AGENT_1: &str = "10.0.0.101";
const UPSTREAM: &str = "10.0.0.200";
/// The stats socket path `deploy/haproxy.cfg` names (replaced by one in a temp dir).
const STATS_SOCKET: &str = "/run/haproxy/splicegate.sock";
/// The backend and server names in `deploy/haproxy.cfg`.
const BACKEND: &str = "splicegate";
const SERVERS: [&str; 2] = ["gw1", "gw2"];
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `limits.drain_grace` of the lab's gateways, as deploy/haproxy.cfg documents it: above
/// inter x fall (2 s).
const DRAIN_GRACE: Duration = Duration::from_secs(3);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a lab address")
}

/// Whether the lab cannot be built here (the reason is printed).
fn skip() -> bool {
    match netns::unavailable(&["ip", "haproxy", "openssl"]) {
        Some(reason) => {
            eprintln!("SKIP: {reason}");
            true
        }
        None => false,
    }
}

/// `inter` and `fall` of the `default-server` line in `deploy/haproxy.cfg`.
struct Checks {
    inter: Duration,
    fall: u32,
}

impl Checks {
    fn parse(cfg: &str) -> Checks {
        let line = cfg
            .lines()
            .find(|l| l.trim_start().starts_with("default-server"))
            .expect("deploy/haproxy.cfg has a default-server line");
        let after = |key: &str| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == key);
            words
                .next()
                .unwrap_or_else(|| panic!("default-server has no `{key}`: {line}"))
                .to_string()
        };
        let inter = after("inter");
        let inter = match inter.strip_suffix("ms") {
            Some(ms) => Duration::from_millis(ms.parse().expect("inter in ms")),
            None => Duration::from_secs(
                inter
                    .trim_end_matches('s')
                    .parse()
                    .expect("inter in seconds"),
            ),
        };
        Checks {
            inter,
            fall: after("fall").parse().expect("fall is a count"),
        }
    }

    /// The latest a failing gateway may still be UP: the first failed check up to `inter`
    /// after the failure, the `fall`-th one `fall - 1` intervals later, plus a check's time.
    fn down_within(&self) -> Duration {
        self.inter * self.fall + Duration::from_millis(500)
    }
}

/// The whole lab, its processes declared first so that they stop before the namespaces go.
struct Site {
    haproxy: Haproxy,
    _socket_dir: support::TempDir,
    gateways: [Option<Gateway>; 2],
    configs: [Config; 2],
    sink: Sink,
    cert: SinkCert,
    checks: Checks,
    lab: Lab,
}

/// A lab gateway's configuration: the PROXY protocol from the balancer (HAProxy's
/// send-proxy-v2), the probe port HAProxy checks (health_listen, 8081), the
/// drain grace deploy/haproxy.cfg asks for, `/metrics` on the host's own loopback, and no
/// takeover socket unless a test gives one (the default path is machine-wide).
fn gateway_config(addr: &str, takeover: Option<&Path>) -> Config {
    let takeover = match takeover {
        Some(p) => support::yq(&p.display().to_string()),
        None => "null".into(),
    };
    Config::new()
        .listen(&[&format!(
            "{{address: \"{addr}:8080\", proxy_protocol: true, proxy_from: [\"{BALANCER}/32\"]}}"
        )])
        .allow_host(SINK_NAME)
        .map_host(SINK_NAME, UPSTREAM)
        .port(443)
        .port(fleet::DISCARD_PORT)
        .destination_network("10.0.0.0/24")
        .inspect_tls(&[])
        .limit("drain_timeout", &format!("{}s", DRAIN_TIMEOUT.as_secs()))
        .limit("drain_grace", &format!("{}s", DRAIN_GRACE.as_secs()))
        .raw(&format!(
            "health_listen: \"{addr}:8081\"\ntakeover_socket: {takeover}"
        ))
}

impl Site {
    /// Agent host 1, the balancer, the gateways (with [`gateway_config`]) and the upstream.
    fn start() -> Site {
        Site::start_with(&[("agent1", &[AGENT_1])], |i| gateway_config(GW[i], None))
    }

    /// The lab with these agent hosts (name, addresses) and the gateways' configurations.
    fn start_with(agents: &[(&str, &[&str])], config: impl Fn(usize) -> Config) -> Site {
        let mut hosts = agents.to_vec();
        hosts.extend_from_slice(&[
            ("balancer", &[BALANCER][..]),
            ("gw1", &[GW[0]]),
            ("gw2", &[GW[1]]),
            ("upstream", &[UPSTREAM]),
        ]);
        let lab = Lab::new(&hosts);
        let cert = SinkCert::new();
        let sink = Sink::start(&lab, "upstream", SocketAddr::new(ip(UPSTREAM), 443), &cert);
        let configs = [0, 1].map(&config);
        let gateways = [0, 1].map(|i| Some(start_gateway(&lab, &configs[i], i)));
        let deployed = include_str!("../deploy/haproxy.cfg");
        let checks = Checks::parse(deployed);
        let socket_dir = support::TempDir::new("haproxy-socket");
        let socket = socket_dir.path().join("stats.sock");
        assert!(
            deployed.contains(STATS_SOCKET),
            "deploy/haproxy.cfg should name the stats socket {STATS_SOCKET}"
        );
        let cfg = deployed.replace(STATS_SOCKET, &socket.display().to_string());
        let haproxy = Haproxy::start(&lab, "balancer", &cfg, &socket);
        let site = Site {
            haproxy,
            _socket_dir: socket_dir,
            gateways,
            configs,
            sink,
            cert,
            checks,
            lab,
        };
        for s in SERVERS {
            site.wait_status(s, "UP", Duration::from_secs(10));
        }
        site
    }

    fn gateway(&mut self, i: usize) -> &mut Gateway {
        self.gateways[i].as_mut().expect("the gateway is running")
    }

    /// Wait until HAProxy shows `server` as `status`; when it saw it.
    fn wait_status(&self, server: &str, status: &str, timeout: Duration) -> Instant {
        match self
            .haproxy
            .wait_server(BACKEND, server, |s| s.status == status, timeout)
        {
            Some((_, at)) => at,
            None => panic!(
                "HAProxy did not mark {server} {status} within {timeout:?}: {:?}\n{}",
                self.haproxy.server(BACKEND, server),
                self.haproxy.log()
            ),
        }
    }

    /// A fleet of `agents` agents in agent host 1 (the load generator's agent profile, scaled to
    /// a few seconds per phase).
    fn agents(&self, agents: u32) -> Fleet {
        Fleet::start(
            &AgentSpec {
                netns: self.lab.netns("agent1").to_string(),
                source: ip(AGENT_1),
                proxy: SocketAddr::new(ip(BALANCER), 8080),
                agents,
                first_id: 0,
                upload: 64 * 1024,
                interval: Duration::from_millis(300),
                uploads_per_tunnel: 4,
                credentials: None,
            },
            &self.cert,
        )
    }

    /// Wait until each gateway carries at least a quarter of the open tunnels (leastconn
    /// balances as tunnels are recycled).
    fn wait_balanced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let open = GW.map(|g| self.sink.stats.open(ip(g)));
            let total: u64 = open.iter().sum();
            if total > 0 && open.iter().all(|n| *n * 4 >= total) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy should spread the tunnels over both gateways within {timeout:?}: open {open:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn list(failures: &[fleet::Failure]) -> String {
    failures
        .iter()
        .map(|f| format!("\n  {f}"))
        .collect::<String>()
}

fn start_gateway(lab: &Lab, cfg: &Config, i: usize) -> Gateway {
    Gateway::start_wrapped(cfg.clone(), &lab.wrapper(SERVERS[i]))
        .expect("the gateway starts in its namespace")
}

/// Drain, then crash, under a few hundred agents: SIGTERM gateway 1 (HAProxy takes it out within
/// two checks, nothing new reaches it, its tunnels finish, no upload fails); start it again;
/// SIGKILL gateway 2 (only uploads in flight there fail, every one is resent through gateway 1,
/// no byte is wrong).
#[test]
fn drain_then_crash_behind_haproxy() {
    if skip() {
        return;
    }
    let _heavy = support::heavy_lock();
    let mut site = Site::start();
    let agents = 200;
    let fleet = site.agents(agents);
    site.wait_balanced(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));

    // --- Drain ---------------------------------------------------------------------------
    let gw1 = ip(GW[0]);
    let open_at_term = site.sink.stats.open(gw1);
    let t_term = Instant::now();
    site.gateway(0).sigterm();
    let t_down = site.wait_status("gw1", "DOWN", site.checks.down_within() * 2);
    assert!(
        t_down - t_term <= site.checks.down_within(),
        "HAProxy marked gw1 down {:?} after SIGTERM; two checks allow {:?}",
        t_down - t_term,
        site.checks.down_within()
    );
    let exit = site
        .gateway(0)
        .wait_exit(DRAIN_GRACE + DRAIN_TIMEOUT + Duration::from_secs(5))
        .expect("gateway 1 exits after its drain");
    let drained_in = t_term.elapsed();
    assert!(exit.success(), "gateway 1 exits 0 after draining: {exit}");
    assert!(
        drained_in >= DRAIN_GRACE,
        "gateway 1 keeps accepting for drain_grace ({DRAIN_GRACE:?}); it exited after {drained_in:?}"
    );
    assert!(
        drained_in < DRAIN_GRACE + DRAIN_TIMEOUT,
        "gateway 1's tunnels should finish by themselves, before drain_timeout ({DRAIN_TIMEOUT:?}); it took {drained_in:?}"
    );
    // drain_grace outlasted HAProxy's checks: HAProxy never met a closed listener.
    let row = site.haproxy.server(BACKEND, "gw1");
    assert_eq!(
        (row.econ, row.wretr, row.wredis),
        (0, 0, 0),
        "no connection to the draining gateway is refused or retried: {row:?}"
    );
    // A CONNECT HAProxy had passed on just before the mark reaches the sink within milliseconds.
    let late = site
        .sink
        .stats
        .accepted_since(gw1, t_down + Duration::from_millis(250));
    assert_eq!(
        late, 0,
        "no new tunnel reaches gateway 1 after HAProxy marked it down"
    );
    assert!(
        open_at_term > 0,
        "gateway 1 carried no tunnel at SIGTERM: the drain test would prove nothing"
    );
    let failures = fleet.stats.failures();
    assert!(
        failures.is_empty(),
        "no upload fails while gateway 1 drains: {}",
        list(&failures)
    );
    let setup = fleet.stats.setup_failures();
    assert!(
        setup.is_empty(),
        "no tunnel set-up fails while gateway 1 drains: {}",
        list(&setup)
    );
    assert_eq!(
        fleet.stats.stale.load(Relaxed),
        0,
        "the draining gateway closes no idle tunnel under an agent"
    );
    eprintln!(
        "drain: gw1 had {open_at_term} open tunnels at SIGTERM, marked down after {:?}, exited after {drained_in:?}; 0 failed uploads",
        t_down - t_term
    );

    // --- Crash ---------------------------------------------------------------------------
    site.gateways[0] = Some(start_gateway(&site.lab, &site.configs[0], 0));
    site.wait_status("gw1", "UP", Duration::from_secs(10));
    site.wait_balanced(Duration::from_secs(15));
    let gw2 = ip(GW[1]);
    let acked_before = fleet.stats.acked();
    let open_at_kill = site.sink.stats.open(gw2);
    let t_kill = Instant::now();
    site.gateway(1).signal(libc::SIGKILL);
    site.gateway(1)
        .wait_exit(Duration::from_secs(5))
        .expect("gateway 2 dies at SIGKILL");
    let t_down2 = site.wait_status("gw2", "DOWN", site.checks.down_within() * 2);
    std::thread::sleep(Duration::from_secs(2));
    let t_end = Instant::now();
    let stats = fleet.stop();

    let failures = stats.failures();
    for f in &failures {
        assert!(
            f.gateway == Some(gw2) && f.at >= t_kill,
            "only uploads in flight on gateway 2 may fail: {f}"
        );
        assert!(
            stats.is_acked(f.agent, f.seq),
            "the agent should have sent the upload again after it failed: {f}"
        );
    }
    // A tunnel being set up through gateway 2 at the kill (HAProxy already connected to it,
    // the CONNECT unanswered, or answered and the TLS handshake not done) breaks before the sink
    // could say which gateway carried it: that upload was in flight there too. Any other
    // set-up failure (HAProxy finding no live gateway) would come later than HAProxy's mark.
    let setup = stats.setup_failures();
    for f in &setup {
        assert!(
            f.at >= t_kill && f.at <= t_down2 + Duration::from_millis(500),
            "only tunnels being set up on gateway 2 when it died may break: {f}"
        );
        assert!(
            stats.is_acked(f.agent, f.seq),
            "the agent should have sent the upload again: {f}"
        );
    }
    assert!(
        failures.len() as u64 <= open_at_kill,
        "{} uploads failed but gateway 2 carried only {open_at_kill} tunnels",
        failures.len()
    );
    // Acknowledgements already on their way at the kill may be read a little later by a busy
    // agent thread; a second after HAProxy's mark nothing can come through the dead gateway.
    assert_eq!(
        stats.acked_via_since(gw2, t_down2 + Duration::from_secs(1)),
        0,
        "no upload is acknowledged through the dead gateway"
    );
    let after = stats.acked_via_since(gw1, t_down2);
    assert!(
        after >= agents as usize,
        "every agent goes on through gateway 1: {after} uploads in {:?} for {agents} agents",
        t_end - t_down2
    );
    assert_eq!(stats.rejected.load(Relaxed), 0);
    assert_eq!(
        site.sink.stats.corrupt.load(Relaxed),
        0,
        "no byte is corrupted"
    );
    eprintln!(
        "crash: gw2 carried {open_at_kill} tunnels at SIGKILL; {} uploads in flight and {} tunnels being set up \
         ({} of them answered 200) failed, all resent through gw1; {} uploads acknowledged in all ({} before the kill); \
         marked down after {:?}",
        failures.len(),
        setup.len(),
        setup.iter().filter(|f| f.answered).count(),
        stats.acked(),
        acked_before,
        t_down2 - t_kill
    );
}

/// `splicegate user add NAME --users-file FILE`, the password on standard input.
fn add_user(file: &Path, name: &str, password: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let out = Command::new(support::bin())
        .args(["user", "add", name, "--users-file"])
        .arg(file)
        .args(["--pid-file", "/nonexistent/splicegate.pid"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                i.write_all(format!("{password}\n").as_bytes())?;
            }
            c.wait_with_output()
        })
        .expect("run splicegate user add");
    assert!(out.status.success(), "user add {name}: {out:?}");
}

/// The first event on either gateway that `pred` accepts, within `timeout`.
fn event_on_either(site: &Site, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for g in site.gateways.iter().flatten() {
            if let Some(e) = g.all_events().into_iter().find(|e| pred(e)) {
                return e;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no such event on either gateway within 5 s; gateway logs:\n{}\n{}",
            site.gateways[0]
                .as_ref()
                .map(Gateway::log_dump)
                .unwrap_or_default(),
            site.gateways[1]
                .as_ref()
                .map(Gateway::log_dump)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// CONNECT through the balancer from `source` in agent host `host`, with `password` for the
/// user `agent`: the answer's status (or the error when none came) and the agent's own
/// `ip:port`. The tunnel, if any, is closed on return.
fn login(site: &Site, host: &str, source: &str, password: &str) -> (Result<u16, String>, String) {
    let credentials = ("agent".to_string(), password.to_string());
    netns::within(site.lab.netns(host), || {
        let mut s = fleet::dial(ip(source), SocketAddr::new(ip(BALANCER), 8080))
            .unwrap_or_else(|e| panic!("{source} cannot reach the balancer: {e}"));
        let me = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
        (
            fleet::connect(&mut s, Some(&credentials)).map_err(|e| e.to_string()),
            me,
        )
    })
}

/// Identity behind the balancer: each agent's own `ip:port` is in the gateways' events, a
/// client network admits agent host 1 and refuses agent host 2, and five bad logins lock out
/// only the agent that made them.
#[test]
fn agents_keep_their_identity_behind_haproxy() {
    if skip() {
        return;
    }
    let _heavy = support::heavy_lock();
    const AGENT_1B: &str = "10.0.0.103";
    const AGENT_2: &str = "10.0.0.102";
    let dir = support::TempDir::new("ha-users");
    let users = dir.path().join("users");
    add_user(&users, "agent", "right");
    let site = Site::start_with(
        &[("agent1", &[AGENT_1, AGENT_1B]), ("agent2", &[AGENT_2])],
        |i| {
            gateway_config(GW[i], None).raw(&format!(
                "allowed_client_networks: [\"{AGENT_1}/32\", \"{AGENT_1B}/32\"]\n\
                 client_auth:\n  users_file: {}\n  max_failures: 5\n  failure_window: 60s\n",
                support::yq(&users.display().to_string())
            ))
        },
    );
    let is = |e: &serde_json::Value, key: &str, want: &str| {
        support::field_str(e, key).as_deref() == Some(want)
    };

    // The lockout counts per gateway: send every login to gateway 1. Agent 1b has never logged
    // in (a worker that accepted these credentials before answers from its cache).
    site.haproxy
        .command("disable server splicegate/gw2")
        .expect("disable gw2 on the stats socket");
    site.wait_status("gw2", "MAINT", Duration::from_secs(5));
    let mut bad = Vec::new();
    for i in 0..5 {
        let (status, me) = login(&site, "agent1", AGENT_1B, "wrong");
        assert_eq!(status, Ok(407), "bad login {i} from {me}");
        bad.push(me);
    }
    let (status, me) = login(&site, "agent1", AGENT_1B, "right");
    assert_eq!(
        status,
        Ok(429),
        "after five bad logins {me} is locked out, even with the right password"
    );
    let (status, me) = login(&site, "agent1", AGENT_1, "right");
    assert_eq!(
        status,
        Ok(200),
        "{me}, another agent behind the same balancer, is not locked out"
    );
    site.haproxy
        .command("enable server splicegate/gw2")
        .expect("enable gw2 on the stats socket");
    site.wait_status("gw2", "UP", Duration::from_secs(10));

    // Each agent's own address, exactly as it connected, is in the events: the tunnel of
    // agent 1, the bad logins of agent 1b, the refusal of agent host 2.
    let ev = event_on_either(&site, |e| {
        is(e, "message", "tunnel established") && is(e, "client", &me)
    });
    assert_eq!(support::event_id(&ev), Some(100), "{ev}");
    for me in &bad {
        let ev = event_on_either(&site, |e| {
            is(e, "reason", "client_auth") && is(e, "client", me)
        });
        assert_eq!(support::event_id(&ev), Some(105), "{ev}");
    }
    // Agent host 2 is outside allowed_client_networks: closed unanswered, event 105 naming it.
    let (status, me) = login(&site, "agent2", AGENT_2, "right");
    assert!(status.is_err(), "agent host 2 gets no answer: {status:?}");
    let ev = event_on_either(&site, |e| {
        is(e, "reason", "client_network") && is(e, "client", &me)
    });
    assert_eq!(support::event_id(&ev), Some(105), "{ev}");
    // A new agent-1 tunnel may go to either gateway now, and is admitted on both.
    for _ in 0..4 {
        let (status, me) = login(&site, "agent1", AGENT_1, "right");
        assert_eq!(status, Ok(200), "{me} is admitted");
    }
}

/// A binary upgrade through the takeover under a CONNECT storm: the new process receives the
/// listening sockets while the old one drains, and no CONNECT is refused or reset; HAProxy
/// never met a closed listener either.
#[test]
fn takeover_under_a_connect_storm_refuses_nothing() {
    if skip() {
        return;
    }
    let _heavy = support::heavy_lock();
    let dir = support::TempDir::new("ha-takeover");
    let socket = dir.path().join("takeover.sock");
    let mut site = Site::start_with(&[("agent1", &[AGENT_1])], |i| {
        gateway_config(GW[i], (i == 0).then_some(socket.as_path()))
    });
    // Every CONNECT of the storm goes to gateway 1, the one upgraded.
    site.haproxy
        .command("disable server splicegate/gw2")
        .expect("disable gw2 on the stats socket");
    site.wait_status("gw2", "MAINT", Duration::from_secs(5));

    let storm_for = Duration::from_secs(8);
    let netns = site.lab.netns("agent1").to_string();
    let storm = std::thread::spawn(move || {
        fleet::storm(
            &netns,
            ip(AGENT_1),
            SocketAddr::new(ip(BALANCER), 8080),
            24,
            storm_for,
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    // `splicegate run --takeover PATH`, in gateway 1's host, with the same configuration.
    let script = format!("exec \"$0\" \"$@\" --takeover '{}'", socket.display());
    let wrapper = [
        "ip",
        "netns",
        "exec",
        site.lab.netns("gw1"),
        "sh",
        "-c",
        &script,
    ];
    let new =
        Gateway::start_wrapped(site.configs[0].clone(), &wrapper).expect("the new process starts");
    let t_new = Instant::now();
    let old_exit = site
        .gateway(0)
        .wait_exit(DRAIN_GRACE + DRAIN_TIMEOUT + Duration::from_secs(5))
        .expect("the old process drains and exits after the takeover");
    let old_gone = t_new.elapsed();
    let result = storm.join().expect("the storm thread");
    let old = site.gateways[0].replace(new).expect("the old gateway");
    assert!(
        old_exit.success(),
        "the old process exits 0: {old_exit}\n{}",
        old.log_dump()
    );

    assert_eq!(
        (result.refused, result.reset, result.other),
        (0, 0, 0),
        "no CONNECT is refused or reset during the takeover: {result:?}"
    );
    let rate = result.per_second();
    assert!(
        rate >= 1000.0,
        "the storm should offer at least 1,000 CONNECTs per second: {result:?}"
    );
    let row = site.haproxy.server(BACKEND, "gw1");
    assert_eq!(
        (row.econ, row.wretr, row.wredis),
        (0, 0, 0),
        "HAProxy never met a refused connection to the upgraded gateway: {row:?}"
    );
    let served = site
        .gateway(0)
        .events(100)
        .iter()
        .filter(|e| support::field_str(e, "message").as_deref() == Some("tunnel established"))
        .count();
    assert!(
        served > 0,
        "the new process served part of the storm:\n{}",
        site.gateway(0).log_dump()
    );
    assert!(
        old_gone < storm_for - Duration::from_secs(2),
        "the storm should outlast the old process (gone {old_gone:?} after the new one started)"
    );
    eprintln!(
        "upgrade: {} CONNECTs in {:.1} s ({rate:.0}/s), 0 refused, 0 reset; the old process left {old_gone:?} \
         after the new one started; the new one set up {served} tunnels",
        result.ok, result.seconds
    );
}
