//! Shared harness for the splicegate integration tests.
//!
//! - [`Config`]: builds the YAML config a test gateway runs with (test defaults: 2 workers,
//!   `listen: ["127.0.0.1:0"]`, `metrics_listen: "127.0.0.1:0"`, engine from
//!   `SPLICEGATE_TEST_ENGINE`).
//! - [`Gateway`]: spawns the real binary, collects its JSON log lines from stderr, learns the
//!   bound addresses from event 101 and kills the child on drop.
//! - [`Upstream`], [`TlsUpstream`], [`DnsStub`]: loopback peers for the gateway.
//! - CONNECT client helpers, data pattern / SHA-256 helpers, `/proc` counters.
//!
//! Every file under `tests/` includes this module, and not every file uses every helper.
#![allow(dead_code)]

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a gateway may take to log event 101.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// Default socket timeout for test clients and upstreams: a hung gateway fails a test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The name the TLS upstream's certificate is issued for.
pub const TLS_NAME: &str = "ws1.ods.opinsights.azure.com";

// ---------------------------------------------------------------------------------------------
// Process-wide setup
// ---------------------------------------------------------------------------------------------

static INIT: Once = Once::new();

/// One-time setup for the test process: raise RLIMIT_NOFILE's soft limit to the hard limit (the
/// gateway child inherits it, and the scale tests hold thousands of sockets on both sides).
pub fn init() {
    INIT.call_once(raise_nofile_limit);
}

fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let wanted = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            eprintln!("warning: setrlimit(RLIMIT_NOFILE) failed: {e}");
        }
    }
}

/// Current soft RLIMIT_NOFILE of the test process (`u64::MAX` for unlimited).
pub fn nofile_limit() -> u64 {
    init();
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The engine under test: `SPLICEGATE_TEST_ENGINE` (`uring` or `epoll`), default `uring`.
pub fn test_engine() -> String {
    let engine = std::env::var("SPLICEGATE_TEST_ENGINE")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "uring".to_string());
    let engine = engine.trim().to_string();
    assert!(
        engine == "uring" || engine == "epoll",
        "SPLICEGATE_TEST_ENGINE must be `uring` or `epoll`, got {engine:?}"
    );
    engine
}

/// Path of the binary under test.
/// The gateway's command, run under `wrapper` (a launcher and its arguments, such as `setpriv
/// ...` or the seccomp launcher) when one is given.
pub fn gateway_command<S: AsRef<std::ffi::OsStr>>(wrapper: &[S]) -> Command {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin());
            c
        }
        None => Command::new(bin()),
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_splicegate")
}

/// Whether the loopback IPv6 address can be bound on this machine.
pub fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// A loopback port that nothing listens on (bound once, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A loopback port where connections are refused for as long as the value lives: the socket is
/// bound but never listens, so no other test (or server) can take the port meanwhile — unlike a
/// port from [`free_port`], which a parallel test may grab before it is used.
pub struct ClosedPort {
    _sock: socket2::Socket,
    port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        sock.bind(&any.into()).expect("bind 127.0.0.1:0");
        let port = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("bound port");
        ClosedPort { _sock: sock, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directories (no tempfile crate needed)
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "splicegate-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `contents` to `name` inside the directory and return the full path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Config builder
// ---------------------------------------------------------------------------------------------

/// A YAML config for the gateway under test. Start from [`Config::new`] (test defaults) and add
/// what the test needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<String>,
    pub metrics_listen: String,
    pub workers: u32,
    pub engine: String,
    pub data_path: Option<String>,
    pub allowed_ports: Vec<u16>,
    pub allowed_hosts: Vec<String>,
    pub hosts: Vec<(String, Vec<String>)>,
    pub allow_private_destinations: Option<bool>,
    pub allowed_destination_networks: Vec<String>,
    /// `limits:` entries, `(key, value)`; values that are not plain integers are quoted.
    pub limits: Vec<(String, String)>,
    pub nameservers: Vec<String>,
    /// Other `resolver:` keys, `(key, value)`, rendered as given.
    pub resolver: Vec<(String, String)>,
    /// Extra top-level YAML appended verbatim (sections the builder has no method for).
    pub extra: String,
    /// `tls:` section; `None` renders `tls: {inspect: false}` so tests that move plain bytes
    /// through tunnels are not refused by TLS inspection.
    pub tls: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// YAML double-quoted scalar.
pub fn yq(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Config {
    /// Test defaults: workers 2, listen on 127.0.0.1:0, metrics on 127.0.0.1:0, the engine from
    /// `SPLICEGATE_TEST_ENGINE`. No hosts or ports are allowed until the test adds them.
    pub fn new() -> Config {
        Config {
            listen: vec!["127.0.0.1:0".to_string()],
            metrics_listen: "127.0.0.1:0".to_string(),
            workers: 2,
            engine: test_engine(),
            data_path: None,
            allowed_ports: Vec::new(),
            allowed_hosts: Vec::new(),
            hosts: Vec::new(),
            allow_private_destinations: None,
            allowed_destination_networks: Vec::new(),
            limits: Vec::new(),
            nameservers: Vec::new(),
            resolver: Vec::new(),
            extra: String::new(),
            tls: None,
        }
    }

    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.listen = addrs.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    pub fn data_path(mut self, mode: &str) -> Self {
        self.data_path = Some(mode.to_string());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        if !self.allowed_ports.contains(&port) {
            self.allowed_ports.push(port);
        }
        self
    }

    pub fn allow_host(mut self, name: &str) -> Self {
        if !self.allowed_hosts.iter().any(|h| h == name) {
            self.allowed_hosts.push(name.to_string());
        }
        self
    }

    /// Static resolution `hosts: {name: [ip]}` (does not allow the name by itself).
    pub fn map_host(mut self, name: &str, ip: &str) -> Self {
        if let Some((_, ips)) = self.hosts.iter_mut().find(|(n, _)| n == name) {
            ips.push(ip.to_string());
        } else {
            self.hosts.push((name.to_string(), vec![ip.to_string()]));
        }
        self
    }

    /// `allowed_destination_networks: ["127.0.0.0/8", "::1/128"]`.
    pub fn loopback_networks(mut self) -> Self {
        for net in ["127.0.0.0/8", "::1/128"] {
            if !self.allowed_destination_networks.iter().any(|n| n == net) {
                self.allowed_destination_networks.push(net.to_string());
            }
        }
        self
    }

    pub fn destination_network(mut self, net: &str) -> Self {
        self.allowed_destination_networks.push(net.to_string());
        self
    }

    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private_destinations = Some(allow);
        self
    }

    /// Allow `name` on `port`, resolve it statically to 127.0.0.1 and permit loopback
    /// destinations: the usual way to tunnel to a test upstream.
    pub fn upstream(self, name: &str, port: u16) -> Self {
        self.allow_host(name)
            .map_host(name, "127.0.0.1")
            .port(port)
            .loopback_networks()
    }

    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.retain(|(k, _)| k != key);
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameservers.push(addr.to_string());
        self
    }

    /// A `resolver:` key (`hosts_file`, `min_ttl`, `stale_ttl`, ...); the value is YAML.
    pub fn resolver(mut self, key: &str, value: &str) -> Self {
        self.resolver.retain(|(k, _)| k != key);
        self.resolver.push((key.to_string(), value.to_string()));
        self
    }

    /// The YAML text.
    pub fn render(&self) -> String {
        let list = |items: &[String]| {
            let v: Vec<String> = items.iter().map(|s| yq(s)).collect();
            format!("[{}]", v.join(", "))
        };
        let mut y = String::new();
        writeln!(y, "# generated by the splicegate integration tests").unwrap();
        // A listener object (`{address: ..., proxy_protocol: true, ...}`) is written as given.
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|s| if s.starts_with('{') { s.clone() } else { yq(s) })
            .collect();
        writeln!(y, "listen: [{}]", listen.join(", ")).unwrap();
        writeln!(y, "metrics_listen: {}", yq(&self.metrics_listen)).unwrap();
        writeln!(y, "workers: {}", self.workers).unwrap();
        writeln!(y, "engine: {}", self.engine).unwrap();
        if let Some(dp) = &self.data_path {
            writeln!(y, "data_path: {dp}").unwrap();
        }
        if !self.allowed_ports.is_empty() {
            let ports: Vec<String> = self.allowed_ports.iter().map(|p| p.to_string()).collect();
            writeln!(y, "allowed_ports: [{}]", ports.join(", ")).unwrap();
        }
        if !self.allowed_hosts.is_empty() {
            writeln!(y, "allowed_hosts: {}", list(&self.allowed_hosts)).unwrap();
        }
        if !self.hosts.is_empty() {
            writeln!(y, "hosts:").unwrap();
            for (name, ips) in &self.hosts {
                writeln!(y, "  {}: {}", yq(name), list(ips)).unwrap();
            }
        }
        if let Some(b) = self.allow_private_destinations {
            writeln!(y, "allow_private_destinations: {b}").unwrap();
        }
        if !self.allowed_destination_networks.is_empty() {
            writeln!(
                y,
                "allowed_destination_networks: {}",
                list(&self.allowed_destination_networks)
            )
            .unwrap();
        }
        if !self.limits.is_empty() {
            writeln!(y, "limits:").unwrap();
            for (k, v) in &self.limits {
                let v = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    v.clone()
                } else {
                    yq(v)
                };
                writeln!(y, "  {k}: {v}").unwrap();
            }
        }
        if !self.nameservers.is_empty() || !self.resolver.is_empty() {
            writeln!(y, "resolver:").unwrap();
        }
        if !self.nameservers.is_empty() {
            writeln!(y, "  nameservers: {}", list(&self.nameservers)).unwrap();
        }
        for (k, v) in &self.resolver {
            writeln!(y, "  {k}: {v}").unwrap();
        }
        match &self.tls {
            Some(t) => y.push_str(t),
            None => y.push_str("tls:\n  inspect: false\n"),
        }
        y.push_str(&self.extra);
        y
    }

    /// Turn TLS inspection on with the given `tls:` keys (YAML lines without indentation,
    /// e.g. `["min_version: \"1.2\""]`); the other keys keep their defaults.
    pub fn inspect_tls(mut self, keys: &[&str]) -> Self {
        let mut t = String::from("tls:\n  inspect: true\n");
        for k in keys {
            t.push_str("  ");
            t.push_str(k);
            t.push('\n');
        }
        self.tls = Some(t);
        self
    }

    /// Append raw top-level YAML, e.g. a `relay_proxy:` section.
    pub fn raw(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct LogState {
    /// Parsed JSON log lines (stderr).
    events: Vec<Value>,
    /// Every line, raw, stderr and stdout (prefixed), for failure dumps.
    lines: Vec<String>,
    stderr_eof: bool,
}

type SharedLog = Arc<(Mutex<LogState>, Condvar)>;

fn lock_log(log: &SharedLog) -> std::sync::MutexGuard<'_, LogState> {
    log.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_line_reader<R: Read + Send + 'static>(
    src: R,
    log: SharedLog,
    is_stderr: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        // Bounded by the child's lifetime: read_until returns 0 at EOF.
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            let mut st = lock_log(&log);
            if is_stderr {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v.is_object() {
                        st.events.push(v);
                    }
                }
                st.lines.push(line);
            } else {
                st.lines.push(format!("[stdout] {line}"));
            }
            drop(st);
            log.1.notify_all();
        }
        if is_stderr {
            lock_log(&log).stderr_eof = true;
            log.1.notify_all();
        }
    })
}

/// `event_id` of a log event, if numeric.
pub fn event_id(v: &Value) -> Option<u64> {
    v.get("event_id").and_then(|x| {
        x.as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

/// A field of a log event as a string (strings as-is, other JSON values rendered).
pub fn field_str(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A field of a log event as an integer (numbers or numeric strings).
pub fn field_u64(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A running `splicegate run` child process.
pub struct Gateway {
    child: Child,
    log: SharedLog,
    addrs: Vec<SocketAddr>,
    metrics_addr: SocketAddr,
    started: Value,
    config_path: PathBuf,
    pub config: Config,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

/// Parse `"127.0.0.1:1,[::1]:2"` (or a JSON array of such strings) into addresses.
fn parse_addr_list(v: &Value) -> Vec<SocketAddr> {
    let items: Vec<String> = match v {
        Value::String(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(|s| s.trim().to_string()))
            .collect(),
        _ => Vec::new(),
    };
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("event 101 address {s:?} does not parse: {e}"))
        })
        .collect()
}

impl Gateway {
    /// Start a gateway with `cfg`. Returns `None` (after printing the reason) only when the engine
    /// is `uring` and the gateway reported that io_uring could not be started on this machine;
    /// any other startup failure panics with the gateway's output.
    pub fn start(cfg: Config) -> Option<Gateway> {
        Gateway::start_wrapped(cfg, &[])
    }

    /// Like [`Gateway::start`], but run the binary through `wrapper` (a command that execs its
    /// arguments, e.g. `["prlimit", "--nofile=64:64", "--"]`), so the pid stays the gateway's.
    pub fn start_wrapped(cfg: Config, wrapper: &[&str]) -> Option<Gateway> {
        init();
        let dir = TempDir::new("gw");
        let mut text = cfg.render();
        // Each gateway gets its own admin socket (never the shared /run/splicegate default).
        if !text.lines().any(|l| l.starts_with("admin_socket:")) {
            let sock = dir.path().join("admin.sock");
            text.push_str(&format!(
                "admin_socket: {}\n",
                yq(&sock.display().to_string())
            ));
        }
        let config_path = dir.write("splicegate.yaml", &text);
        let mut cmd = gateway_command(wrapper);
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
        let log: SharedLog = Arc::new((Mutex::new(LogState::default()), Condvar::new()));
        spawn_line_reader(child.stderr.take().unwrap(), log.clone(), true);
        spawn_line_reader(child.stdout.take().unwrap(), log.clone(), false);

        let deadline = Instant::now() + STARTUP_DEADLINE;
        let started = {
            let mut st = lock_log(&log);
            loop {
                if let Some(v) = st.events.iter().find(|e| event_id(e) == Some(101)) {
                    break Some(v.clone());
                }
                let now = Instant::now();
                if st.stderr_eof || now >= deadline {
                    break None;
                }
                st = log
                    .1
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };

        let Some(started) = started else {
            // Give an exiting child a moment to be reaped, then kill whatever is left.
            let exit_deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < exit_deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            // No-op if it already exited; wait() then returns the cached status.
            let _ = child.kill();
            let status = child.wait().ok();
            let st = lock_log(&log);
            let uring_failure = cfg.engine == "uring"
                && status.is_some_and(|s| !s.success())
                && st.events.iter().any(|e| {
                    matches!(event_id(e), Some(400) | Some(401))
                        && e.to_string().to_ascii_lowercase().contains("io_uring")
                });
            if uring_failure {
                eprintln!(
                    "SKIP: the gateway could not start io_uring on this machine (engine uring); \
                     run with SPLICEGATE_TEST_ENGINE=epoll. Gateway output:\n{}",
                    st.lines.join("\n")
                );
                return None;
            }
            panic!(
                "gateway did not log event 101 within {:?} (exit status: {:?})\nconfig:\n{}\n\
                 output:\n{}",
                STARTUP_DEADLINE,
                status,
                cfg.render(),
                st.lines.join("\n")
            );
        };

        let addrs = parse_addr_list(started.get("listen").unwrap_or(&Value::Null));
        assert_eq!(
            addrs.len(),
            cfg.listen.len(),
            "event 101 `listen` should list one bound address per configured listener: {started}"
        );
        let metrics = parse_addr_list(started.get("metrics_listen").unwrap_or(&Value::Null));
        assert_eq!(
            metrics.len(),
            1,
            "event 101 should carry the bound `metrics_listen` address: {started}"
        );
        Some(Gateway {
            child,
            log,
            addrs,
            metrics_addr: metrics[0],
            started,
            config_path,
            config: cfg,
            exit: None,
            _dir: dir,
        })
    }

    /// The admin socket event 101 names (`None` when disabled).
    pub fn admin_socket(&self) -> Option<PathBuf> {
        self.started
            .get("admin_socket")
            .and_then(Value::as_str)
            .filter(|s| *s != "disabled")
            .map(PathBuf::from)
    }

    /// The first listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// All bound listener addresses, in config order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The event 101 line.
    pub fn started_event(&self) -> &Value {
        &self.started
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// All log events with `event_id == id` so far.
    pub fn events(&self, id: u64) -> Vec<Value> {
        lock_log(&self.log)
            .events
            .iter()
            .filter(|e| event_id(e) == Some(id))
            .cloned()
            .collect()
    }

    /// All parsed log events so far.
    pub fn all_events(&self) -> Vec<Value> {
        lock_log(&self.log).events.clone()
    }

    /// Wait until an event with `event_id == id` satisfying `pred` has been logged.
    pub fn wait_event(
        &self,
        id: u64,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        self.wait_any_event(|e| event_id(e) == Some(id) && pred(e), timeout)
    }

    /// Wait until any event satisfying `pred` has been logged.
    pub fn wait_any_event(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut st = lock_log(&self.log);
        loop {
            if let Some(v) = st.events.iter().find(|e| pred(e)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if st.stderr_eof || now >= deadline {
                return None;
            }
            st = self
                .log
                .1
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`Gateway::wait_event`] but panics (with the log) when the event does not show up.
    pub fn expect_event(
        &self,
        id: u64,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
        what: &str,
    ) -> Value {
        self.wait_event(id, pred, timeout).unwrap_or_else(|| {
            panic!(
                "no event {id} ({what}) within {timeout:?}; log:\n{}",
                self.log_dump()
            )
        })
    }

    /// The gateway's output so far (last 300 lines).
    pub fn log_dump(&self) -> String {
        let st = lock_log(&self.log);
        let skip = st.lines.len().saturating_sub(300);
        st.lines[skip..].join("\n")
    }

    /// `GET path` on the metrics listener.
    pub fn metrics_get(&self, path: &str) -> io::Result<(u16, String)> {
        http_get(self.metrics_addr, path)
    }

    /// The `/metrics` text (asserts status 200).
    pub fn metrics(&self) -> String {
        let (status, body) = self
            .metrics_get("/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\nlog:\n{}", self.log_dump()));
        assert_eq!(status, 200, "GET /metrics status; body:\n{body}");
        body
    }

    /// Sum of the samples matching `query` (`name` or `name{k="v",..}`; the query's labels must be
    /// a subset of the sample's). 0.0 when no sample matches but the metric family is exposed;
    /// panics when the family is not exposed at all.
    pub fn metric_value(&self, query: &str) -> f64 {
        let text = self.metrics();
        metric_from_text(&text, query)
    }

    /// Poll `/metrics` until `pred(metric_value(query))` holds or `timeout` passes; returns the last
    /// value seen (callers assert on it).
    pub fn wait_metric(&self, query: &str, pred: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric_value(query);
            if pred(v) || Instant::now() >= deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// HTTP status of `GET /readyz`.
    pub fn readyz(&self) -> io::Result<u16> {
        self.metrics_get("/readyz").map(|(s, _)| s)
    }

    /// HTTP status of `GET /healthz`.
    pub fn healthz(&self) -> io::Result<u16> {
        self.metrics_get("/healthz").map(|(s, _)| s)
    }

    /// Send `sig` to the gateway. `pid` is our own child, which has not been reaped (we hold the
    /// Child and only reap it in wait_exit/drop), so the pid cannot have been reused.
    pub fn signal(&self, sig: libc::c_int) {
        use rustix::process::{kill_process, Pid, Signal};
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child's pid is a valid pid");
        let signal = Signal::from_named_raw(sig).expect("a named signal");
        kill_process(pid, signal).unwrap_or_else(|e| panic!("kill({pid:?}, {sig}): {e}"));
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Wait for the process to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.exit = Some(s);
                    return Some(s);
                }
                Ok(None) => {}
                Err(e) => panic!("try_wait: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn task_count(&self) -> usize {
        task_count(self.pid())
    }

    pub fn fd_count(&self) -> usize {
        fd_count(self.pid())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- gateway (pid {}) output ----\n{}\n---- end of gateway output ----",
                self.pid(),
                self.log_dump()
            );
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Number of threads of process `pid`.
pub fn task_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"))
        .count()
}

/// Number of open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// Run `splicegate` with `args`, wait at most `timeout`, return its output.
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    init();
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("splicegate {args:?} did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics text parsing and a minimal HTTP client
// ---------------------------------------------------------------------------------------------

fn parse_labels(s: &str) -> Vec<(String, String)> {
    // s is the text between `{` and `}`: k="v",k2="v2" (values may contain escaped quotes).
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let key = s[ks..i].trim().to_string();
        i += 1; // '='
        if i >= b.len() || b[i] != b'"' {
            break;
        }
        i += 1;
        let mut val = String::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
            }
            val.push(b[i] as char);
            i += 1;
        }
        i += 1; // closing quote
        out.push((key, val));
    }
    out
}

/// Split a sample line into (name, labels, value).
/// (name, labels, value) of one sample line.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = if let Some(open) = line.find('{') {
        let name_end = line[..open].find(' ').unwrap_or(open);
        if name_end < open {
            // `name value` where the value part happens to contain '{' (not expected).
            let mut it = line.split_whitespace();
            (
                it.next()?.to_string(),
                Vec::new(),
                it.collect::<Vec<_>>().join(" "),
            )
        } else {
            // Find the closing brace outside quotes.
            let b = line.as_bytes();
            let mut i = open + 1;
            let mut in_q = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if in_q => i += 1,
                    b'"' => in_q = !in_q,
                    b'}' if !in_q => break,
                    _ => {}
                }
                i += 1;
            }
            if i >= b.len() {
                return None;
            }
            (
                line[..open].to_string(),
                parse_labels(&line[open + 1..i]),
                line[i + 1..].to_string(),
            )
        }
    } else {
        let mut it = line.split_whitespace();
        (
            it.next()?.to_string(),
            Vec::new(),
            it.collect::<Vec<_>>().join(" "),
        )
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// See [`Gateway::metric_value`].
pub fn metric_from_text(text: &str, query: &str) -> f64 {
    let (qname, qlabels) = match query.find('{') {
        Some(i) => (
            &query[..i],
            parse_labels(query[i + 1..].trim_end_matches('}')),
        ),
        None => (query, Vec::new()),
    };
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if let Some((name, labels, value)) = parse_sample(line) {
            if name == qname && qlabels.iter().all(|q| labels.contains(q)) {
                found = true;
                sum += value;
            }
        }
    }
    if found {
        return sum;
    }
    let base = ["_total", "_count", "_sum", "_bucket", "_created"]
        .iter()
        .find_map(|s| qname.strip_suffix(s))
        .unwrap_or(qname);
    assert!(
        text.lines().any(|l| l.contains(base)),
        "metric family {base:?} (for query {query:?}) is not exposed at all; /metrics:\n{text}"
    );
    0.0
}

/// Minimal `GET` over HTTP/1.1 with `Connection: close`; handles Content-Length, chunked and
/// read-to-EOF bodies. Returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: splicegate-tests\r\nConnection: close\r\n\r\n"
    )?;
    let resp = read_response_head(&mut s)?;
    let mut body = Vec::new();
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        body.resize(len, 0);
        s.read_exact(&mut body)?;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut r = BufReader::new(s);
        for _ in 0..100_000 {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else {
        s.read_to_end(&mut body)?;
    }
    Ok((resp.status, String::from_utf8_lossy(&body).into_owned()))
}

// ---------------------------------------------------------------------------------------------
// CONNECT client helpers
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response head.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// The raw head including the final CRLFCRLF.
    pub head: String,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read a response head byte by byte (so no tunnel byte after it is consumed). Uses the stream's
/// current read timeout.
pub fn read_response_head(s: &mut TcpStream) -> io::Result<Response> {
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        if head.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head larger than 64 KiB",
            ));
        }
        match s.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF before end of response head; got {:?}",
                        String::from_utf8_lossy(&head)
                    ),
                ))
            }
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} (after {:?})", String::from_utf8_lossy(&head)),
                ))
            }
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let reason = parts.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(Response {
        status,
        reason,
        headers,
        head: text,
    })
}

/// Connect to `addr` with test timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to gateway {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// The CONNECT head for `target` (`host:port`).
pub fn connect_head(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: splicegate-tests\r\n\r\n")
}

/// Send `raw` to the gateway and read the response head (timeout 10 s).
pub fn request(addr: SocketAddr, raw: &[u8]) -> (TcpStream, io::Result<Response>) {
    let mut s = connect(addr);
    if let Err(e) = s.write_all(raw) {
        return (s, Err(e));
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response_head(&mut s);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    (s, r)
}

/// Send a CONNECT for `target` and read the response head.
pub fn connect_request(addr: SocketAddr, target: &str) -> (TcpStream, Response) {
    let (s, r) = request(addr, connect_head(target).as_bytes());
    let r = r.unwrap_or_else(|e| panic!("CONNECT {target} via {addr}: no response head: {e}"));
    (s, r)
}

/// Open a tunnel to `target`; panics unless the answer is 200.
pub fn open_tunnel(addr: SocketAddr, target: &str) -> TcpStream {
    let (s, r) = connect_request(addr, target);
    assert_eq!(
        r.status, 200,
        "CONNECT {target}: expected 200, got head {:?}",
        r.head
    );
    s
}

/// Read until EOF (or reset) within `timeout`; returns the bytes read. Panics on timeout.
pub fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, CloseKind) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        assert!(
            now < deadline,
            "connection not closed within {timeout:?} (read {} bytes: {:?})",
            out.len(),
            String::from_utf8_lossy(&out[..out.len().min(256)])
        );
        s.set_read_timeout(Some(deadline - now)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, CloseKind::Eof),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                assert!(
                    out.len() <= 64 * 1024 * 1024,
                    "peer keeps sending instead of closing"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (out, CloseKind::Reset),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "connection not closed within {timeout:?} (read {} bytes: {:?})",
                    out.len(),
                    String::from_utf8_lossy(&out[..out.len().min(256)])
                )
            }
            Err(e) => panic!("read while waiting for close: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    Eof,
    Reset,
}

/// Assert that the connection is closed by the peer within `timeout` (any body bytes before the
/// close are returned).
pub fn assert_closes(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    read_until_closed(s, timeout).0
}

/// Write `data` and read exactly as many bytes back (echo check).
pub fn echo_roundtrip(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write to tunnel");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("read echo from tunnel");
    assert_eq!(back, data, "echoed bytes differ");
}

// ---------------------------------------------------------------------------------------------
// Data pattern and hashing
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*).
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        Pattern::new(seed).fill(&mut v);
        v
    }
}

pub type Digest32 = [u8; 32];

pub fn sha256(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Write `n` pattern bytes (seed) to `w` in 64 KiB chunks; returns the SHA-256 of what was sent.
pub fn send_pattern(w: &mut impl Write, n: u64, seed: u64) -> io::Result<Digest32> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(h.finalize().into())
}

/// Read `r` to EOF; returns (bytes, SHA-256).
pub fn sink_hash(r: &mut impl Read) -> io::Result<(u64, Digest32)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((total, h.finalize().into()))
}

/// Read exactly `n` bytes; returns their SHA-256.
pub fn read_exact_hash(r: &mut impl Read, n: u64) -> io::Result<Digest32> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..k])?;
        h.update(&buf[..k]);
        left -= k as u64;
    }
    Ok(h.finalize().into())
}

// ---------------------------------------------------------------------------------------------
// Plain TCP upstream
// ---------------------------------------------------------------------------------------------

pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync + 'static>;

enum Mode {
    /// Keep accepted connections open, untouched, until the upstream is dropped.
    Hold,
    /// Run the handler for each connection on its own thread.
    Handle(Handler),
}

/// A loopback TCP server that counts accepted connections.
pub struct Upstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(bind: &str, mode: Mode) -> Upstream {
        init();
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (accepts, stop, held) = (accepts.clone(), stop.clone(), held.clone());
            thread::spawn(move || {
                let mut consecutive_errors = 0u32;
                // Bounded by the Upstream's lifetime (drop sets `stop` and wakes accept()).
                loop {
                    let conn = listener.accept();
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let s = match conn {
                        Ok((s, _)) => s,
                        Err(e) => {
                            consecutive_errors += 1;
                            if consecutive_errors > 1000 {
                                eprintln!("upstream {addr}: giving up after accept errors: {e}");
                                break;
                            }
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    consecutive_errors = 0;
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    match &mode {
                        Mode::Hold => held.lock().unwrap_or_else(|e| e.into_inner()).push(s),
                        Mode::Handle(h) => {
                            let h = h.clone();
                            thread::spawn(move || h(s));
                        }
                    }
                }
            })
        };
        Upstream {
            addr,
            accepts,
            stop,
            held,
            thread: Some(thread),
        }
    }

    /// An upstream on 127.0.0.1 running `f` for every accepted connection.
    pub fn with_handler(f: impl Fn(TcpStream) + Send + Sync + 'static) -> Upstream {
        Upstream::start("127.0.0.1:0", Mode::Handle(Arc::new(f)))
    }

    /// Like [`Upstream::with_handler`] on an explicit bind address (e.g. `[::1]:0`).
    pub fn bind_with_handler(
        bind: &str,
        f: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Upstream {
        Upstream::start(bind, Mode::Handle(Arc::new(f)))
    }

    /// Echo everything; on EOF from the client side, half-close back.
    pub fn echo() -> Upstream {
        Upstream::with_handler(echo_handler)
    }

    pub fn echo_on(bind: &str) -> Upstream {
        Upstream::bind_with_handler(bind, echo_handler)
    }

    /// Accept and keep connections open without threads (for the scale tests).
    pub fn hold() -> Upstream {
        Upstream::start("127.0.0.1:0", Mode::Hold)
    }

    /// Read to EOF, send `(bytes, sha256)` on `tx`, then close.
    pub fn sink(tx: mpsc::Sender<(u64, Digest32)>) -> Upstream {
        let tx = Mutex::new(tx);
        Upstream::with_handler(move |mut s| {
            let r = sink_hash(&mut s);
            let tx = tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match r {
                Ok(v) => {
                    let _ = tx.send(v);
                }
                Err(e) => eprintln!("sink upstream: read error {e}"),
            }
        })
    }

    /// Send `n` pattern bytes (seed), report their SHA-256 on `tx`, then close.
    pub fn send_then_close(n: u64, seed: u64, tx: mpsc::Sender<Digest32>) -> Upstream {
        let tx = Mutex::new(tx);
        Upstream::with_handler(move |mut s| {
            let r = send_pattern(&mut s, n, seed);
            let tx = tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match r {
                Ok(d) => {
                    let _ = tx.send(d);
                }
                Err(e) => eprintln!("send_then_close upstream: write error {e}"),
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` connections were accepted; returns the count seen.
    pub fn wait_accepts(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.accepts();
            if a >= n || Instant::now() >= deadline {
                return a;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Number of held connections (Hold mode).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drop all held connections (Hold mode).
    pub fn close_held(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Assert that no connection reached this upstream: checks the count after a grace period
    /// long enough for an in-flight connection to be accepted.
    pub fn assert_untouched(&self, context: &str) {
        let seen = self.wait_accepts(1, Duration::from_millis(300));
        assert_eq!(
            seen, 0,
            "{context}: the upstream must not be contacted, but it accepted {seen} connection(s)"
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echo until EOF, then half-close.
pub fn echo_handler(s: TcpStream) {
    let _ = io::copy(&mut &s, &mut &s);
    let _ = s.shutdown(Shutdown::Write);
}

/// A listener whose accept queue is full (it never accepts), so new SYNs to it are dropped and a
/// connect() to it times out. Keeps the filler connections alive.
pub struct BlackholeListener {
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
    addr: SocketAddr,
}

impl BlackholeListener {
    /// Returns `None` (with the reason printed) if the queue could not be filled.
    pub fn new() -> Option<BlackholeListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        l.bind(&any.into()).expect("bind");
        l.listen(0).expect("listen(0)");
        let addr = l
            .local_addr()
            .expect("local_addr")
            .as_socket()
            .expect("inet addr");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Some(BlackholeListener {
                        _listener: l,
                        _fillers: fillers,
                        addr,
                    })
                }
                Err(e) => {
                    eprintln!("blackhole listener: unexpected connect error {e}");
                    return None;
                }
            }
        }
        eprintln!("blackhole listener: accept queue never filled (16 connections accepted)");
        None
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

// ---------------------------------------------------------------------------------------------
// TLS upstream (openssl s_server -www)
// ---------------------------------------------------------------------------------------------

/// `openssl s_server -www` on 127.0.0.1 with a self-signed certificate for [`TLS_NAME`].
pub struct TlsUpstream {
    child: Child,
    port: u16,
    cert: PathBuf,
    dir: TempDir,
}

impl TlsUpstream {
    pub fn start() -> TlsUpstream {
        init();
        let dir = TempDir::new("tls");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-subj")
            .arg(format!("/CN={TLS_NAME}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{TLS_NAME}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .expect("run `openssl req` (is openssl installed? see scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // s_server cannot report a port it picked itself: take a free one, retry on a lost race.
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let errlog = dir.path().join(format!("s_server-{port}.err"));
            let mut child = Command::new("openssl")
                .args(["s_server", "-www", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(fs::File::create(&errlog).expect("create s_server log"))
                .spawn()
                .expect("spawn openssl s_server");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                // Keep draining stdout for the server's lifetime so it never blocks on a full pipe.
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                let mut tx = Some(tx);
                for _ in 0..1_000_000 {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if line.trim() == "ACCEPT" {
                                if let Some(tx) = tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                        }
                    }
                }
            });
            if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                return TlsUpstream {
                    child,
                    port,
                    cert,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = fs::read_to_string(&errlog).unwrap_or_default();
        }
        panic!("openssl s_server did not start: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn cert(&self) -> &Path {
        &self.cert
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

// ---------------------------------------------------------------------------------------------
// Stub DNS server
// ---------------------------------------------------------------------------------------------

/// What the stub answers for a name.
#[derive(Clone, Debug)]
pub enum DnsAnswer {
    /// NOERROR with these A records at the stub's TTL (AAAA queries get NOERROR with no
    /// answers and no SOA).
    A(Vec<Ipv4Addr>),
    /// NXDOMAIN without an SOA.
    NxDomain,
    /// Never answer.
    Silent,
    /// NOERROR with these A and AAAA records at this TTL; a type with no records gets NODATA
    /// with an SOA whose minimum is `ttl`.
    Records {
        a: Vec<Ipv4Addr>,
        aaaa: Vec<Ipv6Addr>,
        ttl: u32,
    },
    /// NXDOMAIN with an SOA (TTL and minimum `minimum`) in the authority section: the negative
    /// TTL of RFC 2308.
    NxDomainSoa { minimum: u32 },
    /// SERVFAIL.
    ServFail,
    /// A CNAME chain: the name -> `chain[0]` -> ... -> `chain[n-1]`, which has the A records;
    /// every record at `ttl`. AAAA queries get the chain and no address.
    Cname {
        chain: Vec<String>,
        a: Vec<Ipv4Addr>,
        ttl: u32,
    },
}

/// DNS record types the stub knows.
pub const QTYPE_A: u16 = 1;
pub const QTYPE_AAAA: u16 = 28;

/// The stub's answers and silences, changeable while it runs.
struct DnsTable {
    names: HashMap<String, DnsAnswer>,
    default: DnsAnswer,
    ttl: u32,
    /// (name, qtype) never answered; qtype 0 = every type.
    silent: Vec<(String, u16)>,
    /// Names whose answers are kept back until [`DnsStub::release`].
    held: Vec<String>,
    /// Answers kept back: (name, peer, response).
    pending: Vec<(String, SocketAddr, Vec<u8>)>,
}

/// A tiny authoritative-looking DNS server on 127.0.0.1 UDP.
pub struct DnsStub {
    addr: SocketAddr,
    /// The server's socket, to send answers kept back by [`DnsStub::hold`].
    sock: UdpSocket,
    queries: Arc<Mutex<Vec<(String, u16)>>>,
    table: Arc<Mutex<DnsTable>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A name in wire format, without compression.
fn dns_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// One resource record; `owner` is wire format (a pointer or a full name).
fn dns_record(r: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    r.extend_from_slice(owner);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes()); // class IN
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
}

/// An SOA for the zone `test.` with TTL and minimum `minimum`.
fn dns_soa(r: &mut Vec<u8>, minimum: u32) {
    let mut rdata = dns_name("ns.test");
    rdata.extend_from_slice(&dns_name("hostmaster.test"));
    for v in [1u32, 3600, 600, 86400, minimum] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    dns_record(r, &dns_name("test"), 6, minimum, &rdata);
}

/// Build the response to `query`, or `None` to stay silent / ignore garbage. Also returns the
/// parsed (name, qtype).
fn dns_respond(query: &[u8], table: &DnsTable) -> (Option<(String, u16)>, Option<Vec<u8>>) {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return (None, None);
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    if qdcount != 1 {
        return (None, None);
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    for _ in 0..128 {
        let Some(&len) = query.get(pos) else {
            return (None, None);
        };
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 || pos + len as usize > query.len() {
            return (None, None);
        }
        labels.push(String::from_utf8_lossy(&query[pos..pos + len as usize]).to_ascii_lowercase());
        pos += len as usize;
    }
    if pos + 4 > query.len() {
        return (None, None);
    }
    let qtype = u16::from_be_bytes([query[pos], query[pos + 1]]);
    let qend = pos + 4;
    let name = labels.join(".");
    let silenced = table
        .silent
        .iter()
        .any(|(n, t)| *n == name && (*t == 0 || *t == qtype));
    let answer = table.names.get(&name).unwrap_or(&table.default);
    if silenced || matches!(answer, DnsAnswer::Silent) {
        return (Some((name, qtype)), None);
    }
    let mut rcode = 0u8;
    let mut answers: Vec<u8> = Vec::new();
    let mut ancount = 0u16;
    let mut authority: Vec<u8> = Vec::new();
    let mut nscount = 0u16;
    let qname_ptr = [0xC0, 0x0C];
    match answer {
        DnsAnswer::Silent => {}
        DnsAnswer::NxDomain => rcode = 3,
        DnsAnswer::ServFail => rcode = 2,
        DnsAnswer::NxDomainSoa { minimum } => {
            rcode = 3;
            dns_soa(&mut authority, *minimum);
            nscount = 1;
        }
        DnsAnswer::A(ips) => {
            if qtype == QTYPE_A {
                for ip in ips {
                    dns_record(&mut answers, &qname_ptr, QTYPE_A, table.ttl, &ip.octets());
                    ancount += 1;
                }
            }
        }
        DnsAnswer::Records { a, aaaa, ttl } => {
            if qtype == QTYPE_A {
                for ip in a {
                    dns_record(&mut answers, &qname_ptr, QTYPE_A, *ttl, &ip.octets());
                    ancount += 1;
                }
            } else if qtype == QTYPE_AAAA {
                for ip in aaaa {
                    dns_record(&mut answers, &qname_ptr, QTYPE_AAAA, *ttl, &ip.octets());
                    ancount += 1;
                }
            }
            if ancount == 0 {
                dns_soa(&mut authority, *ttl);
                nscount = 1;
            }
        }
        DnsAnswer::Cname { chain, a, ttl } => {
            let mut owner = qname_ptr.to_vec();
            for target in chain {
                let t = dns_name(target);
                dns_record(&mut answers, &owner, 5, *ttl, &t);
                ancount += 1;
                owner = t;
            }
            if qtype == QTYPE_A {
                for ip in a {
                    dns_record(&mut answers, &owner, QTYPE_A, *ttl, &ip.octets());
                    ancount += 1;
                }
            }
        }
    }
    let mut r = Vec::with_capacity(qend + answers.len() + authority.len());
    r.extend_from_slice(&query[0..2]); // id
    r.push(0x80 | 0x04 | (query[2] & 0x01)); // QR, AA, RD copied
    r.push(0x80 | rcode); // RA, rcode
    r.extend_from_slice(&1u16.to_be_bytes()); // qdcount
    r.extend_from_slice(&ancount.to_be_bytes());
    r.extend_from_slice(&nscount.to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes()); // arcount
    r.extend_from_slice(&query[12..qend]); // question
    r.extend_from_slice(&answers);
    r.extend_from_slice(&authority);
    (Some((name, qtype)), Some(r))
}

impl DnsStub {
    /// Answer names from `records` (lowercase, no trailing dot), everything else with `default`;
    /// `ttl` is the TTL of [`DnsAnswer::A`] records.
    pub fn start(records: &[(&str, DnsAnswer)], default: DnsAnswer, ttl: u32) -> DnsStub {
        init();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let names: HashMap<String, DnsAnswer> = records
            .iter()
            .map(|(n, a)| (n.trim_end_matches('.').to_ascii_lowercase(), a.clone()))
            .collect();
        let table = Arc::new(Mutex::new(DnsTable {
            names,
            default,
            ttl,
            silent: Vec::new(),
            held: Vec::new(),
            pending: Vec::new(),
        }));
        let send_sock = sock.try_clone().expect("clone the stub's UDP socket");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queries, stop, table) = (queries.clone(), stop.clone(), table.clone());
            thread::spawn(move || {
                let hard_stop = Instant::now() + Duration::from_secs(30 * 60);
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                    let (n, peer) = match sock.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(_) => continue,
                    };
                    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                    let (q, resp) = dns_respond(&buf[..n], &t);
                    let held = q.as_ref().is_some_and(|(name, _)| t.held.contains(name));
                    if let Some(q) = q {
                        if let (true, Some(resp)) = (held, resp.clone()) {
                            t.pending.push((q.0.clone(), peer, resp));
                        }
                        queries.lock().unwrap_or_else(|e| e.into_inner()).push(q);
                    }
                    drop(t);
                    if let (false, Some(resp)) = (held, resp) {
                        let _ = sock.send_to(&resp, peer);
                    }
                }
            })
        };
        DnsStub {
            addr,
            sock: send_sock,
            queries,
            table,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// All (name, qtype) queries received so far.
    pub fn queries(&self) -> Vec<(String, u16)> {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Queries received for `name` (any type).
    pub fn query_count(&self, name: &str) -> usize {
        self.queries().iter().filter(|(n, _)| n == name).count()
    }

    /// Queries received for `name` of type `qtype` ([`QTYPE_A`], [`QTYPE_AAAA`]).
    pub fn query_count_type(&self, name: &str, qtype: u16) -> usize {
        self.queries()
            .iter()
            .filter(|(n, t)| n == name && *t == qtype)
            .count()
    }

    /// Answer `name` with `answer` from now on.
    pub fn set(&self, name: &str, answer: DnsAnswer) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.names
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), answer);
    }

    /// Stop answering `name` for `qtype` (0 = every type) until [`DnsStub::speak`].
    pub fn silence(&self, name: &str, qtype: u16) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.silent.push((name.to_ascii_lowercase(), qtype));
    }

    /// Keep `name`'s answers back (queries are still counted) until [`DnsStub::release`].
    pub fn hold(&self, name: &str) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.held.push(name.to_ascii_lowercase());
    }

    /// Send the answers kept back for `name` and answer it at once again.
    pub fn release(&self, name: &str) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.held.retain(|n| n != name);
        let (out, keep): (Vec<_>, Vec<_>) = t.pending.drain(..).partition(|(n, _, _)| n == name);
        t.pending = keep;
        drop(t);
        for (_, peer, resp) in out {
            let _ = self.sock.send_to(&resp, peer);
        }
    }

    /// Answer `name` again (every type).
    pub fn speak(&self, name: &str) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.silent.retain(|(n, _)| n != name);
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolve `host:port` (for tests that need a `SocketAddr` from a literal).
// The test process may block; the ban on blocking resolution is for the gateway's workers.
#[allow(clippy::disallowed_methods)]
pub fn sockaddr(s: &str) -> SocketAddr {
    s.to_socket_addrs()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{s}: no address"))
}

// ---------------------------------------------------------------------------------------------
// Refusal assertions
// ---------------------------------------------------------------------------------------------

/// Send `raw`, expect a response with `status`, and that the gateway then closes the connection.
pub fn expect_refusal(gw: &Gateway, raw: &[u8], status: u16) -> Response {
    let (mut s, r) = request(gw.addr(), raw);
    let r = r.unwrap_or_else(|e| {
        panic!(
            "request {:?}: expected a {status} response head, got error: {e}\nlog:\n{}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)]),
            gw.log_dump()
        )
    });
    assert_eq!(
        r.status,
        status,
        "request {:?}: wrong status; head {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)]),
        r.head
    );
    assert_closes(&mut s, Duration::from_secs(5));
    r
}

/// Wait for the refusal event for `status` (`event_id == id`, `status` field == `status` and,
/// when given, `reason` == `reason`); returns it.
pub fn expect_refusal_event(gw: &Gateway, id: u64, status: u16, reason: Option<&str>) -> Value {
    gw.wait_event(
        id,
        |e| {
            field_u64(e, "status") == Some(u64::from(status))
                && reason.is_none_or(|r| field_str(e, "reason").as_deref() == Some(r))
        },
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| {
        panic!(
            "no event {id} with status {status} and reason {reason:?}; events with status \
             {status}: {:?}\nlog:\n{}",
            gw.all_events()
                .into_iter()
                .filter(|e| field_u64(e, "status") == Some(u64::from(status)))
                .collect::<Vec<_>>(),
            gw.log_dump()
        )
    })
}

/// Assert `splicegate_rejections_total{reason=...}` reaches at least `min`.
pub fn expect_rejection_metric(gw: &Gateway, reason: &str, min: f64) {
    let q = format!("splicegate_rejections_total{{reason=\"{reason}\"}}");
    let v = gw.wait_metric(&q, |v| v >= min, Duration::from_secs(3));
    assert!(v >= min, "{q} = {v}, expected >= {min}\n{}", gw.metrics());
}

/// Assert `splicegate_errors_total{kind=...}` reaches at least `min`.
pub fn expect_error_metric(gw: &Gateway, kind: &str, min: f64) {
    let q = format!("splicegate_errors_total{{kind=\"{kind}\"}}");
    let v = gw.wait_metric(&q, |v| v >= min, Duration::from_secs(3));
    assert!(v >= min, "{q} = {v}, expected >= {min}\n{}", gw.metrics());
}

/// A heavy-test lock: tests holding it run one at a time within a test binary.
pub fn heavy_lock() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Like [`expect_refusal_event`] for refusals whose event ID the spec leaves open: any event
/// with this `status` and `reason`. Asserts it carries a numeric `event_id` and a `client`.
pub fn expect_refusal_event_any(gw: &Gateway, status: u16, reason: &str) -> Value {
    let ev = gw
        .wait_any_event(
            |e| {
                field_u64(e, "status") == Some(u64::from(status))
                    && field_str(e, "reason").as_deref() == Some(reason)
            },
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "no log event with status {status} and reason {reason:?}\nlog:\n{}",
                gw.log_dump()
            )
        });
    assert!(
        event_id(&ev).is_some(),
        "refusal event without event_id: {ev}"
    );
    assert_client_field(&ev);
    ev
}

/// Refusal events name the client (`ip:port`, loopback in these tests).
pub fn assert_client_field(ev: &Value) {
    let client = field_str(ev, "client").unwrap_or_else(|| panic!("no `client` in {ev}"));
    assert!(
        client.contains("127.0.0.1") || client.contains("::1"),
        "`client` should be the loopback peer address, got {client:?} in {ev}"
    );
}
