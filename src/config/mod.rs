//! Configuration: YAML -> raw serde structs -> a validated [`Config`].
//!
//! Loading has two stages. [`raw`] deserialises the document with serde-saphyr into structs
//! that use `deny_unknown_fields` and keep every value as an untyped node together with its
//! line and column (serde-saphyr's `Spanned<T>`). [`validate`] then converts each value,
//! collecting every problem rather than stopping at the first; each [`Problem`] names the key
//! path (`limits.header_timeout`, `listen[1]`), the 1-based line, what was found and what was
//! expected. Every key is optional; [`DEFAULT_YAML`] shows them all at their defaults.
//!
//! `check-config` and `run` both go through [`Config::from_file`]; `check-config` prints
//! [`Config::summary`].

mod duration;
mod error;
mod raw;
mod validate;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::ClientAuthSettings;
use crate::events::limiter::RefusalBudget;
use crate::policy::{HostEntry, PolicySpec};
use crate::presets::{Cloud, Preset, PresetHost, Region, WorkspaceId};
use crate::proto::proxy::ProxySources;
use crate::proto::tls::TlsSettings;
use crate::resolve::ResolverSettings;

pub use duration::{format_duration, parse_duration, DurationError, MAX_DURATION};
pub use error::{ConfigError, Problem};

/// The embedded default configuration, with a comment on every key.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

/// The Azure Monitor endpoints allowed by default (Azure public cloud).
///
/// Sources: Microsoft Learn, "Azure Monitor agent network configuration"
/// (<https://learn.microsoft.com/azure/azure-monitor/agents/azure-monitor-agent-network-configuration>),
/// and "Connect computers without internet access by using the Log Analytics gateway"
/// (<https://learn.microsoft.com/azure/azure-monitor/agents/gateway>).
pub const DEFAULT_ALLOWED_HOSTS: [&str; 9] = [
    "global.handler.control.monitor.azure.com",
    "*.handler.control.monitor.azure.com",
    "*.ods.opinsights.azure.com",
    "*.oms.opinsights.azure.com",
    "*.ingest.monitor.azure.com",
    "*.monitoring.azure.com",
    "*.agentsvc.azure-automation.net",
    "*.azure-automation.net",
    "*.blob.core.windows.net",
];

/// Where the admin socket goes unless `admin_socket` says otherwise (systemd's
/// `RuntimeDirectory=splicegate`).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/splicegate/admin.sock";

/// The most worker threads `workers:` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// A validated configuration. Every field has a default; see [`DEFAULT_YAML`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses the gateway accepts clients on.
    pub listen: Vec<SocketAddr>,
    /// One per `listen` entry, in the same order: the networks a listener with
    /// `proxy_protocol: true` accepts the PROXY header from (`proxy_from`), `None` for a plain
    /// listener. Parsed with `listen` from the same list, so the two always have one length.
    pub listen_proxy: Vec<Option<ProxySources>>,
    /// The `/metrics`, `/healthz`, `/readyz` listener; `None` disables it. Loopback unless
    /// `metrics_public`.
    pub metrics_listen: Option<SocketAddr>,
    /// `metrics_public: true` allows a `metrics_listen` that is not a loopback address (the
    /// endpoint has no authentication, so serving it beyond the host is an explicit choice).
    pub metrics_public: bool,
    /// `health_listen`: a listener that serves only `/healthz` and `/readyz` (any address: it
    /// is for a load balancer's probe); `None` = off.
    pub health_listen: Option<SocketAddr>,
    /// `takeover_socket`: the Unix socket a new process (`run --takeover`) receives this
    /// gateway's listening sockets from.
    pub takeover_socket: TakeoverSocket,
    /// The admin socket (`admin_socket`) that `splicegate sessions` and `status` ask; `None`
    /// disables it. Only [`DEFAULT_ADMIN_SOCKET`] may fail to be created without failing the
    /// start (outside systemd there is no `/run/splicegate`).
    pub admin_socket: Option<PathBuf>,
    /// Worker threads; 0 = one per online CPU (resolved by the engine).
    pub workers: usize,
    /// Which I/O driver the workers use.
    pub engine: EngineKind,
    /// How bytes are moved between the client and the upstream.
    pub data_path: DataPath,
    /// Destination ports a client may CONNECT to; never empty, never 0.
    pub allowed_ports: Vec<u16>,
    /// Host allowlist, never empty: the file's `allowed_hosts` (the first `local_hosts`
    /// entries), then the entries the presets expand to that are not already listed. An entry
    /// may carry its own ports (`"*.cloudapp.net:443,9354,30000-30199"`); one without uses
    /// `allowed_ports`. The same pattern may appear more than once with different ports: the
    /// policy unites them.
    pub allowed_hosts: Vec<HostEntry>,
    /// How many leading `allowed_hosts` entries are local (from `allowed_hosts:` or the
    /// built-in default) rather than from `presets`.
    pub local_hosts: usize,
    /// Static name -> addresses overrides consulted instead of DNS; keys are normalised.
    pub hosts: Vec<(String, Vec<IpAddr>)>,
    /// Turns the private-destination guard off entirely.
    pub allow_private_destinations: bool,
    /// A reload re-checks every open tunnel against the new policy and closes those it no
    /// longer allows.
    pub revoke_on_reload: bool,
    /// Networks exempted from the private-destination guard.
    pub allowed_destination_networks: Vec<ipnet::IpNet>,
    /// Networks clients may connect from; empty = any client.
    pub allowed_client_networks: Vec<ipnet::IpNet>,
    /// Client (proxy) authentication, with its users table already parsed; `None` = none.
    pub client_auth: Option<ClientAuthSettings>,
    pub limits: Limits,
    pub resolver: ResolverSettings,
    pub tls: TlsSettings,
    /// Open tunnels through this relay (upstream) proxy; `None` = connect directly.
    pub relay_proxy: Option<crate::relay::RelaySettings>,
    pub logging: LoggingSettings,
    /// `cloud:`: which Azure cloud's suffixes the presets use.
    pub cloud: Cloud,
    /// `presets:`: endpoint presets expanded into the allowlist.
    pub presets: Vec<Preset>,
    /// `workspaces:`: Log Analytics workspace IDs filled into the presets.
    pub workspaces: Vec<WorkspaceId>,
    /// `regions:`: Azure regions filled into region-scoped preset entries.
    pub regions: Vec<Region>,
    /// The presets expanded, each with its origin; also appended to `allowed_hosts`.
    pub preset_hosts: Vec<PresetHost>,
}

/// Where a running gateway offers its listening sockets to a successor (`run --takeover`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeoverSocket {
    /// The key is absent: [`DEFAULT_TAKEOVER_SOCKET`], used when it can be (a directory that
    /// cannot be created or a socket another live gateway holds leaves takeover off, with a
    /// warning).
    Default,
    /// A path set in the file: it must be usable, or the start fails.
    Path(PathBuf),
    /// `takeover_socket: null`.
    Off,
}

/// The takeover socket when `takeover_socket` is not set.
pub const DEFAULT_TAKEOVER_SOCKET: &str = "/run/splicegate/takeover.sock";

impl TakeoverSocket {
    /// The path to serve on, if any.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            TakeoverSocket::Default => Some(PathBuf::from(DEFAULT_TAKEOVER_SOCKET)),
            TakeoverSocket::Path(p) => Some(p.clone()),
            TakeoverSocket::Off => None,
        }
    }
}

/// `engine:`: the I/O driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring when the kernel supports it, epoll otherwise.
    Auto,
    /// io_uring only; startup fails without it.
    Uring,
    /// epoll only.
    Epoll,
}

impl EngineKind {
    /// The YAML spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Uring => "uring",
            EngineKind::Epoll => "epoll",
        }
    }
}

/// `data_path:`: how payload bytes are relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPath {
    /// `splice(2)` through a pipe, never copied to user space.
    Splice,
    /// `read`/`write` through a user-space buffer.
    Copy,
}

impl DataPath {
    /// The YAML spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            DataPath::Splice => "splice",
            DataPath::Copy => "copy",
        }
    }
}

/// `limits:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections across all workers; at least 1.
    pub max_connections: usize,
    /// The largest CONNECT request head accepted, 256 bytes to 1 MiB.
    pub max_header_bytes: usize,
    /// Time for a client to send its complete request head.
    pub header_timeout: Duration,
    /// Time to establish the upstream TCP connection.
    pub connect_timeout: Duration,
    /// A tunnel with no traffic in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, time given to open tunnels before they are closed.
    pub drain_timeout: Duration,
    /// Time allowed for name resolution.
    pub resolve_timeout: Duration,
    /// Pipes a worker may hold at once; 0 = automatic.
    pub max_pipes: usize,
    /// Requested pipe capacity in bytes, 4096 to 1 MiB (the kernel rounds it).
    pub pipe_size: usize,
    /// Connections the `/metrics` endpoint serves at once, 1 to 1024; more are answered 503
    /// and closed.
    pub metrics_max_connections: usize,
    /// Quiet time after the last change to the configuration file before the watch reads it,
    /// and between re-reads of a file that changed while it was read.
    pub reload_debounce: Duration,
    /// Times a file that changed while it was read is read again before the reload is refused.
    pub reload_retries: usize,
    /// First pause of a worker's accepting after a persistent accept error; doubled on each
    /// error in a row up to `accept_backoff_max`. At most `accept_backoff_max`.
    pub accept_backoff_min: Duration,
    /// Longest pause between accept attempts while errors persist, at most 1 minute.
    pub accept_backoff_max: Duration,
    /// How long a worker that died stays dead before it is started again, at most 1 hour.
    pub worker_restart_delay: Duration,
    /// Open connections one client address may hold across all workers (an IPv6 client per
    /// /64); 0 = no limit. Behind a PROXY protocol listener, the address the header names.
    pub max_connections_per_client: usize,
    /// On SIGTERM, how long the listeners keep accepting (with `/readyz` already 503) before
    /// they close and the drain begins; zero = close at once. At most 1 hour.
    pub drain_grace: Duration,
    /// How long either side of a takeover waits for the other's next message.
    pub takeover_timeout: Duration,
    /// Connections the admin socket serves at once, 1 to 1024; more wait in its backlog.
    pub admin_max_connections: usize,
    /// Time an admin socket client has to send its request, and the gateway to answer it
    /// (collecting the workers' snapshots included), at most 1 minute.
    pub admin_timeout: Duration,
    /// Bytes of memory the gateway may count before it refuses new clients (see
    /// [`crate::overload`]): its resident set plus the capacity of the pipes lent to tunnels.
    /// 0 = no memory budget; otherwise at least [`MIN_MEMORY_BUDGET`].
    pub memory_budget: u64,
    /// Percent of a budget (connections or memory) at which the overload state engages,
    /// 2 to 100.
    pub overload_engage_percent: u8,
    /// Percent below which every budget must fall before the overload state is released,
    /// 1 to `overload_engage_percent - 1`.
    pub overload_release_percent: u8,
    /// How often the control thread samples the budgets, 10ms to 10s.
    pub overload_sample_interval: Duration,
}

/// The smallest `limits.memory_budget` accepted: a started gateway is already about 5-15 MiB
/// resident (threads, rings, resolver, policy), so a budget below this would keep it
/// overloaded from the start. A budget that small is a mistake, refused with the key and line.
pub const MIN_MEMORY_BUDGET: u64 = 16 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 100_000,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15 * 60),
            drain_timeout: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(5),
            max_pipes: 0,
            pipe_size: 1024 * 1024,
            metrics_max_connections: 16,
            reload_debounce: Duration::from_millis(200),
            reload_retries: 5,
            accept_backoff_min: Duration::from_millis(10),
            accept_backoff_max: Duration::from_secs(1),
            worker_restart_delay: Duration::from_secs(1),
            max_connections_per_client: 0,
            drain_grace: Duration::ZERO,
            takeover_timeout: Duration::from_secs(30),
            admin_max_connections: 8,
            admin_timeout: Duration::from_secs(5),
            memory_budget: 0,
            overload_engage_percent: 95,
            overload_release_percent: 90,
            overload_sample_interval: Duration::from_millis(250),
        }
    }
}

/// `logging:`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggingSettings {
    /// The rate limit on refusal events per (client address, reason), per worker.
    pub refusals: RefusalBudget,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8080),
            ],
            listen_proxy: vec![None, None],
            metrics_listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464)),
            metrics_public: false,
            health_listen: None,
            takeover_socket: TakeoverSocket::Default,
            admin_socket: Some(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            workers: 0,
            engine: EngineKind::Auto,
            data_path: DataPath::Splice,
            allowed_ports: vec![443],
            allowed_hosts: DEFAULT_ALLOWED_HOSTS
                .iter()
                .filter_map(|p| HostEntry::parse(p).ok())
                .collect(),
            hosts: Vec::new(),
            allow_private_destinations: false,
            revoke_on_reload: true,
            allowed_destination_networks: Vec::new(),
            allowed_client_networks: Vec::new(),
            client_auth: None,
            limits: Limits::default(),
            resolver: ResolverSettings::default(),
            tls: TlsSettings::default(),
            relay_proxy: None,
            logging: LoggingSettings::default(),
            local_hosts: DEFAULT_ALLOWED_HOSTS.len(),
            cloud: Cloud::Public,
            presets: Vec::new(),
            workspaces: Vec::new(),
            regions: Vec::new(),
            preset_hosts: Vec::new(),
        }
    }
}

impl Config {
    /// Parses and validates a YAML document. Every problem is reported, each with its key
    /// path and line.
    pub fn from_yaml(src: &str) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: None,
            problems,
        };
        let raw = raw::parse(src).map_err(|p| invalid(vec![p]))?;
        validate::validate(raw).map_err(invalid)
    }

    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load(path).map(|(cfg, _)| cfg)
    }

    /// Like [`Config::from_file`], and also returns the text the configuration was parsed from
    /// (a reload compares the file against it to tell a real change from a touch).
    pub fn load(path: &Path) -> Result<(Config, String), ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match Config::from_yaml(&src) {
            Ok(cfg) => Ok((cfg, src)),
            Err(ConfigError::Invalid { problems, .. }) => Err(ConfigError::Invalid {
                path: Some(path.to_path_buf()),
                problems,
            }),
            Err(io) => Err(io),
        }
    }

    /// The configuration in [`DEFAULT_YAML`]. A unit test proves it parses and equals
    /// [`Config::default`], which is returned should it ever fail to.
    pub fn embedded_default() -> Config {
        Config::from_yaml(DEFAULT_YAML).unwrap_or_default()
    }

    /// The parts of the configuration the access policy is built from, lent as they are.
    pub fn policy_spec(&self) -> PolicySpec<'_> {
        PolicySpec {
            allowed_hosts: &self.allowed_hosts,
            allowed_ports: &self.allowed_ports,
            user_hosts: self
                .client_auth
                .as_ref()
                .map_or(&[], |a| a.user_hosts.as_slice()),
            hosts: &self.hosts,
            allow_private_destinations: self.allow_private_destinations,
            allowed_destination_networks: &self.allowed_destination_networks,
            allowed_client_networks: &self.allowed_client_networks,
        }
    }

    /// `ports 443,9354,30000-30199` for an entry with its own ports, `ports (global) 443` for
    /// one on `allowed_ports`.
    pub fn ports_text(&self, entry: &HostEntry) -> String {
        match entry.ports() {
            Some(ports) => format!("ports {ports}"),
            None => {
                let global: Vec<String> =
                    self.allowed_ports.iter().map(ToString::to_string).collect();
                format!("ports (global) {}", global.join(","))
            }
        }
    }

    /// A human-readable account of the effective configuration, every key included, for
    /// `check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "listen: {}",
            list(self.listen.iter().map(ToString::to_string).collect())
        );
        for (addr, from) in self.listen.iter().zip(&self.listen_proxy) {
            if let Some(from) = from {
                let nets = from.networks().iter().map(ToString::to_string).collect();
                let _ = writeln!(out, "  {addr}: PROXY protocol from {}", list(nets));
            }
        }
        let _ = writeln!(
            out,
            "metrics_listen: {}",
            self.metrics_listen
                .map_or_else(|| "disabled".to_owned(), |a| a.to_string())
        );
        let _ = writeln!(
            out,
            "admin_socket: {}",
            self.admin_socket
                .as_ref()
                .map_or_else(|| "disabled".to_owned(), |p| p.display().to_string())
        );
        if self.metrics_public {
            let _ = writeln!(
                out,
                "metrics_public: true (the metrics endpoint may listen beyond loopback)"
            );
        }
        let _ = writeln!(
            out,
            "health_listen: {}",
            self.health_listen
                .map_or_else(|| "disabled".to_owned(), |a| a.to_string())
        );
        let _ = writeln!(
            out,
            "takeover_socket: {}",
            match &self.takeover_socket {
                TakeoverSocket::Default => format!("{DEFAULT_TAKEOVER_SOCKET} (default)"),
                TakeoverSocket::Path(p) => p.display().to_string(),
                TakeoverSocket::Off => "disabled".to_owned(),
            }
        );
        if self.workers == 0 {
            let _ = writeln!(out, "workers: 0 (one per online CPU)");
        } else {
            let _ = writeln!(out, "workers: {}", self.workers);
        }
        let _ = writeln!(out, "engine: {}", self.engine.as_str());
        let _ = writeln!(out, "data_path: {}", self.data_path.as_str());
        let _ = writeln!(
            out,
            "allowed_ports: {}",
            list(self.allowed_ports.iter().map(ToString::to_string).collect())
        );
        let local = self.local_hosts.min(self.allowed_hosts.len());
        let _ = writeln!(out, "allowed_hosts: {local} pattern(s)");
        let local_hosts = &self.allowed_hosts[..local];
        let width = local_hosts
            .iter()
            .map(|e| e.pattern().to_string().len())
            .max()
            .unwrap_or(0);
        for entry in local_hosts {
            let pattern = entry.pattern().to_string();
            let _ = writeln!(out, "  - {pattern:width$}  {}", self.ports_text(entry));
        }
        let _ = writeln!(out, "cloud: {}", self.cloud);
        let _ = writeln!(
            out,
            "presets: {}",
            list(self.presets.iter().map(ToString::to_string).collect())
        );
        let _ = writeln!(
            out,
            "workspaces: {}",
            list(self.workspaces.iter().map(ToString::to_string).collect())
        );
        let _ = writeln!(
            out,
            "regions: {}",
            list(self.regions.iter().map(ToString::to_string).collect())
        );
        if !self.preset_hosts.is_empty() {
            let _ = writeln!(
                out,
                "hosts from presets: {} pattern(s), also allowed",
                self.preset_hosts.len()
            );
            let rows: Vec<(String, String)> = self
                .preset_hosts
                .iter()
                .map(|h| (h.entry.pattern().to_string(), self.ports_text(&h.entry)))
                .collect();
            let width = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
            let ports_width = rows.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
            for (h, (pattern, ports)) in self.preset_hosts.iter().zip(&rows) {
                let _ = writeln!(
                    out,
                    "  - {pattern:width$}  {ports:ports_width$}  [{}] {}",
                    h.origin(),
                    h.why
                );
            }
        }
        let _ = writeln!(out, "hosts: {} override(s)", self.hosts.len());
        for (name, addrs) in &self.hosts {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  {name} -> {}", addrs.join(", "));
        }
        let _ = writeln!(
            out,
            "allow_private_destinations: {}{}",
            self.allow_private_destinations,
            if self.allow_private_destinations {
                " (the private-destination guard is OFF)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "allowed_destination_networks: {}",
            list(
                self.allowed_destination_networks
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            )
        );
        let _ = writeln!(out, "revoke_on_reload: {}", self.revoke_on_reload);
        let _ = writeln!(
            out,
            "allowed_client_networks: {}",
            if self.allowed_client_networks.is_empty() {
                "any (no restriction)".to_owned()
            } else {
                self.allowed_client_networks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        match &self.client_auth {
            None => {
                let _ = writeln!(out, "client_auth: none (no client authentication)");
            }
            Some(a) => {
                let _ = writeln!(out, "client_auth:");
                let _ = writeln!(
                    out,
                    "  users_file: {} (hashes not shown)",
                    a.users_file.display()
                );
                let _ = writeln!(out, "  realm: {:?}", a.realm);
                let _ = writeln!(out, "  max_failures: {}", a.max_failures);
                let _ = writeln!(
                    out,
                    "  failure_window: {}",
                    format_duration(a.failure_window)
                );
                if a.user_hosts.is_empty() {
                    let _ = writeln!(out, "  user_hosts: none (every user sees the global list)");
                } else {
                    let _ = writeln!(out, "  user_hosts (in addition to the global list):");
                    for (user, entries) in &a.user_hosts {
                        let _ = writeln!(out, "    {user}:");
                        for entry in entries {
                            let _ = writeln!(
                                out,
                                "      - {}  {}",
                                entry.pattern(),
                                self.ports_text(entry)
                            );
                        }
                    }
                }
            }
        }
        let l = &self.limits;
        let _ = writeln!(out, "limits:");
        let _ = writeln!(out, "  max_connections: {}", l.max_connections);
        if l.max_connections_per_client == 0 {
            let _ = writeln!(out, "  max_connections_per_client: 0 (no limit)");
        } else {
            let _ = writeln!(
                out,
                "  max_connections_per_client: {}",
                l.max_connections_per_client
            );
        }
        let _ = writeln!(out, "  max_header_bytes: {}", l.max_header_bytes);
        for (key, d) in [
            ("header_timeout", l.header_timeout),
            ("connect_timeout", l.connect_timeout),
            ("idle_timeout", l.idle_timeout),
            ("drain_timeout", l.drain_timeout),
            ("resolve_timeout", l.resolve_timeout),
        ] {
            let _ = writeln!(out, "  {key}: {}", format_duration(d));
        }
        if l.max_pipes == 0 {
            let _ = writeln!(out, "  max_pipes: 0 (automatic)");
        } else {
            let _ = writeln!(out, "  max_pipes: {}", l.max_pipes);
        }
        let _ = writeln!(out, "  pipe_size: {}", l.pipe_size);
        let _ = writeln!(
            out,
            "  metrics_max_connections: {}",
            l.metrics_max_connections
        );
        let _ = writeln!(
            out,
            "  reload_debounce: {}",
            format_duration(l.reload_debounce)
        );
        let _ = writeln!(out, "  reload_retries: {}", l.reload_retries);
        let _ = writeln!(out, "  admin_max_connections: {}", l.admin_max_connections);
        let _ = writeln!(out, "  admin_timeout: {}", format_duration(l.admin_timeout));
        if l.memory_budget == 0 {
            let _ = writeln!(out, "  memory_budget: 0 (off)");
        } else {
            let _ = writeln!(out, "  memory_budget: {}", l.memory_budget);
        }
        let _ = writeln!(
            out,
            "  overload_engage_percent: {}",
            l.overload_engage_percent
        );
        let _ = writeln!(
            out,
            "  overload_release_percent: {}",
            l.overload_release_percent
        );
        let _ = writeln!(
            out,
            "  overload_sample_interval: {}",
            format_duration(l.overload_sample_interval)
        );
        for (key, d) in [
            ("accept_backoff_min", l.accept_backoff_min),
            ("accept_backoff_max", l.accept_backoff_max),
            ("worker_restart_delay", l.worker_restart_delay),
            ("drain_grace", l.drain_grace),
            ("takeover_timeout", l.takeover_timeout),
        ] {
            let _ = writeln!(out, "  {key}: {}", format_duration(d));
        }
        match &self.relay_proxy {
            None => {
                let _ = writeln!(out, "relay_proxy: none (direct connections)");
            }
            Some(r) => {
                let _ = writeln!(out, "relay_proxy:");
                let _ = writeln!(out, "  address: {}", r.address());
                if let Some(u) = &r.username {
                    let _ = writeln!(out, "  username: {u}");
                }
                if let Some(p) = &r.password_file {
                    let _ = writeln!(out, "  password_file: {} (password not shown)", p.display());
                }
                if let Some(c) = &r.ca_file {
                    let _ = writeln!(out, "  ca_file: {}", c.display());
                }
                let _ = writeln!(out, "  health_check: {}", r.health_check);
            }
        }
        let r = &self.resolver;
        let _ = writeln!(out, "resolver:");
        if r.nameservers.is_empty() {
            let _ = writeln!(out, "  nameservers: system (/etc/resolv.conf)");
        } else {
            let servers: Vec<String> = r.nameservers.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  nameservers: {}", servers.join(", "));
        }
        if r.cache_size == 0 {
            let _ = writeln!(out, "  cache_size: 0 (no cache)");
        } else {
            let _ = writeln!(out, "  cache_size: {}", r.cache_size);
        }
        let _ = writeln!(out, "  hosts_file: {}", r.hosts_file.display());
        let _ = writeln!(
            out,
            "  ttl: {} to {}, negative up to {}",
            format_duration(r.min_ttl),
            format_duration(r.max_ttl),
            format_duration(r.negative_ttl)
        );
        if r.stale_ttl.is_zero() {
            let _ = writeln!(out, "  stale answers: never");
        } else {
            let _ = writeln!(
                out,
                "  stale answers: after {} of silence, up to {} past expiry",
                format_duration(r.stale_after),
                format_duration(r.stale_ttl)
            );
        }
        let _ = writeln!(
            out,
            "  resolution_delay: {}",
            format_duration(r.resolution_delay)
        );
        let _ = writeln!(out, "  private_link: {}", r.private_link);
        let r = &self.logging.refusals;
        let _ = writeln!(out, "logging:");
        let _ = writeln!(out, "  refusal_burst: {} (per worker)", r.burst);
        let _ = writeln!(out, "  refusal_window: {}", format_duration(r.window));
        let _ = writeln!(out, "  refusal_table_size: {}", r.max_keys);
        let t = &self.tls;
        let _ = writeln!(out, "tls:");
        if t.inspect {
            let _ = writeln!(out, "  inspect: true");
        } else {
            let _ = writeln!(
                out,
                "  inspect: false (plain CONNECT tunnels, no TLS checks)"
            );
        }
        let _ = writeln!(out, "  min_version: {}", t.min_version);
        let _ = writeln!(out, "  require_sni: {}", t.require_sni);
        let _ = writeln!(out, "  require_sni_match: {}", t.require_sni_match);
        let _ = writeln!(out, "  hello_timeout: {}", format_duration(t.hello_timeout));
        let _ = writeln!(out, "  max_hello_bytes: {}", t.max_hello_bytes);
        if t.allowed_client_certificates.is_empty() {
            let _ = writeln!(out, "  allowed_client_certificates: none (no check)");
        } else {
            let _ = writeln!(
                out,
                "  allowed_client_certificates: {} subject(s)",
                t.allowed_client_certificates.len()
            );
            for subject in &t.allowed_client_certificates {
                let _ = writeln!(out, "    - {subject}");
            }
        }
        let _ = writeln!(
            out,
            "  tls13_client_certificate: {}",
            t.tls13_client_certificate.as_str()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tls::{Tls13Policy, TlsVersion};
    use std::path::PathBuf;

    fn ok(yaml: &str) -> Config {
        match Config::from_yaml(yaml) {
            Ok(cfg) => cfg,
            Err(e) => panic!("{yaml:?} should parse:\n{e}"),
        }
    }

    fn problems(yaml: &str) -> Vec<Problem> {
        match Config::from_yaml(yaml) {
            Ok(cfg) => panic!("{yaml:?} should fail, got {cfg:?}"),
            Err(e) => e.problems().to_vec(),
        }
    }

    /// Asserts that `yaml` fails with exactly one problem at `key` on `line`, whose message
    /// contains every one of `needles`.
    fn bad(yaml: &str, key: &str, line: usize, needles: &[&str]) {
        let found = problems(yaml);
        assert_eq!(found.len(), 1, "{yaml:?}: {found:#?}");
        let p = &found[0];
        assert_eq!(p.key, key, "{yaml:?}: {p}");
        assert_eq!(p.line, Some(line), "{yaml:?}: {p}");
        let text = p.to_string();
        assert!(text.contains(key), "{text}");
        assert!(text.starts_with(&format!("line {line}: ")), "{text}");
        for needle in needles {
            assert!(text.contains(needle), "{yaml:?}: {text:?} lacks {needle:?}");
        }
    }

    fn addr(s: &str) -> SocketAddr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("bad test address {s}: {e}"),
        }
    }

    #[test]
    fn defaults() {
        let cfg = Config::default();
        assert_eq!(cfg.listen, vec![addr("0.0.0.0:8080"), addr("[::]:8080")]);
        assert_eq!(cfg.metrics_listen, Some(addr("127.0.0.1:9464")));
        assert_eq!(cfg.workers, 0);
        assert_eq!(cfg.engine, EngineKind::Auto);
        assert_eq!(cfg.data_path, DataPath::Splice);
        assert_eq!(cfg.allowed_ports, vec![443]);
        let hosts: Vec<String> = cfg.allowed_hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, DEFAULT_ALLOWED_HOSTS);
        assert!(cfg.hosts.is_empty());
        assert!(!cfg.allow_private_destinations);
        assert!(cfg.allowed_destination_networks.is_empty());
        assert_eq!(cfg.limits.max_connections, 100_000);
        assert_eq!(cfg.limits.max_header_bytes, 16384);
        assert_eq!(cfg.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(cfg.limits.connect_timeout, Duration::from_secs(10));
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(900));
        assert_eq!(cfg.limits.drain_timeout, Duration::from_secs(30));
        assert_eq!(cfg.limits.resolve_timeout, Duration::from_secs(5));
        assert_eq!(cfg.limits.max_pipes, 0);
        assert_eq!(cfg.limits.pipe_size, 1_048_576);
        assert!(cfg.resolver.nameservers.is_empty());
        assert_eq!(cfg.resolver.cache_size, 4096);
        assert_eq!(cfg.limits.metrics_max_connections, 16);
        assert_eq!(cfg.limits.reload_debounce, Duration::from_millis(200));
        assert_eq!(cfg.limits.reload_retries, 5);
        assert_eq!(cfg.limits.accept_backoff_min, Duration::from_millis(10));
        assert_eq!(cfg.limits.accept_backoff_max, Duration::from_secs(1));
        assert_eq!(cfg.limits.worker_restart_delay, Duration::from_secs(1));
        assert!(!cfg.metrics_public);
        assert_eq!(ok("{}\n"), cfg, "`{{}}` asks for every default");
        assert_eq!(ok("limits:\nresolver:\n"), cfg);
    }

    #[test]
    fn an_empty_document_is_refused() {
        for empty in [
            "",
            "\n\n",
            "# nothing but a comment\n",
            "---\n",
            "   \n# a\n# b\n",
            "~\n",
        ] {
            let found = problems(empty);
            assert_eq!(found.len(), 1, "{empty:?}: {found:?}");
            assert!(
                found[0].message.contains("the configuration is empty"),
                "{empty:?}: {found:?}"
            );
        }
    }

    #[test]
    fn embedded_default_parses_and_matches_defaults() {
        // (`Config::embedded_default()` falls back to `Config::default()` when the text does not
        // parse, so comparing the two could not fail: parse the text itself.)
        assert_eq!(ok(DEFAULT_YAML), Config::default());
    }

    #[test]
    fn embedded_default_shows_every_key() {
        let top = [
            "listen:",
            "metrics_listen:",
            "health_listen:",
            "admin_socket:",
            "workers:",
            "engine:",
            "data_path:",
            "allowed_ports:",
            "allowed_hosts:",
            "hosts:",
            "allow_private_destinations:",
            "revoke_on_reload:",
            "allowed_destination_networks:",
            "allowed_client_networks:",
            "client_auth:",
            "limits:",
            "resolver:",
        ];
        for key in top {
            assert!(
                DEFAULT_YAML.lines().any(|l| l.starts_with(key)),
                "default.yaml lacks {key}"
            );
        }
        let nested = [
            "max_connections:",
            "max_header_bytes:",
            "header_timeout:",
            "connect_timeout:",
            "idle_timeout:",
            "drain_timeout:",
            "resolve_timeout:",
            "max_pipes:",
            "pipe_size:",
            "accept_backoff_min:",
            "accept_backoff_max:",
            "worker_restart_delay:",
            "drain_grace:",
            "takeover_timeout:",
            "admin_max_connections:",
            "admin_timeout:",
            "memory_budget:",
            "overload_engage_percent:",
            "overload_release_percent:",
            "overload_sample_interval:",
            "nameservers:",
            "cache_size:",
        ];
        for key in nested {
            assert!(
                DEFAULT_YAML
                    .lines()
                    .any(|l| l.trim_start().starts_with(key)),
                "default.yaml lacks {key}"
            );
        }
    }

    #[test]
    fn health_listen_takeover_socket_and_drain_grace() {
        assert_eq!(Config::default().health_listen, None);
        assert_eq!(ok("health_listen: null\n").health_listen, None);
        // Any address: the probe port is meant for a load balancer.
        assert_eq!(
            ok("health_listen: \"0.0.0.0:9465\"\n").health_listen,
            Some(addr("0.0.0.0:9465"))
        );
        bad(
            "health_listen: 9465\n",
            "health_listen",
            1,
            &["socket address"],
        );
        bad(
            "metrics_listen: \"127.0.0.1:9464\"\nhealth_listen: \"127.0.0.1:9464\"\n",
            "health_listen",
            2,
            &["both metrics_listen and health_listen"],
        );
        bad(
            "listen: [\"127.0.0.1:9465\"]\nhealth_listen: \"127.0.0.1:9465\"\n",
            "health_listen",
            2,
            &["both a listen address and health_listen"],
        );

        assert_eq!(Config::default().takeover_socket, TakeoverSocket::Default);
        assert_eq!(
            Config::default().takeover_socket.path(),
            Some(PathBuf::from(DEFAULT_TAKEOVER_SOCKET))
        );
        assert_eq!(
            ok("takeover_socket: null\n").takeover_socket,
            TakeoverSocket::Off
        );
        assert_eq!(TakeoverSocket::Off.path(), None);
        assert_eq!(
            ok("takeover_socket: /run/gw/t.sock\n").takeover_socket,
            TakeoverSocket::Path(PathBuf::from("/run/gw/t.sock"))
        );
        for wrong in [
            "relative.sock",
            "\"\"",
            "42",
            &format!("/{}", "x".repeat(120)),
        ] {
            bad(
                &format!("takeover_socket: {wrong}\n"),
                "takeover_socket",
                1,
                &["absolute path"],
            );
        }

        assert_eq!(Config::default().limits.drain_grace, Duration::ZERO);
        assert_eq!(
            ok("limits:\n  drain_grace: 0\n").limits.drain_grace,
            Duration::ZERO
        );
        assert_eq!(
            ok("limits:\n  drain_grace: 15s\n").limits.drain_grace,
            Duration::from_secs(15)
        );
        bad(
            "limits:\n  drain_grace: 2h\n",
            "limits.drain_grace",
            2,
            &["at most 1h"],
        );
        assert_eq!(
            Config::default().limits.takeover_timeout,
            Duration::from_secs(30)
        );
        bad(
            "limits:\n  takeover_timeout: 0\n",
            "limits.takeover_timeout",
            2,
            &["greater than zero"],
        );
    }

    #[test]
    fn old_gateway_listen_text() {
        bad(
            "# comment\nlisten: \"text\"\n",
            "listen",
            2,
            &[
                "expected a list of socket addresses such as \"0.0.0.0:8080\"",
                "found the string \"text\"",
            ],
        );
        assert_eq!(
            problems("# comment\nlisten: \"text\"\n")[0].to_string(),
            "line 2: listen: expected a list of socket addresses such as \"0.0.0.0:8080\", \
             found the string \"text\""
        );
    }

    #[test]
    fn listen() {
        let cfg = ok("listen:\n  - 127.0.0.1:3128\n  - \"[::1]:3128\"\n");
        assert_eq!(cfg.listen, vec![addr("127.0.0.1:3128"), addr("[::1]:3128")]);
        bad(
            "listen:\n  - 127.0.0.1:3128\n  - nope\n",
            "listen[1]",
            3,
            &["expected a socket address", "found the string \"nope\""],
        );
        bad("listen: []\n", "listen", 1, &["empty"]);
        bad("listen:\n", "listen", 1, &["expected a list", "null"]);
        bad(
            "listen: [1.2.3.4:1, 1.2.3.4:1]\n",
            "listen[1]",
            1,
            &["more than once"],
        );
        bad(
            "listen:\n  - ::\n",
            "listen[0]",
            2,
            &["found a mapping", "must be quoted"],
        );
        bad(
            "listen: [8080]\n",
            "listen[0]",
            1,
            &["found the number 8080"],
        );
    }

    #[test]
    fn listen_objects_with_proxy_protocol() {
        let cfg = ok("listen:\n  - 127.0.0.1:3128\n  - {address: \"0.0.0.0:8080\", proxy_protocol: true, proxy_from: [\"10.0.0.0/24\", 192.0.2.7]}\n  - {address: \"[::]:8081\"}\n  - {address: \"[::]:8082\", proxy_protocol: false}\n");
        assert_eq!(
            cfg.listen,
            vec![
                addr("127.0.0.1:3128"),
                addr("0.0.0.0:8080"),
                addr("[::]:8081"),
                addr("[::]:8082")
            ]
        );
        let nets: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/24".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        assert_eq!(
            cfg.listen_proxy,
            vec![None, ProxySources::new(nets), None, None]
        );
        assert!(cfg
            .summary()
            .contains("0.0.0.0:8080: PROXY protocol from 10.0.0.0/24, 192.0.2.7/32"));
        assert_eq!(
            Config::default().listen_proxy.len(),
            Config::default().listen.len()
        );
        bad(
            "listen:\n  - {address: 0.0.0.0:8080, proxy_protocol: true}\n",
            "listen[0].proxy_protocol",
            2,
            &["needs proxy_from"],
        );
        bad(
            "listen:\n  - {address: 0.0.0.0:8080, proxy_from: [10.0.0.0/8]}\n",
            "listen[0].proxy_from",
            2,
            &["only used with `proxy_protocol: true`"],
        );
        bad(
            "listen:\n  - {address: 0.0.0.0:8080, proxy_protocol: true, proxy_from: []}\n",
            "listen[0].proxy_from",
            2,
            &["empty"],
        );
        bad(
            "listen:\n  - {address: 0.0.0.0:8080, proxy_protocol: true, proxy_from: [10.0.0.0/33]}\n",
            "listen[0].proxy_from[0]",
            2,
            &["found the string \"10.0.0.0/33\""],
        );
        bad(
            "listen:\n  - {address: 0.0.0.0:8080, proxy_protocol: yes please, proxy_from: [10.0.0.0/8]}\n",
            "listen[0].proxy_protocol",
            2,
            &["true or false"],
        );
        bad(
            "listen:\n  - {address: 0.0.0.0:8080, proxy: true}\n",
            "listen[0]",
            2,
            &["unknown key the string \"proxy\""],
        );
        bad(
            "listen:\n  - {proxy_protocol: false}\n",
            "listen[0]",
            2,
            &["no `address`"],
        );
        bad(
            "listen:\n  - {address: nope}\n",
            "listen[0].address",
            2,
            &["found the string \"nope\""],
        );
        bad(
            "listen:\n  - 0.0.0.0:8080\n  - {address: 0.0.0.0:8080, proxy_protocol: true, proxy_from: [10.0.0.0/8]}\n",
            "listen[1]",
            3,
            &["more than once"],
        );
    }

    #[test]
    fn max_connections_per_client() {
        assert_eq!(Config::default().limits.max_connections_per_client, 0);
        let cfg = ok("limits:\n  max_connections_per_client: 20\n");
        assert_eq!(cfg.limits.max_connections_per_client, 20);
        assert!(cfg.summary().contains("max_connections_per_client: 20"));
        bad(
            "limits:\n  max_connections_per_client: -1\n",
            "limits.max_connections_per_client",
            2,
            &["0 = no limit per client"],
        );
    }

    #[test]
    fn memory_budget_and_overload_thresholds() {
        let d = Config::default().limits;
        assert_eq!(d.memory_budget, 0, "off by default");
        assert_eq!(
            (d.overload_engage_percent, d.overload_release_percent),
            (95, 90)
        );
        assert_eq!(d.overload_sample_interval, Duration::from_millis(250));
        for (text, bytes) in [
            ("0", 0),
            ("16777216", 16 << 20),
            ("\"512MiB\"", 512 << 20),
            ("\"2GiB\"", 2 << 30),
            ("\"65536 KiB\"", 64 << 20),
            ("\"1TiB\"", 1 << 40),
        ] {
            let cfg = ok(&format!("limits:\n  memory_budget: {text}\n"));
            assert_eq!(cfg.limits.memory_budget, bytes, "{text}");
        }
        let cfg = ok("limits:\n  memory_budget: 1GiB\n  overload_engage_percent: 80\n  overload_release_percent: 70\n  overload_sample_interval: 50ms\n");
        let l = &cfg.limits;
        assert_eq!(
            (l.overload_engage_percent, l.overload_release_percent),
            (80, 70)
        );
        assert_eq!(l.overload_sample_interval, Duration::from_millis(50));
        assert!(cfg.summary().contains("memory_budget: 1073741824"));
        assert!(Config::default()
            .summary()
            .contains("memory_budget: 0 (off)"));
        // Too small to start under: a clear error, not a gateway overloaded from the start.
        bad(
            "limits:\n  memory_budget: 8MiB\n",
            "limits.memory_budget",
            2,
            &["at least 16MiB", "8MiB"],
        );
        bad(
            "limits:\n  memory_budget: 1000\n",
            "limits.memory_budget",
            2,
            &["at least 16MiB"],
        );
        for junk in [
            "-1",
            "\"12 MB\"",
            "\"MiB\"",
            "\"1.5GiB\"",
            "\"99999999999TiB\"",
            "true",
        ] {
            bad(
                &format!("limits:\n  memory_budget: {junk}\n"),
                "limits.memory_budget",
                2,
                &["\"512MiB\""],
            );
        }
        bad(
            "limits:\n  overload_release_percent: 95\n",
            "limits.overload_release_percent",
            2,
            &["below overload_engage_percent (95)"],
        );
        bad(
            "limits:\n  overload_engage_percent: 90\n",
            "limits.overload_engage_percent",
            2,
            &["overload_release_percent (90) below"],
        );
        bad(
            "limits:\n  overload_engage_percent: 101\n",
            "limits.overload_engage_percent",
            2,
            &["2 to 100"],
        );
        bad(
            "limits:\n  overload_sample_interval: 5ms\n",
            "limits.overload_sample_interval",
            2,
            &["10ms to 10s"],
        );
        bad(
            "limits:\n  overload_sample_interval: 1m\n",
            "limits.overload_sample_interval",
            2,
            &["10ms to 10s"],
        );
    }

    #[test]
    fn metrics_listen() {
        assert_eq!(ok("metrics_listen: null\n").metrics_listen, None);
        assert_eq!(ok("metrics_listen: ~\n").metrics_listen, None);
        assert_eq!(ok("metrics_listen:\n").metrics_listen, None);
        assert_eq!(
            ok("metrics_listen: \"[::1]:9000\"\n").metrics_listen,
            Some(addr("[::1]:9000"))
        );
        bad(
            "workers: 1\nmetrics_listen: localhost:9464\n",
            "metrics_listen",
            2,
            &[
                "expected a socket address",
                "null to disable",
                "\"localhost:9464\"",
            ],
        );
        bad(
            "listen: [127.0.0.1:9464]\nmetrics_listen: 127.0.0.1:9464\n",
            "metrics_listen",
            2,
            &["both a listen address and metrics_listen"],
        );
        let ephemeral = ok("listen: [127.0.0.1:0, 127.0.0.1:0]\nmetrics_listen: 127.0.0.1:0\n");
        assert_eq!(ephemeral.listen.len(), 2, "port 0 never collides");
        bad(
            "listen: [127.0.0.1:9464]\n",
            "listen",
            1,
            &["both a listen address and metrics_listen"],
        );
    }

    #[test]
    fn a_public_metrics_address_needs_metrics_public() {
        for public in ["0.0.0.0:9464", "\"[::]:9464\"", "192.0.2.1:9464"] {
            bad(
                &format!("workers: 1\nmetrics_listen: {public}\n"),
                "metrics_listen",
                2,
                &["not a loopback address", "metrics_public: true"],
            );
            let cfg = ok(&format!("metrics_listen: {public}\nmetrics_public: true\n"));
            assert!(cfg.metrics_public);
            assert!(cfg.summary().contains("metrics_public: true"));
        }
        for local in [
            "127.0.0.1:9464",
            "127.0.0.2:9464",
            "\"[::1]:9464\"",
            "\"[::ffff:127.0.0.1]:9464\"",
        ] {
            assert!(!ok(&format!("metrics_listen: {local}\n")).metrics_public);
        }
        assert_eq!(ok("metrics_listen: null\n").metrics_listen, None);
        bad(
            "metrics_public: yes\n",
            "metrics_public",
            1,
            &["true or false"],
        );
    }

    #[test]
    fn workers() {
        assert_eq!(ok("workers: 8\n").workers, 8);
        assert_eq!(ok("workers: 1024\n").workers, 1024);
        bad(
            "workers: 1025\n",
            "workers",
            1,
            &["0 (one per online CPU) to 1024", "1025"],
        );
        bad("workers: -1\n", "workers", 1, &["found the number -1"]);
        bad(
            "workers: four\n",
            "workers",
            1,
            &["found the string \"four\""],
        );
        bad("workers: 1.5\n", "workers", 1, &["found the number 1.5"]);
    }

    #[test]
    fn engine_and_data_path() {
        assert_eq!(ok("engine: uring\n").engine, EngineKind::Uring);
        assert_eq!(ok("engine: epoll\n").engine, EngineKind::Epoll);
        assert_eq!(ok("engine: auto\n").engine, EngineKind::Auto);
        bad(
            "engine: io_uring\n",
            "engine",
            1,
            &["one of \"auto\", \"uring\", \"epoll\"", "\"io_uring\""],
        );
        assert_eq!(ok("data_path: copy\n").data_path, DataPath::Copy);
        assert_eq!(ok("data_path: splice\n").data_path, DataPath::Splice);
        bad(
            "data_path: 1\n",
            "data_path",
            1,
            &["\"splice\", \"copy\"", "the number 1"],
        );
        for kind in [EngineKind::Auto, EngineKind::Uring, EngineKind::Epoll] {
            assert_eq!(ok(&format!("engine: {}\n", kind.as_str())).engine, kind);
        }
        for path in [DataPath::Splice, DataPath::Copy] {
            assert_eq!(
                ok(&format!("data_path: {}\n", path.as_str())).data_path,
                path
            );
        }
    }

    #[test]
    fn allowed_ports() {
        assert_eq!(
            ok("allowed_ports: [443, 8443, 443]\n").allowed_ports,
            vec![443, 8443]
        );
        assert_eq!(
            ok("allowed_ports: [65535, 1]\n").allowed_ports,
            vec![65535, 1]
        );
        bad(
            "allowed_ports: [443, 0]\n",
            "allowed_ports[1]",
            1,
            &["1 to 65535", "number 0"],
        );
        bad(
            "allowed_ports:\n  - 65536\n",
            "allowed_ports[0]",
            2,
            &["65536"],
        );
        bad("allowed_ports: []\n", "allowed_ports", 1, &["empty"]);
        bad(
            "allowed_ports: 443\n",
            "allowed_ports",
            1,
            &["expected a list", "number 443"],
        );
        bad(
            "allowed_ports: [\"https\"]\n",
            "allowed_ports[0]",
            1,
            &["\"https\""],
        );
    }

    #[test]
    fn allowed_hosts() {
        let cfg = ok("allowed_hosts:\n  - Example.COM.\n  - '*.svc.example.net'\n  - 192.0.2.1\n");
        let hosts: Vec<String> = cfg.allowed_hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["example.com", "*.svc.example.net", "192.0.2.1"]);
        bad(
            "allowed_hosts:\n  - a.example\n  - b.example\n  - c.example\n  - 'foo.*.example'\n",
            "allowed_hosts[3]",
            5,
            &["invalid host pattern \"foo.*.example\"", "first label"],
        );
        bad(
            "allowed_hosts: [\"https://example.com\"]\n",
            "allowed_hosts[0]",
            1,
            &["scheme"],
        );
        bad("allowed_hosts: []\n", "allowed_hosts", 1, &["empty"]);
        bad(
            "allowed_hosts: example.com\n",
            "allowed_hosts",
            1,
            &["expected a list"],
        );
    }

    #[test]
    fn allowed_hosts_with_ports() {
        let cfg = ok("allowed_ports: [443, 8443]\n\
             allowed_hosts:\n\
             \x20 - '*.CloudApp.net:30000-30199,443,9354'\n\
             \x20 - login.windows.net:443,80,443\n\
             \x20 - '[2001:db8::1]:443'\n\
             \x20 - '2001:db8::2'\n\
             \x20 - plain.example\n\
             \x20 - plain.example\n\
             \x20 - plain.example:8080\n");
        let hosts: Vec<String> = cfg.allowed_hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            hosts,
            [
                "*.cloudapp.net:443,9354,30000-30199",
                "login.windows.net:80,443",
                "[2001:db8::1]:443",
                "2001:db8::2",
                "plain.example",
                "plain.example:8080",
            ],
            "exact repeats are dropped, the same pattern with other ports is kept"
        );
        let summary = cfg.summary();
        for line in [
            "  - *.cloudapp.net     ports 443,9354,30000-30199\n",
            "  - login.windows.net  ports 80,443\n",
            "  - 2001:db8::1        ports 443\n",
            "  - 2001:db8::2        ports (global) 443,8443\n",
            "  - plain.example      ports (global) 443,8443\n",
            "  - plain.example      ports 8080\n",
        ] {
            assert!(summary.contains(line), "{line:?} missing from:\n{summary}");
        }
        for (entry, needle) in [
            ("x:0", "out of range"),
            ("x:70000", "out of range"),
            ("x:443-80", "backwards"),
            ("x:", "empty"),
            ("x:https", "not a port number"),
            ("a:b:443", "in brackets"),
            ("[example.com]:443", "only an IPv6 address"),
        ] {
            bad(
                &format!("workers: 1\nallowed_hosts:\n  - a.example\n  - {entry:?}\n"),
                "allowed_hosts[1]",
                4,
                &[&format!("invalid host pattern {entry:?}"), needle],
            );
        }
    }

    #[test]
    fn client_networks() {
        let cfg = ok("allowed_client_networks: [10.0.0.0/8, 192.0.2.7, 'fd00::/8', 10.1.2.3/16]\n");
        let nets: Vec<String> = cfg
            .allowed_client_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "10.1.0.0/16"]
        );
        assert!(cfg.summary().contains(
            "allowed_client_networks: 10.0.0.0/8, 192.0.2.7/32, fd00::/8, 10.1.0.0/16\n"
        ));
        assert!(ok("allowed_client_networks:\n")
            .allowed_client_networks
            .is_empty());
        assert!(Config::default()
            .summary()
            .contains("allowed_client_networks: any"));
        bad(
            "allowed_client_networks:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n",
            "allowed_client_networks[1]",
            3,
            &["expected a network"],
        );
        bad(
            "allowed_client_networks: 10.0.0.0/8\n",
            "allowed_client_networks",
            1,
            &["expected a list"],
        );
    }

    /// A users file in a fresh temporary directory, removed on drop.
    struct TempUsers(std::path::PathBuf);

    impl TempUsers {
        fn new(tag: &str) -> TempUsers {
            let dir = std::env::temp_dir()
                .join(format!("splicegate-config-{tag}-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("create {}: {e}", dir.display());
            }
            let file = dir.join("users");
            if let Err(e) = std::fs::write(&file, "alice:$2b$04$notarealhashatall\n") {
                panic!("write {}: {e}", file.display());
            }
            TempUsers(dir)
        }

        fn file(&self) -> String {
            self.0.join("users").display().to_string()
        }
    }

    impl Drop for TempUsers {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn client_auth() {
        assert_eq!(ok("client_auth: null\n").client_auth, None);
        assert_eq!(ok("client_auth:\n").client_auth, None);
        let users = TempUsers::new("auth");
        let file = users.file();
        let cfg = ok(&format!("client_auth:\n  users_file: {file:?}\n"));
        assert_eq!(
            cfg.client_auth,
            Some(ClientAuthSettings {
                users_file: PathBuf::from(&file),
                users: match crate::auth::Users::parse("alice:$2b$04$notarealhashatall\n") {
                    Ok(u) => u,
                    Err(e) => panic!("test users: {e:?}"),
                },
                realm: "splicegate".to_owned(),
                max_failures: 5,
                failure_window: Duration::from_secs(60),
                user_hosts: Vec::new(),
            })
        );
        let cfg = ok(&format!(
            "client_auth:\n  users_file: {file:?}\n  realm: \"Contoso gateway\"\n  \
             max_failures: 3\n  failure_window: 5m\n  user_hosts:\n    \
             alice: [\"*.Extra.example.com:443\", b.example]\n    bob: []\n"
        ));
        let auth = cfg
            .client_auth
            .as_ref()
            .unwrap_or_else(|| panic!("no client_auth"));
        assert_eq!(auth.realm, "Contoso gateway");
        assert_eq!(auth.max_failures, 3);
        assert_eq!(auth.failure_window, Duration::from_secs(300));
        assert_eq!(
            auth.user_hosts,
            vec![
                (
                    "alice".to_owned(),
                    ["*.extra.example.com:443", "b.example"]
                        .iter()
                        .map(|e| match HostEntry::parse(e) {
                            Ok(entry) => entry,
                            Err(err) => panic!("{e}: {err}"),
                        })
                        .collect()
                ),
                ("bob".to_owned(), Vec::new()),
            ]
        );
        let summary = cfg.summary();
        assert!(
            summary.contains(&format!("  users_file: {file} (hashes not shown)\n")),
            "{summary}"
        );
        assert!(
            summary.contains("  realm: \"Contoso gateway\"\n"),
            "{summary}"
        );
        assert!(
            summary.contains("      - *.extra.example.com  ports 443\n"),
            "{summary}"
        );
        assert!(
            summary.contains("      - b.example  ports (global) 443\n"),
            "{summary}"
        );
        assert!(!summary.contains("notarealhash"), "{summary}");
        assert!(Config::default().summary().contains("client_auth: none"));

        let with = |rest: &str| format!("client_auth:\n  users_file: {file:?}\n{rest}");
        bad(
            &with("  user_hosts:\n    alice:\n      - ok.example\n      - 'x:0'\n"),
            "client_auth.user_hosts.alice[1]",
            6,
            &["invalid host pattern \"x:0\"", "out of range"],
        );
        bad(
            &with("  realm: 'a\"b'\n"),
            "client_auth.realm",
            3,
            &["without '\"'"],
        );
        bad(
            &with("  realm: ''\n"),
            "client_auth.realm",
            3,
            &["realm name"],
        );
        bad(
            &with("  max_failures: 0\n"),
            "client_auth.max_failures",
            3,
            &["at least 1"],
        );
        bad(
            &with("  failure_window: soon\n"),
            "client_auth.failure_window",
            3,
            &["expected a duration"],
        );
        bad(
            &with("  user_hosts: [a]\n"),
            "client_auth.user_hosts",
            3,
            &["expected a mapping of user names"],
        );
        bad(
            &with("  user_hosts:\n    'a:b': [x.example]\n"),
            "client_auth.user_hosts",
            4,
            &["expected a user name"],
        );
        bad(
            &with("  bogus: 1\n"),
            "client_auth.bogus",
            3,
            &["unknown key", "users_file"],
        );
        bad(
            "workers: 1\nclient_auth:\n  realm: x\n",
            "client_auth.users_file",
            3,
            &["missing"],
        );
        bad(
            "client_auth:\n  users_file: /nonexistent/splicegate/users\n",
            "client_auth.users_file",
            2,
            &["cannot read /nonexistent/splicegate/users"],
        );
        bad(
            &format!(
                "client_auth:\n  users_file: {:?}\n",
                users.0.display().to_string()
            ),
            "client_auth.users_file",
            2,
            &["not a regular file"],
        );
    }

    #[test]
    fn hosts_overrides() {
        let cfg = ok("hosts:\n  API.Example.com.: [192.0.2.10, \"2001:db8::10\"]\n  b.example: [192.0.2.11]\n");
        let ip = |s: &str| addr(&format!("{s}:0")).ip();
        let ip6 = |s: &str| addr(&format!("[{s}]:0")).ip();
        assert_eq!(
            cfg.hosts,
            vec![
                (
                    "api.example.com".to_owned(),
                    vec![ip("192.0.2.10"), ip6("2001:db8::10")]
                ),
                ("b.example".to_owned(), vec![ip("192.0.2.11")]),
            ]
        );
        assert!(ok("hosts:\n").hosts.is_empty());
        bad(
            "hosts:\n  a.example: [192.0.2.999]\n",
            "hosts.a.example[0]",
            2,
            &["expected an IP address", "\"192.0.2.999\""],
        );
        bad(
            "hosts:\n  a.example: []\n",
            "hosts.a.example",
            2,
            &["empty"],
        );
        bad(
            "hosts:\n  a.example: 192.0.2.1\n",
            "hosts.a.example",
            2,
            &["expected a list"],
        );
        bad(
            "hosts:\n  '*.example': [192.0.2.1]\n",
            "hosts.*.example",
            2,
            &["wildcards are not allowed"],
        );
        bad(
            "hosts:\n  'a..example': [192.0.2.1]\n",
            "hosts.a..example",
            2,
            &["not a valid host name", "empty label"],
        );
        bad(
            "hosts:\n  192.0.2.1: [192.0.2.2]\n",
            "hosts.192.0.2.1",
            2,
            &["IP address"],
        );
        bad(
            "hosts:\n  a.example: [192.0.2.1]\n  A.example.: [192.0.2.2]\n",
            "hosts.a.example",
            3,
            &["more than one entry"],
        );
        bad(
            "hosts: [a.example]\n",
            "hosts",
            1,
            &["expected a mapping of host names"],
        );
    }

    #[test]
    fn allow_private_destinations() {
        assert!(ok("allow_private_destinations: true\n").allow_private_destinations);
        assert!(!ok("allow_private_destinations: false\n").allow_private_destinations);
        bad(
            "allow_private_destinations: yes\n",
            "allow_private_destinations",
            1,
            &["expected true or false", "\"yes\""],
        );
        bad(
            "allow_private_destinations: 1\n",
            "allow_private_destinations",
            1,
            &["true or false", "number 1"],
        );
    }

    #[test]
    fn allowed_destination_networks() {
        let cfg = ok("allowed_destination_networks: [10.1.2.3/8, 192.0.2.7, \"fd00::/8\", \"2001:db8::1\"]\n");
        let nets: Vec<String> = cfg
            .allowed_destination_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "2001:db8::1/128"]
        );
        assert!(ok("allowed_destination_networks:\n")
            .allowed_destination_networks
            .is_empty());
        bad(
            "allowed_destination_networks:\n  - 10.0.0.0/33\n",
            "allowed_destination_networks[0]",
            2,
            &["expected a network", "\"10.0.0.0/33\""],
        );
        bad(
            "allowed_destination_networks: 10.0.0.0/8\n",
            "allowed_destination_networks",
            1,
            &["expected a list"],
        );
    }

    #[test]
    fn accept_backoff_min() {
        let l = ok("limits:\n  accept_backoff_min: 50ms\n").limits;
        assert_eq!(l.accept_backoff_min, Duration::from_millis(50));
        assert_eq!(l.accept_backoff_max, Duration::from_secs(1));
        bad(
            "limits:\n  accept_backoff_min: 0s\n",
            "limits.accept_backoff_min",
            2,
            &["greater than zero"],
        );
        bad(
            "limits:\n  accept_backoff_max: 100ms\n  accept_backoff_min: 200ms\n",
            "limits.accept_backoff_min",
            3,
            &["at most limits.accept_backoff_max (100ms)", "\"200ms\""],
        );
    }

    #[test]
    fn accept_backoff_max() {
        let l = ok("limits:\n  accept_backoff_max: 30s\n").limits;
        assert_eq!(l.accept_backoff_max, Duration::from_secs(30));
        assert_eq!(l.accept_backoff_min, Duration::from_millis(10));
        bad(
            "limits:\n  accept_backoff_max: 2m\n",
            "limits.accept_backoff_max",
            2,
            &["at most 1m", "\"2m\""],
        );
        bad(
            "limits:\n  accept_backoff_max: soon\n",
            "limits.accept_backoff_max",
            2,
            &["expected a duration"],
        );
    }

    #[test]
    fn worker_restart_delay() {
        let l = ok("limits:\n  worker_restart_delay: 250ms\n").limits;
        assert_eq!(l.worker_restart_delay, Duration::from_millis(250));
        bad(
            "limits:\n  worker_restart_delay: 0\n",
            "limits.worker_restart_delay",
            2,
            &["greater than zero"],
        );
        bad(
            "limits:\n  worker_restart_delay: 2h\n",
            "limits.worker_restart_delay",
            2,
            &["at most 1h", "\"2h\""],
        );
    }

    #[test]
    fn limits() {
        let cfg = ok("limits:\n  max_connections: 5\n  max_header_bytes: 256\n  header_timeout: 500ms\n  connect_timeout: 3\n  idle_timeout: 1h30m\n  drain_timeout: 1m\n  resolve_timeout: 2s\n  max_pipes: 64\n  pipe_size: 65536\n");
        let l = &cfg.limits;
        assert_eq!(l.max_connections, 5);
        assert_eq!(l.max_header_bytes, 256);
        assert_eq!(l.header_timeout, Duration::from_millis(500));
        assert_eq!(l.connect_timeout, Duration::from_secs(3));
        assert_eq!(l.idle_timeout, Duration::from_secs(5400));
        assert_eq!(l.drain_timeout, Duration::from_secs(60));
        assert_eq!(l.resolve_timeout, Duration::from_secs(2));
        assert_eq!(l.max_pipes, 64);
        assert_eq!(l.pipe_size, 65536);
        let l = ok(
            "limits:\n  metrics_max_connections: 2\n  reload_debounce: 50ms\n  reload_retries: 0\n",
        )
        .limits;
        assert_eq!(l.metrics_max_connections, 2);
        assert_eq!(l.reload_debounce, Duration::from_millis(50));
        assert_eq!(l.reload_retries, 0);
        bad(
            "limits:\n  metrics_max_connections: 0\n",
            "limits.metrics_max_connections",
            2,
            &["1 to 1024"],
        );
        bad(
            "limits:\n  reload_debounce: 6s\n",
            "limits.reload_debounce",
            2,
            &["at most 5s"],
        );
        bad(
            "limits:\n  reload_retries: 11\n",
            "limits.reload_retries",
            2,
            &["0 to 10"],
        );

        bad(
            "limits:\n  max_connections: 0\n",
            "limits.max_connections",
            2,
            &["at least 1"],
        );
        bad(
            "limits:\n  max_header_bytes: 255\n",
            "limits.max_header_bytes",
            2,
            &["256 to 1048576"],
        );
        bad(
            "limits:\n  max_header_bytes: 1048577\n",
            "limits.max_header_bytes",
            2,
            &["1048577"],
        );
        bad(
            "limits:\n  header_timeout: 0s\n",
            "limits.header_timeout",
            2,
            &["greater than zero"],
        );
        bad(
            "limits:\n  connect_timeout: 0\n",
            "limits.connect_timeout",
            2,
            &["greater than zero"],
        );
        bad(
            "limits:\n  idle_timeout: 15x\n",
            "limits.idle_timeout",
            2,
            &["expected a duration", "\"15x\"", "unknown unit"],
        );
        bad(
            "limits:\n  drain_timeout: 1.5\n",
            "limits.drain_timeout",
            2,
            &["number 1.5"],
        );
        bad(
            "limits:\n  resolve_timeout: 400d\n",
            "limits.resolve_timeout",
            2,
            &["unknown unit"],
        );
        bad(
            "limits:\n  resolve_timeout: 9000h\n",
            "limits.resolve_timeout",
            2,
            &["365 days"],
        );
        bad(
            "limits:\n  max_pipes: -1\n",
            "limits.max_pipes",
            2,
            &["0 = automatic"],
        );
        bad(
            "limits:\n  pipe_size: 4095\n",
            "limits.pipe_size",
            2,
            &["4096 to 1048576"],
        );
        bad("limits: 5\n", "limits", 1, &["expected a mapping"]);
    }

    #[test]
    fn logging() {
        let d = ok(DEFAULT_YAML).logging.refusals;
        assert_eq!(
            (d.burst, d.window, d.max_keys),
            (10, Duration::from_secs(60), 4096)
        );
        let cfg =
            ok("logging:\n  refusal_burst: 3\n  refusal_window: 2s\n  refusal_table_size: 16\n");
        let r = cfg.logging.refusals;
        assert_eq!(
            (r.burst, r.window, r.max_keys),
            (3, Duration::from_secs(2), 16)
        );
        assert!(cfg.summary().contains("refusal_burst: 3"));
        bad(
            "logging:\n  refusal_burst: 0\n",
            "logging.refusal_burst",
            2,
            &["at least 1"],
        );
        bad(
            "logging:\n  refusal_window: 500ms\n",
            "logging.refusal_window",
            2,
            &["at least 1s"],
        );
        bad(
            "logging:\n  refusal_window: 0s\n",
            "logging.refusal_window",
            2,
            &["greater than zero"],
        );
        bad(
            "logging:\n  refusal_table_size: 0\n",
            "logging.refusal_table_size",
            2,
            &["from 1"],
        );
        bad(
            "logging:\n  refusal_limit: 5\n",
            "logging.refusal_limit",
            2,
            &[],
        );
    }

    #[test]
    fn resolver() {
        let cfg = ok("resolver:\n  nameservers: [127.0.0.53:53, 192.0.2.53, \"2001:db8::53\", \"[2001:db8::54]:5353\"]\n  cache_size: 0\n");
        assert_eq!(
            cfg.resolver.nameservers,
            vec![
                addr("127.0.0.53:53"),
                addr("192.0.2.53:53"),
                addr("[2001:db8::53]:53"),
                addr("[2001:db8::54]:5353"),
            ]
        );
        assert_eq!(cfg.resolver.cache_size, 0);
        bad(
            "resolver:\n  nameservers:\n    - dns.example\n",
            "resolver.nameservers[0]",
            3,
            &["name server address", "\"dns.example\""],
        );
        bad(
            "resolver:\n  nameservers: [\"192.0.2.53:0\"]\n",
            "resolver.nameservers[0]",
            2,
            &["192.0.2.53:0"],
        );
        bad(
            "resolver:\n  cache_size: lots\n",
            "resolver.cache_size",
            2,
            &["whole number"],
        );
    }

    #[test]
    fn resolver_cache_stale_and_private_link() {
        let cfg = ok("resolver:\n  hosts_file: /tmp/test-hosts\n  min_ttl: 0\n  max_ttl: 10m\n  negative_ttl: 0s\n  stale_after: 500ms\n  stale_ttl: 0\n  resolution_delay: 0ms\n  private_link: true\n");
        let r = &cfg.resolver;
        assert_eq!(r.hosts_file, PathBuf::from("/tmp/test-hosts"));
        assert_eq!(r.min_ttl, Duration::ZERO);
        assert_eq!(r.max_ttl, Duration::from_secs(600));
        assert_eq!(r.negative_ttl, Duration::ZERO);
        assert_eq!(r.stale_after, Duration::from_millis(500));
        assert_eq!(r.stale_ttl, Duration::ZERO);
        assert_eq!(r.resolution_delay, Duration::ZERO);
        assert!(r.private_link);
        let d = ResolverSettings::default();
        assert_eq!(d.hosts_file, PathBuf::from("/etc/hosts"));
        assert_eq!(d.stale_after, Duration::from_millis(1500));
        assert_eq!(d.stale_ttl, Duration::from_secs(3600));
        assert!(!d.private_link);
        bad(
            "resolver:\n  min_ttl: 2h\n  max_ttl: 1h\n",
            "resolver.min_ttl",
            2,
            &["above max_ttl"],
        );
        bad(
            "limits:\n  resolve_timeout: 2s\nresolver:\n  stale_after: 2s\n",
            "resolver.stale_after",
            4,
            &["below limits.resolve_timeout"],
        );
        // Left at its default, stale_after follows a short resolve_timeout.
        let short = ok("limits:\n  resolve_timeout: 1s\n");
        assert_eq!(short.resolver.stale_after, Duration::from_millis(500));
        assert_eq!(short.resolver.resolution_delay, Duration::from_millis(50));
        bad(
            "resolver:\n  resolution_delay: 6s\n",
            "resolver.resolution_delay",
            2,
            &["below limits.resolve_timeout (5s)"],
        );
        bad(
            "resolver:\n  stale_after: 0s\n",
            "resolver.stale_after",
            2,
            &["greater than zero"],
        );
        bad(
            "resolver:\n  hosts_file: \"\"\n",
            "resolver.hosts_file",
            2,
            &["path of a hosts file"],
        );
        bad(
            "resolver:\n  private_link: yes\n",
            "resolver.private_link",
            2,
            &["true or false"],
        );
    }

    #[test]
    fn unknown_keys() {
        bad(
            "listen: [\"0.0.0.0:1\"]\nlisten_addr: x\n",
            "listen_addr",
            2,
            &["unknown key", "allowed_hosts"],
        );
        bad(
            "limits:\n  max_connections: 5\n  header_timout: 10s\n",
            "limits.header_timout",
            3,
            &["unknown key", "header_timeout"],
        );
        bad(
            "resolver:\n  servers: []\n",
            "resolver.servers",
            2,
            &["unknown key", "nameservers"],
        );
    }

    #[test]
    fn collects_every_problem() {
        let found = problems(
            "listen: \"text\"\nworkers: many\nallowed_ports: [0]\nlimits:\n  header_timeout: 0s\n  pipe_size: 1\n",
        );
        let keys: Vec<(&str, Option<usize>)> =
            found.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [
                ("listen", Some(1)),
                ("workers", Some(2)),
                ("allowed_ports[0]", Some(3)),
                ("limits.header_timeout", Some(5)),
                ("limits.pipe_size", Some(6)),
            ]
        );
        let err = match Config::from_yaml("listen: \"text\"\nworkers: many\n") {
            Ok(_) => panic!("should fail"),
            Err(e) => e.to_string(),
        };
        assert_eq!(err.lines().count(), 2, "{err}");
    }

    #[test]
    fn syntax_errors_carry_lines() {
        let found = problems("workers: 1\nlisten: [a\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].line.is_some(), "{}", found[0]);
    }

    #[test]
    fn from_file() {
        let dir =
            std::env::temp_dir().join(format!("splicegate-config-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let good = dir.join("good.yaml");
        let broken = dir.join("bad.yaml");
        let written = std::fs::write(&good, "workers: 2\n")
            .and_then(|()| std::fs::write(&broken, "workers: two\n"));
        assert!(written.is_ok(), "{written:?}");
        assert_eq!(Config::from_file(&good).map(|c| c.workers).ok(), Some(2));
        match Config::from_file(&broken) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("{}: line 1: workers: ", broken.display())),
                    "{text}"
                );
            }
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
        match Config::from_file(&dir.join("missing.yaml")) {
            Err(e @ ConfigError::Io { .. }) => assert!(e.to_string().contains("missing.yaml")),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn summary_mentions_everything() {
        let cfg = ok("hosts:\n  myws.ods.opinsights.azure.com: [203.0.113.10]\nallowed_destination_networks: [10.0.0.0/8]\nmetrics_listen: null\nresolver:\n  nameservers: [192.0.2.53]\n");
        let s = cfg.summary();
        for needle in [
            "listen: 0.0.0.0:8080, [::]:8080",
            "metrics_listen: disabled",
            "workers: 0 (one per online CPU)",
            "engine: auto",
            "data_path: splice",
            "allowed_ports: 443",
            "allowed_hosts: 9 pattern(s)",
            "  - *.ods.opinsights.azure.com",
            "hosts: 1 override(s)",
            "myws.ods.opinsights.azure.com -> 203.0.113.10",
            "allow_private_destinations: false",
            "allowed_destination_networks: 10.0.0.0/8",
            "revoke_on_reload: true",
            "max_connections: 100000",
            "max_header_bytes: 16384",
            "header_timeout: 10s",
            "connect_timeout: 10s",
            "idle_timeout: 15m",
            "drain_timeout: 30s",
            "resolve_timeout: 5s",
            "max_pipes: 0 (automatic)",
            "pipe_size: 1048576",
            "accept_backoff_min: 10ms",
            "accept_backoff_max: 1s",
            "worker_restart_delay: 1s",
            "nameservers: 192.0.2.53:53",
            "cache_size: 4096",
        ] {
            assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
        }
        let default = Config::default().summary();
        assert!(
            default.contains("metrics_listen: 127.0.0.1:9464"),
            "{default}"
        );
        assert!(default.contains("nameservers: system"), "{default}");
        assert!(default.contains("hosts: 0 override(s)"), "{default}");
    }

    #[test]
    fn relay_proxy() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(Config::embedded_default().relay_proxy, None);
        assert_eq!(ok("relay_proxy: null\n").relay_proxy, None);
        let cfg = ok("relay_proxy:\n  address: http://proxy.corp:8080\n  health_check: true\n");
        let r = cfg.relay_proxy.clone().expect("relay configured");
        assert_eq!(r.address(), "http://proxy.corp:8080");
        assert!(r.health_check && r.username.is_none() && r.authorization().is_none());
        assert!(cfg.summary().contains("http://proxy.corp:8080"));

        let dir = std::env::temp_dir().join(format!("splicegate-cfg-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let yaml = format!(
            "relay_proxy:\n  address: http://10.0.0.1:3128\n  username: u1\n  password_file: {}\n",
            pw.display()
        );
        let r = ok(&yaml).relay_proxy.unwrap();
        assert_eq!(r.authorization().as_deref(), Some("Basic dTE6aHVudGVyMg=="));
        assert!(
            !ok(&yaml).summary().contains("hunter2"),
            "summary never shows the password"
        );
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        bad(
            &yaml,
            "relay_proxy.password_file",
            4,
            &["readable by other users"],
        );
        let _ = std::fs::remove_dir_all(&dir);

        bad(
            "relay_proxy:\n  address: proxy.corp:8080\n",
            "relay_proxy.address",
            2,
            &[],
        );
        let https = ok("relay_proxy:\n  address: https://proxy.corp\n")
            .relay_proxy
            .unwrap();
        assert_eq!(https.address(), "https://proxy.corp:443");
        assert!(
            https.tls.is_some(),
            "an https relay's TLS client is built while parsing"
        );
        assert!(
            ok("relay_proxy:\n  address: http://proxy.corp\n")
                .relay_proxy
                .is_some_and(|r| r.tls.is_none()),
            "a plain relay has no TLS client"
        );
        // A CA file that exists but holds no certificate fails the parse, not a tunnel.
        bad(
            "relay_proxy:\n  address: https://p\n  ca_file: /etc/hostname\n",
            "relay_proxy.ca_file",
            3,
            &["no PEM certificate"],
        );
        bad(
            "relay_proxy:\n  address: https://p\n  ca_file: /nonexistent.pem\n",
            "relay_proxy.ca_file",
            3,
            &[],
        );
        bad(
            "relay_proxy:\n  address: http://p\n  ca_file: /etc/hostname\n",
            "relay_proxy.ca_file",
            3,
            &["https"],
        );
        bad(
            "relay_proxy:\n  address: http://u:p@proxy\n",
            "relay_proxy.address",
            2,
            &[],
        );
        bad(
            "relay_proxy:\n  address: http://p:1\n  password_file: /x\n",
            "relay_proxy.password_file",
            3,
            &[],
        );
        bad(
            "relay_proxy:\n  address: http://p:1\n  health_check: maybe\n",
            "relay_proxy.health_check",
            3,
            &[],
        );
        bad(
            "relay_proxy:\n  address: http://p:1\n  port: 3\n",
            "relay_proxy.port",
            3,
            &[],
        );
    }

    #[test]
    fn tls_defaults() {
        let t = Config::default().tls;
        assert!(t.inspect);
        assert_eq!(t.min_version, TlsVersion::Tls12);
        assert!(t.require_sni);
        assert!(t.require_sni_match);
        assert_eq!(t.hello_timeout, Duration::from_secs(10));
        assert_eq!(t.max_hello_bytes, 65536);
        assert!(t.allowed_client_certificates.is_empty());
        assert_eq!(t.tls13_client_certificate, Tls13Policy::Deny);
        assert_eq!(ok("tls:\n").tls, t, "an empty tls: section is the default");
        assert_eq!(ok("tls: {}\n").tls, t);
        assert!(
            DEFAULT_YAML.lines().any(|l| l == "tls:"),
            "default.yaml lacks tls:"
        );
        for key in [
            "inspect:",
            "min_version:",
            "require_sni:",
            "require_sni_match:",
            "hello_timeout:",
            "max_hello_bytes:",
            "allowed_client_certificates:",
            "tls13_client_certificate:",
        ] {
            assert!(
                DEFAULT_YAML
                    .lines()
                    .any(|l| l.starts_with(&format!("  {key}"))),
                "default.yaml lacks tls.{key}"
            );
        }
    }

    #[test]
    fn tls() {
        let cfg = ok("tls:\n  inspect: false\n  min_version: \"1.3\"\n  require_sni: false\n  require_sni_match: false\n  hello_timeout: 2s\n  max_hello_bytes: 4096\n  tls13_client_certificate: allow\n");
        let t = &cfg.tls;
        assert!(!t.inspect);
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert!(!t.require_sni);
        assert!(!t.require_sni_match);
        assert_eq!(t.hello_timeout, Duration::from_secs(2));
        assert_eq!(t.max_hello_bytes, 4096);
        assert_eq!(t.tls13_client_certificate, Tls13Policy::Allow);
        for v in [
            TlsVersion::Tls10,
            TlsVersion::Tls11,
            TlsVersion::Tls12,
            TlsVersion::Tls13,
        ] {
            let quoted = format!("tls:\n  min_version: \"{}\"\n", v.as_str());
            assert_eq!(ok(&quoted).tls.min_version, v);
            // Unquoted, YAML reads a number; it is accepted all the same.
            let bare = format!("tls:\n  min_version: {}\n", v.as_str());
            assert_eq!(ok(&bare).tls.min_version, v);
        }
        assert_eq!(
            ok("tls:\n  hello_timeout: 30\n").tls.hello_timeout,
            Duration::from_secs(30)
        );
        assert_eq!(
            ok("tls:\n  max_hello_bytes: 1024\n").tls.max_hello_bytes,
            1024
        );
        assert_eq!(
            ok("tls:\n  max_hello_bytes: 1048576\n").tls.max_hello_bytes,
            1 << 20
        );
        bad(
            "tls:\n  min_version: SSLv3\n",
            "tls.min_version",
            2,
            &[
                "one of \"1.0\", \"1.1\", \"1.2\", \"1.3\"",
                "always refused",
                "\"SSLv3\"",
            ],
        );
        bad(
            "tls:\n  min_version: 1.4\n",
            "tls.min_version",
            2,
            &["the number 1.4"],
        );
        bad(
            "tls:\n  min_version: 1\n",
            "tls.min_version",
            2,
            &["the number 1"],
        );
        bad(
            "tls:\n  min_version: \"TLSv1.2\"\n",
            "tls.min_version",
            2,
            &["\"TLSv1.2\""],
        );
        bad("tls:\n  min_version:\n", "tls.min_version", 2, &["null"]);
        bad(
            "tls:\n  inspect: yes\n",
            "tls.inspect",
            2,
            &["expected true or false"],
        );
        bad(
            "tls:\n  require_sni: 1\n",
            "tls.require_sni",
            2,
            &["true or false", "number 1"],
        );
        bad(
            "tls:\n  require_sni_match: \"true\"\n",
            "tls.require_sni_match",
            2,
            &["without quotes"],
        );
        bad(
            "tls:\n  hello_timeout: 0s\n",
            "tls.hello_timeout",
            2,
            &["greater than zero"],
        );
        bad(
            "tls:\n  hello_timeout: soon\n",
            "tls.hello_timeout",
            2,
            &["expected a duration"],
        );
        bad(
            "tls:\n  max_hello_bytes: 1023\n",
            "tls.max_hello_bytes",
            2,
            &["1024 to 1048576", "1023"],
        );
        bad(
            "tls:\n  max_hello_bytes: 1048577\n",
            "tls.max_hello_bytes",
            2,
            &["1048577"],
        );
        bad(
            "tls:\n  tls13_client_certificate: maybe\n",
            "tls.tls13_client_certificate",
            2,
            &["one of \"allow\", \"deny\"", "\"maybe\""],
        );
        bad(
            "tls:\n  inspect: true\n  min_vresion: \"1.2\"\n",
            "tls.min_vresion",
            3,
            &["unknown key", "min_version"],
        );
        bad("tls: 5\n", "tls", 1, &["expected a mapping"]);
    }

    #[test]
    fn tls_client_certificates() {
        let cfg = ok("tls:\n  allowed_client_certificates:\n    - CN=agent01\n    - cn = agent02 , o = Contoso\n    - \"CN=agent01\"\n    - CN=agent03,O=Contoso\\, Ltd\n");
        assert_eq!(
            cfg.tls.allowed_client_certificates,
            [
                "CN=agent01",
                "CN=agent02,O=Contoso",
                "CN=agent03,O=Contoso\\, Ltd"
            ],
            "normalised, repeats dropped"
        );
        assert!(ok("tls:\n  allowed_client_certificates:\n")
            .tls
            .allowed_client_certificates
            .is_empty());
        bad(
            "tls:\n  allowed_client_certificates:\n    - CN=agent01\n    - agent01\n",
            "tls.allowed_client_certificates[1]",
            4,
            &[
                "invalid certificate subject \"agent01\"",
                "TYPE=value",
                "such as \"CN=agent01\"",
            ],
        );
        bad(
            "tls:\n  allowed_client_certificates: [\"XX=a\"]\n",
            "tls.allowed_client_certificates[0]",
            2,
            &["unknown attribute type \"XX\""],
        );
        bad(
            "tls:\n  allowed_client_certificates: [\"CN=\"]\n",
            "tls.allowed_client_certificates[0]",
            2,
            &["the value of CN is empty"],
        );
        bad(
            "tls:\n  allowed_client_certificates: CN=agent01\n",
            "tls.allowed_client_certificates",
            2,
            &["expected a list of certificate subjects"],
        );
        bad(
            "tls:\n  allowed_client_certificates: [5]\n",
            "tls.allowed_client_certificates[0]",
            2,
            &["expected a certificate subject", "the number 5"],
        );
        bad(
            "tls:\n  inspect: false\n  allowed_client_certificates: [CN=agent01]\n",
            "tls.allowed_client_certificates",
            3,
            &["only checked when tls.inspect is true"],
        );
        // Several problems in the section are all reported.
        let found = problems(
            "tls:\n  min_version: x\n  max_hello_bytes: 1\n  allowed_client_certificates: [a]\n",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.min_version",
                "tls.max_hello_bytes",
                "tls.allowed_client_certificates[0]"
            ]
        );
    }

    #[test]
    fn summary_shows_tls() {
        let s = Config::default().summary();
        for needle in [
            "\ntls:\n",
            "  inspect: true\n",
            "  min_version: 1.2\n",
            "  require_sni: true\n",
            "  require_sni_match: true\n",
            "  hello_timeout: 10s\n",
            "  max_hello_bytes: 65536\n",
            "  allowed_client_certificates: none (no check)\n",
            "  tls13_client_certificate: deny\n",
        ] {
            assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
        }
        let s = ok("tls:\n  allowed_client_certificates: [CN=a, \"o=b, cn=c\"]\n  tls13_client_certificate: allow\n").summary();
        for needle in [
            "  allowed_client_certificates: 2 subject(s)\n",
            "    - CN=a\n",
            "    - O=b,CN=c\n",
            "  tls13_client_certificate: allow\n",
        ] {
            assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
        }
        let s = ok("tls:\n  inspect: false\n").summary();
        assert!(
            s.contains("  inspect: false (plain CONNECT tunnels, no TLS checks)\n"),
            "{s}"
        );
    }

    #[test]
    fn presets_expand_into_the_allowlist() {
        let ws = "5E1F3A52-7B1D-4C2E-9A0B-1234567890AB";
        let cfg = ok(&format!(
            "cloud: usgov\npresets: [azure-monitor-agent]\nworkspaces: [\"{ws}\"]\n\
             regions: [usgovvirginia]\n"
        ));
        assert_eq!(cfg.cloud, Cloud::UsGov);
        assert_eq!(cfg.local_hosts, 0, "presets replace the built-in list");
        let hosts: Vec<String> = cfg.allowed_hosts.iter().map(ToString::to_string).collect();
        assert!(hosts.contains(&"global.handler.control.monitor.azure.us".to_owned()));
        assert!(hosts.contains(&format!("{}.ods.opinsights.azure.us", ws.to_lowercase())));
        assert!(hosts.contains(&"usgovvirginia.handler.control.monitor.azure.us".to_owned()));
        assert_eq!(cfg.preset_hosts.len(), cfg.allowed_hosts.len());
        let summary = cfg.summary();
        assert!(summary.contains("cloud: usgov"), "{summary}");
        assert!(
            summary.contains("[preset azure-monitor-agent]"),
            "{summary}"
        );

        // Local entries come first and stay distinguishable.
        let cfg = ok("presets: [log-analytics-agent]\nallowed_hosts: [a.example, \"*.blob.core.windows.net\"]\n");
        assert_eq!(cfg.local_hosts, 2);
        let hosts: Vec<String> = cfg.allowed_hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            hosts,
            [
                "a.example",
                "*.blob.core.windows.net",
                "*.ods.opinsights.azure.com",
                "*.oms.opinsights.azure.com",
                "*.azure-automation.net",
            ]
        );
        // An empty local list is fine with presets.
        assert_eq!(
            ok("presets: [azure-monitor-agent]\nallowed_hosts: []\n").local_hosts,
            0
        );
    }

    #[test]
    fn preset_keys_are_validated() {
        bad("cloud: mars\n", "cloud", 1, &["\"usgov\""]);
        bad(
            "presets:\n  - azure-monitor-agent\n  - oms\n",
            "presets[1]",
            3,
            &["azure-monitor-agent"],
        );
        bad(
            "presets: [azure-monitor-agent]\nworkspaces: [\"1234\"]\n",
            "workspaces[0]",
            2,
            &["GUID"],
        );
        let eleven: Vec<String> = (0..11)
            .map(|i| format!("\"00000000-0000-4000-8000-0000000000{i:02}\""))
            .collect();
        bad(
            &format!(
                "presets: [azure-monitor-agent]\nworkspaces: [{}]\n",
                eleven.join(", ")
            ),
            "workspaces",
            2,
            &["at most 10"],
        );
        bad(
            "presets: [azure-monitor-agent]\nregions: [\"West Europe\"]\n",
            "regions[0]",
            2,
            &["westeurope"],
        );
        bad(
            "workspaces: [\"5e1f3a52-7b1d-4c2e-9a0b-1234567890ab\"]\n",
            "workspaces",
            1,
            &["presets"],
        );
        bad(
            "presets: []\nallowed_hosts: []\n",
            "allowed_hosts",
            2,
            &["empty"],
        );
    }

    /// `null` switches the admin socket off; absent keeps the default path. (A merge once left
    /// the key without its "present" deserializer, so `null` read as absent.)
    #[test]
    fn admin_socket_null_disables_and_absent_is_the_default() {
        assert_eq!(ok("admin_socket: null\n").admin_socket, None);
        assert_eq!(
            ok("workers: 1\n").admin_socket,
            Some(PathBuf::from(DEFAULT_ADMIN_SOCKET))
        );
        assert_eq!(
            ok("admin_socket: /run/gw/a.sock\n").admin_socket,
            Some(PathBuf::from("/run/gw/a.sock"))
        );
        let p = problems("limits:\n  admin_max_connections: null\n");
        assert!(
            p.iter().any(|p| p.key.contains("admin_max_connections")),
            "null is not a count: {p:?}"
        );
    }
}
